"""From a shard sample to token ids: the steps every kind of sample shares, and the decoder contract.

The slot stream (framework/data/stream.py) reads samples and hands each to its kind's `SampleDecoder`
(pairs -> framework/data/pairs.py, documents -> framework/data/text_stream.py), then hands a batch's
items to the decoder's `collate`. A decoder raises records.BadRecord for a sample that cannot be used
(the stream counts it by reason, naming shard and key) and counts what it repaired (truncation) in the
batch's stats.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import numpy as np

from framework.data.format import JSON_EXT, TOKENS_EXT, decode_token_ids
from framework.data.plan import ShardRef
from framework.data.records import BadRecord, load_json_line
from framework.data.stats import BatchStats

Item = TypeVar("Item")
Validate = Callable[[dict], dict]
"""Record validator: returns the record or raises an exception with `.reason` (records.BadRecord)."""


class SampleDecoder(Protocol[Item]):
    """One kind of sample: what a sample becomes, and what a batch of those becomes."""

    def decode(self, sample: dict, stats: BatchStats) -> Item:
        """The batch item of one sample; raises BadRecord (or any error, counted) for a bad sample."""

    def collate(self, items: list[Item], key: tuple, stats: BatchStats):
        """The batch of `items` (which may be short or empty) drawn from stream `key` (source, bucket)."""

    def check_shards(self, shards: list[ShardRef], manifest_path) -> None:
        """Refuse shards of another kind before any step (raise ValueError naming the fix)."""


def sample_json(sample: dict):
    """The decoded `.json` member; BadRecord with the documented reasons (never a codec's message)."""
    payload = sample.get(JSON_EXT)
    if payload is None:
        raise BadRecord("missing_member", f"no .{JSON_EXT} member (members: {sorted(k for k in sample if k[0] != '_')})")
    try:
        # The common case in one step; json.loads(bytes) would also guess UTF-16/32 from the first bytes.
        return json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return load_json_line(payload)  # raises BadRecord with the reason (non_utf8, blank_line, ...)


class TokenIds:
    """Token ids of a sample's texts: its `.tok` member checked against the vocabulary, else the
    tokenizer's; each text truncated to its limit keeping the last token (</s>)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # len() counts added tokens too: every id the tokenizer can produce is below it.
        self.vocab_size = len(tokenizer)

    def __call__(self, sample: dict, texts: list[str], limits: Sequence[int], stats: BatchStats) -> list:
        if TOKENS_EXT in sample:
            ids = decode_token_ids(sample[TOKENS_EXT], self.vocab_size)
            if len(ids) != len(texts):
                raise BadRecord("bad_tokens", f"{len(ids)} token lists for {len(texts)} texts")
        else:
            ids = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        return [truncate(seq, limit, stats) for seq, limit in zip(ids, limits)]


def truncate(seq, limit: int, stats: BatchStats):
    """`seq` cut to `limit` ids keeping its last one (</s>), counted as "truncated" when cut."""
    if len(seq) <= limit:
        return seq
    stats.count("truncated")
    if isinstance(seq, np.ndarray):
        return np.concatenate((seq[:limit - 1], seq[-1:]))
    return [*seq[:limit - 1], seq[-1]]
