"""What a batch reports about the records behind it: counts by reason, and where the bad ones were.

Every batch of the stream carries a `BatchStats` in `stats`: a dict reason -> count over exactly the
batch's sample slots (so summing over batches never counts a record twice), with the bad and lost
records also listed by (reason, shard) in `stats.bad`, which a console line names. Reasons:
records.REJECT_REASONS and records.STREAM_REASONS for bad records, plus these counts of kept ones:

    truncated                   texts cut to query/passage_max_length
    no_negatives                queries without hard negatives (their slots are masked)
    negatives_repeated/SOURCE   queries with fewer negatives than group_size - 1: some repeat
    short_batches               batches holding fewer samples than planned (bad or lost ones)
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

# The counts of a batch's stats that are not bad records (a record was used, perhaps cut or repeated);
# a key may carry a "/<source>" suffix.
KEPT_COUNTS = frozenset({"truncated", "no_negatives", "negatives_repeated", "short_batches"})


def is_bad(reason: str) -> bool:
    """Whether a stats key counts bad (unused) records."""
    return reason.split("/", 1)[0] not in KEPT_COUNTS


@dataclass(frozen=True)
class BadRecords:
    """Bad or lost records of one reason in one shard (within one batch, or summed over several)."""

    reason: str
    """A records.REJECT_REASONS or records.STREAM_REASONS string."""
    shard: str
    """The shard's file name."""
    count: int
    """How many."""
    example: str
    """The first one's sample key (or its index in the shard, for lost samples)."""
    detail: str
    """What was wrong with the first one."""


class BatchStats(dict):
    """reason -> count for one batch's sample slots, plus `bad`: the bad records by (reason, shard).

    A dict subclass so that code summing counts (Counter.update, metrics) reads it as a plain dict; it
    pickles with its `bad` list (DataLoader workers send it to the main process).
    """

    def __init__(self, counts: dict[str, int] | None = None):
        super().__init__(counts or {})
        self.bad: list[BadRecords] = []

    def count(self, reason: str, num: int = 1) -> None:
        self[reason] = self.get(reason, 0) + num

    def add_bad(self, reason: str, shard_path: str, example: str, detail: str, num: int = 1) -> None:
        self.count(reason, num)
        shard = Path(shard_path).name
        for i, entry in enumerate(self.bad):
            if (entry.reason, entry.shard) == (reason, shard):
                self.bad[i] = replace(entry, count=entry.count + num)
                return
        self.bad.append(BadRecords(reason, shard, num, example, detail))

    @property
    def num_bad(self) -> int:
        return sum(entry.count for entry in self.bad)


def merge_bad(entries: Iterable[BadRecords]) -> list[BadRecords]:
    """Entries summed by (reason, shard), first example kept, in order of first appearance."""
    merged: dict[tuple[str, str], BadRecords] = {}
    for entry in entries:
        key = (entry.reason, entry.shard)
        merged[key] = replace(merged[key], count=merged[key].count + entry.count) if key in merged else entry
    return list(merged.values())


def bad_records_line(entries: Iterable[BadRecords], max_shards: int = 3) -> str:
    """`bad records: corrupt_shard 41 (web.b00.p00000.00003.tar), token_out_of_vocab 1 (wiki...tar)`,
    or "" when there are none; the shards of a reason beyond `max_shards` are summarised."""
    by_reason: dict[str, list[BadRecords]] = {}
    for entry in merge_bad(entries):
        by_reason.setdefault(entry.reason, []).append(entry)
    parts = []
    for reason, items in sorted(by_reason.items(), key=lambda kv: -sum(e.count for e in kv[1])):
        shards = ", ".join(e.shard for e in items[:max_shards])
        more = f" and {len(items) - max_shards} more shards" if len(items) > max_shards else ""
        parts.append(f"{reason} {sum(e.count for e in items)} ({shards}{more})")
    return f"bad records: {', '.join(parts)}" if parts else ""


def total_counts(stats: Iterable[dict[str, int]]) -> dict[str, int]:
    """Counts summed over batches."""
    out: Counter = Counter()
    for item in stats:
        out.update(item)
    return dict(out)
