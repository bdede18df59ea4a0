"""The on-disk format of training shards: one contract between tools/make_shards.py and the stream.

A shard is a WebDataset tar. Each sample has the key `<source>/<part>/<index>` (no dots: WebDataset splits
keys at the first dot) and these members:

  <key>.json  UTF-8 JSON of the normalised record:
              {"query": str, "pos": [str, ...], "neg": [str, ...],           # neg may be []
               "pos_scores": [float, ...], "neg_scores": [float, ...],       # optional, same lengths as pos/neg
               "prompt": str, "type": str,                                   # optional
               "source": str, "lang": str}                                   # lang optional
  <key>.tok   optional pre-tokenised ids (special tokens included) of the texts in the order
              query, pos..., neg...: see encode_token_ids. Present for every sample of a shard or none.

A manifest (JSON) lists the shards; see framework/data/manifest.py.
"""
from __future__ import annotations

import numpy as np

from framework.data.records import BadRecord

JSON_EXT = "json"
TOKENS_EXT = "tok"
# Little-endian int32 throughout: [num_texts, len_0, ..., len_{n-1}, ids_0..., ids_1..., ...].
_DTYPE = np.dtype("<i4")


def encode_token_ids(seqs: list[list[int]]) -> bytes:
    """Pack the token ids of a sample's texts (query first) into one flat int32 buffer."""
    lengths = [len(s) for s in seqs]
    flat = [len(seqs), *lengths]
    for s in seqs:
        flat.extend(s)
    return np.asarray(flat, dtype=_DTYPE).tobytes()


def decode_token_ids(payload: bytes, vocab_size: int | None = None) -> list[np.ndarray]:
    """Inverse of encode_token_ids; raises BadRecord ("bad_tokens") on a truncated or inconsistent
    buffer and ("token_out_of_vocab") on an id outside [0, vocab_size) when vocab_size is given.

    The id check is one max over the sample's ids: cheap enough for every sample, and it
    turns a corrupt id (or shards of another tokenizer) into a counted bad record instead of an
    IndexError in the embedding lookup many steps later.
    """
    if len(payload) % _DTYPE.itemsize:
        raise BadRecord("bad_tokens", f"token payload of {len(payload)} bytes is not a whole number of int32 values")
    flat = np.frombuffer(payload, dtype=_DTYPE)
    if flat.size == 0 or flat[0] < 0 or flat.size < 1 + flat[0]:
        raise BadRecord("bad_tokens", "token payload header is truncated")
    num = int(flat[0])
    lengths = flat[1:1 + num]
    if (lengths < 0).any() or 1 + num + int(lengths.sum()) != flat.size:
        raise BadRecord("bad_tokens", f"token payload lengths {lengths.tolist()} do not match its {flat.size} values")
    ids = flat[1 + num:]
    # Viewed as unsigned, a negative id is above any vocabulary: one max checks both ends.
    if vocab_size is not None and ids.size and int(ids.view("<u4").max()) >= vocab_size:
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise BadRecord("token_out_of_vocab", f"token id {bad} is outside the tokenizer's {vocab_size} ids; "
                        "the shard is damaged or was made with another tokenizer")
    ends = np.cumsum(lengths) + 1 + num
    return [flat[end - n:end] for end, n in zip(ends.tolist(), lengths.tolist())]


def sample_key(source: str, part: int, index: int) -> str:
    """Deterministic key of the index-th record of an input part (sortable, dot-free)."""
    if "." in source or "/" in source:
        raise ValueError(f"source name {source!r} may not contain '.' or '/'; rename the source")
    return f"{source}/{part:05d}/{index:010d}"
