"""Token-id hashes of a sample's texts, so that a batch can mask duplicates without carrying any text.

A passage whose ids equal one of a query's positives is no negative of that query, wherever it sits in
the global batch (another query's positive, a mined negative, another rank's passage): the stream hashes
each group's passages and each query's positives (all of its record's, not only the one drawn), and the
objective compares hashes (framework/loss/masks.py), gathered over ranks like the vectors.

The hash is 63 bits of BLAKE2b over the ids as little-endian int32 (the shard format), so ids read from a
`.tok` member and ids from the tokenizer hash alike, in every process and on every rank (Python's own
hash() is salted per process). Ids are hashed after truncation: two texts that differ only past the limit
are the same input to the model. A collision of two different texts has probability 2^-63 per pair.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

NO_HASH = -1
"""Fills the positives' hash rows of queries with fewer positives (or none masked); never a real hash."""
_INT32 = np.dtype("<i4")


def ids_hash(ids: Sequence[int] | np.ndarray) -> int:
    """The 63-bit hash of one text's token ids (non-negative, so NO_HASH never matches it)."""
    array = ids if isinstance(ids, np.ndarray) and ids.dtype == _INT32 else np.asarray(ids, dtype=_INT32)
    digest = hashlib.blake2b(array.tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
