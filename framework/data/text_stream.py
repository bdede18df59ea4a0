"""The document kind of sample (the RetroMAE pre-training stage): text shards -> batches of token ids.

The slot stream (framework/data/stream.py) does the planning, reading, shuffling, error budget and
exact resume; this module gives it what differs: a sample becomes one document's token ids, truncated
to `data.passage_max_length` (keeping </s>), and a batch is those ids padded (`TextBatch`). The data
section's group_size and query_max_length do not apply to documents.

Text shards come from `tools/make_shards.py --kind text` (format: framework/data/prepare/text.py).

Shape legend (docs/shapes.md): B batch rows (documents), L tokens.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

from framework.data.batch import TextBatch  # defined with the TrainBatch protocol; imported from here too
from framework.data.collate import pad_to_multiple
from framework.data.config import StreamConfig
from framework.data.decode import TokenIds, Validate, sample_json
from framework.data.format import JSON_EXT
from framework.data.plan import ShardRef
from framework.data.prepare.text import validate_text_record
from framework.data.reader import ShardError, iter_samples
from framework.data.stats import BatchStats
from framework.data.stream import SlotStream, StreamState, open_manifest


def collate_documents(keys: list[str], docs: list[Sequence[int]], pad_id: int, stream: tuple,
                      stats: dict[str, int]) -> TextBatch:
    """Pad a batch (to a multiple of 8). It may be short or empty when bad records ate a rank's data: it
    is still yielded so that every rank takes part in every step."""
    ids_BL, mask_BL = pad_to_multiple(docs, pad_id)
    return TextBatch(ids_BL, mask_BL, stream, keys, int(mask_BL.numpy().sum()), ids_BL.numel(), stats)


class DocumentDecoder:
    """Samples -> (key, document ids) -> TextBatch."""

    def __init__(self, cfg: StreamConfig, tokenizer, validate: Validate = validate_text_record):
        self.validate, self.limit = validate, cfg.data.passage_max_length
        self.token_ids, self.pad_id = TokenIds(tokenizer), tokenizer.pad_token_id

    def decode(self, sample: dict, stats: BatchStats) -> tuple[str, Sequence[int]]:
        record = self.validate(sample_json(sample))
        (ids,) = self.token_ids(sample, [record["text"]], [self.limit], stats)
        return sample["__key__"], ids

    def collate(self, items: list[tuple[str, Sequence[int]]], key: tuple, stats: BatchStats) -> TextBatch:
        return collate_documents([k for k, _ in items], [ids for _, ids in items], self.pad_id, key, stats)

    def check_shards(self, shards: list[ShardRef], manifest_path) -> None:
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


class TextStream(SlotStream):
    """The slot stream of documents: SlotStream + DocumentDecoder; plan, resume and loader as every stream's."""

    def __init__(self, shards: list[ShardRef], cfg: StreamConfig, tokenizer, rank: int, world_size: int,
                 validate: Validate = validate_text_record, state: StreamState = StreamState()):
        super().__init__(shards, cfg, DocumentDecoder(cfg, tokenizer, validate), rank, world_size, state)

    @classmethod
    def from_manifest(cls, manifest_path, cfg: StreamConfig, tokenizer, rank: int, world_size: int,
                      state: StreamState = StreamState()) -> "TextStream":
        """The stream over a text manifest's shards (the sources of data.sources, or all)."""
        return open_manifest(cls, manifest_path, cfg, tokenizer, rank, world_size, state)
