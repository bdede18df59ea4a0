"""One (rank, worker) slot's epoch: its streams read window by window, each batch exactly its planned slots.

A slot's share of a stream (plan.StreamPlan) is a sequence of sample positions; batch i of the stream
takes positions [i * B, (i + 1) * B) of that sequence after the windowed shuffle. A position whose
sample is bad (undecodable) or lost (its shard is truncated, damaged or shorter than its manifest
entry) is counted by reason and shard in the batch's stats and leaves the batch short: it is never
refilled from later positions. So a batch reads exactly its own positions whatever the damage, and
resuming after k batches (StreamState) restarts at exactly the position the uninterrupted run was at.

Lost samples keep their places in the window as `Lost` markers, so a window's shuffle is the same
permutation with or without damage.
"""
from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from framework.data.budget import BudgetConfig, ErrorBudget
from framework.data.config import StreamConfig
from framework.data.decode import SampleDecoder
from framework.data.plan import Segment, SlotPlan, StreamPlan, derive_seed
from framework.data.reader import ShardError, ShardReader
from framework.data.records import REJECT_REASONS, STREAM_REASONS
from framework.data.stats import BatchStats

KNOWN_REASONS = frozenset(REJECT_REASONS + STREAM_REASONS)


@dataclass(frozen=True)
class Lost:
    """A planned sample position whose sample could not be read."""

    reason: str
    """"corrupt_shard" (the tar breaks before it) or "missing_samples" (the tar ends before it)."""
    shard: str
    """Path of the shard that should hold it."""
    index: int
    """Its index in that shard."""
    detail: str
    """Why."""


class SlotReader:
    """Reads one slot's streams and turns each batch's sample positions into a batch."""

    def __init__(self, plan: SlotPlan, cfg: StreamConfig, epoch: int, slot: int, decoder: SampleDecoder,
                 skip: int):
        self.plan, self.cfg, self.epoch, self.slot, self.decoder = plan, cfg, epoch, slot, decoder
        self.reader = ShardReader()
        consumed = Counter(plan.schedule[:skip])
        self.iters = {key: self._samples(sp, consumed[key] * sp.batch_size) for key, sp in plan.streams.items()}
        self.budget = ErrorBudget(BudgetConfig(
            cfg.data.max_bad_fraction, cfg.data.bad_budget_after, "data.max_bad_fraction",
            "Fix the shards (tools/make_shards.py verify checks them against their manifest) or raise "
            "data.max_bad_fraction."))

    def next_batch(self, key: tuple):
        """The batch of the stream's next B positions (B = the stream's batch size)."""
        batch_size = self.plan.streams[key].batch_size
        stats, items = BatchStats(), []
        for entry in itertools.islice(self.iters[key], batch_size):
            item = self._decode(entry, stats)
            if item is not None:
                items.append(item)
        if len(items) < batch_size:
            stats.count("short_batches")
        self.budget.check()
        return self.decoder.collate(items, key, stats)

    def _decode(self, entry, stats: BatchStats):
        if isinstance(entry, Lost):
            self._bad(stats, entry.reason, entry.shard, f"sample #{entry.index}", entry.detail)
            return None
        try:
            item = self.decoder.decode(entry, stats)
        except Exception as err:  # noqa: BLE001 -- every bad record is counted by reason, never fatal alone
            # records.BadRecord carries a documented reason; anything else is counted as undecodable with
            # its type and message (a codec's `.reason` such as "invalid start byte" is no reason of ours).
            reason = getattr(err, "reason", None)
            known = isinstance(reason, str) and reason in KNOWN_REASONS
            detail = getattr(err, "detail", None) if known else None
            self._bad(stats, reason if known else "undecodable_sample", entry["__shard__"], entry["__key__"],
                      detail or f"{type(err).__name__}: {err}")
            return None
        self.budget.good()
        return item

    def _bad(self, stats: BatchStats, reason: str, shard: str, example: str, detail: str) -> None:
        stats.add_bad(reason, shard, example, detail)
        self.budget.add_bad(reason, f"{shard}:{example}", detail)

    def _samples(self, sp: StreamPlan, start: int) -> Iterator:
        """The slot's samples (or Lost markers) of one stream from position `start` of its share: its own
        read order, or after a re-split the pieces of the first layout's read orders (plan.Piece)."""
        if not sp.pieces:
            yield from self._read_order(sp.key, sp.segments, self.slot, start)
            return
        offset = 0
        for piece in sp.pieces:
            if start < offset + piece.count:
                skip = max(start - offset, 0)
                order = self._read_order(sp.key, piece.segments, piece.slot, piece.start + skip)
                yield from itertools.islice(order, piece.count - skip)
            offset += piece.count

    def _read_order(self, key: tuple, segments: tuple[Segment, ...], slot: int, start: int) -> Iterator:
        """A slot's segments from position `start` of its read order, shuffled in fixed windows: a window's
        order depends only on (seed, epoch, stream, slot, window start)."""
        total, window = sum(seg.count for seg in segments), self.cfg.data.shuffle_window
        first = start - start % window
        positions = self._positions(segments, first)
        for lo in range(first, total, window):
            part = list(itertools.islice(positions, min(lo + window, total) - lo))
            rng = np.random.default_rng(derive_seed(self.cfg.seed, self.epoch, "window", *key, slot, lo))
            order = rng.permutation(len(part))
            for i in order[start - lo:] if lo == first else order:
                yield part[i]

    def _positions(self, segments: tuple[Segment, ...], first: int) -> Iterator:
        """One item per position of the segments' concatenation from `first` on, in order."""
        offset = 0
        for seg in segments:
            skip = max(first - offset, 0)
            if skip < seg.count:
                yield from self._segment(seg.path, seg.start + skip, seg.count - skip)
            offset += seg.count

    def _segment(self, path: str, start: int, count: int) -> Iterator:
        read = 0
        try:
            for sample in self.reader.read(path, start, count):
                read += 1
                yield sample
        except ShardError as err:
            reason, detail = "corrupt_shard", err.detail
        else:
            reason, detail = "missing_samples", "the shard holds fewer samples than its manifest entry says"
        for index in range(start + read, start + count):
            yield Lost(reason, path, index, detail)
