"""The document stream of the pre-training stage (RetroMAE): text shards -> length-bucketed batches of ids.

The same machinery as the pair stream (framework/data/stream.py), reused rather than repeated: the epoch
plan (plan.py: slots per rank and worker, lock-step buckets across ranks), the windowed shuffle and the
bad-record budget of its slot reader, StreamState/resume_roles for exact resume, and `loader` /
`ResumableLoader` to run it. Only what a sample becomes differs: one document's token ids, truncated
to `StreamConfig.passage_max_length` (keeping </s>), instead of a query with its passage group.
StreamConfig's group_size and query_max_length do not apply to documents.

Text shards come from `tools/make_shards.py --kind text` (format: framework/data/prepare/text.py).

Shape legend (docs/shapes.md): B batch rows (documents), L tokens.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

from framework.data.batch import TextBatch  # defined with the TrainBatch protocol; imported from here too
from framework.data.collate import pad_to_multiple
from framework.data.format import JSON_EXT, TOKENS_EXT, decode_token_ids
from framework.data.plan import ShardRef
from framework.data.prepare.text import validate_text_record
from framework.data.reader import ShardError, iter_samples
# _SlotReader is the pair stream's private slot reader: reused (not copied) for its windows, shuffle
# and bad-record budget; only next_batch differs.
from framework.data.stream import PairStream, StreamConfig, StreamState, Validate, _SlotReader


def collate_documents(keys: list[str], docs: list[Sequence[int]], pad_id: int, stream: tuple,
                      stats: dict[str, int]) -> TextBatch:
    """Pad a batch (to a multiple of 8). It may be short or empty when bad records ate a rank's data: it
    is still yielded so that every rank takes part in every step."""
    ids_BL, mask_BL = pad_to_multiple(docs, pad_id)
    return TextBatch(ids_BL, mask_BL, stream, keys, int(mask_BL.numpy().sum()), ids_BL.numel(), stats)


class TextStream(PairStream):
    """One epoch of document batches for one rank; plan, resume and loader as PairStream's."""

    def __init__(self, shards: list[ShardRef], cfg: StreamConfig, tokenizer, rank: int, world_size: int,
                 validate: Validate = validate_text_record, state: StreamState = StreamState()):
        super().__init__(shards, cfg, tokenizer, rank, world_size, validate, state)

    @classmethod
    def from_manifest(cls, manifest_path, cfg: StreamConfig, tokenizer, rank: int, world_size: int,
                      state: StreamState = StreamState()) -> "TextStream":
        """The stream over a text manifest's shards (the sources of cfg.sources, or all)."""
        shards = PairStream.from_manifest(manifest_path, cfg, tokenizer, rank, world_size, state).shards
        _check_documents(shards, manifest_path)
        return cls(shards, cfg, tokenizer, rank, world_size, validate_text_record, state)


class _DocumentReader(_SlotReader):
    """The pair stream's slot reader (windows, shuffle, bad-record budget) turning samples into documents."""

    def next_batch(self, key: tuple) -> TextBatch:
        batch_size = self.plan.streams[key].batch_size
        keys, docs = [], []
        for sample in self.iters[key]:
            ids = self._document(sample)
            if ids is not None:
                keys.append(sample["__key__"])
                docs.append(ids)
            if len(docs) == batch_size:
                break
        if len(docs) < batch_size:
            self.stats["short_batches"] += 1
        stats, self.stats = dict(self.stats), Counter()
        return collate_documents(keys, docs, self.s.tokenizer.pad_token_id, key, stats)

    def _document(self, sample: dict) -> Sequence[int] | None:
        try:
            record = self.s.validate(json.loads(sample[JSON_EXT].decode("utf-8")))
            ids = self._token_ids_of(sample, record["text"])
        except Exception as err:  # noqa: BLE001 -- every bad record is counted by reason, never fatal alone
            self._bad(getattr(err, "reason", type(err).__name__), f"{sample['__shard__']}:{sample['__key__']}")
            return None
        self.num_read += 1
        return ids

    def _token_ids_of(self, sample: dict, text: str) -> Sequence[int]:
        """Ids of the document (`.tok` array or the tokenizer's list), truncated keeping </s>."""
        if TOKENS_EXT in sample:
            seqs = decode_token_ids(sample[TOKENS_EXT])
            if len(seqs) != 1:
                raise ValueError(f"{len(seqs)} token lists for one document")
            ids = seqs[0]
        else:
            ids = self.s.tokenizer(text, add_special_tokens=True)["input_ids"]
        limit = self.s.cfg.passage_max_length
        if len(ids) > limit:
            self.stats["truncated"] += 1
            ids = [*ids[:limit - 1], ids[-1]]
        return ids


def _check_documents(shards, manifest_path) -> None:
    """Refuse a pair manifest early: its every record would be counted bad and stop the run much later."""
    for shard in shards[:1]:
        samples = iter_samples(shard.path)
        try:
            first = next(samples, None)
            record = json.loads(first[JSON_EXT]) if first is not None and JSON_EXT in first else None
        except (ShardError, ValueError):
            return  # the stream counts unreadable shards and records itself
        finally:
            samples.close()
        if isinstance(record, dict) and "text" not in record and "query" in record:
            raise ValueError(f"{manifest_path} holds query/passage pairs, not documents; prepare the "
                             "pre-training data with tools/make_shards.py --kind text")


TextStream.reader_class = _DocumentReader
