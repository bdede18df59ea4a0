"""Length buckets and the batch size of each (paper section 3.4, Table 9).

A sample's length is the longest of its query and passages in tokens (specials included): that is the
width its passage batch pads to. Shards are grouped by bucket at preparation time; at training time a
batch size per bucket comes either from a table of *total* (all-rank) batch sizes, like the paper's
Table 9, or from a token budget per rank (batch = budget // the bucket's upper edge).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Table 9 of the paper: total batch size per length range (upper edge -> size).
PAPER_UNSUPERVISED = {500: 67200, 1000: 54720, 2000: 37248, 3000: 27648, 4000: 21504, 5000: 17280,
                      6000: 15072, 7000: 12288, 8192: 9984}
PAPER_FINETUNE = {500: 1152, 1000: 768, 2000: 480, 3000: 432, 4000: 336, 5000: 336, 6000: 288, 7000: 240,
                  8192: 192}


PAPER_EDGES = tuple(PAPER_FINETUNE)


def geometric_edges(ratio: float = 1.1, first: int = 16, last: int = 8192) -> tuple[int, ...]:
    """The paper's edges plus edges growing by `ratio` (rounded up to multiples of 8) from `first`.

    Within a bucket a batch pads to its longest sample, so a bucket spanning [a, ratio * a] wastes at
    most about 1 - 1/ratio; the paper's coarse ranges (e.g. 1000-2000) waste far more on long-tailed
    data (bench/padding_efficiency.py: 0.64 efficiency with the paper's 9 edges, 0.96 with ratio 1.1).
    Batch sizes still come per paper range: an edge takes the size of the next larger listed edge.
    """
    edges, x = set(PAPER_EDGES), float(first)
    while x < last:
        edges.add(int(-(-x // 8) * 8))
        x *= ratio
    return tuple(sorted(e for e in edges if e <= last))


DEFAULT_EDGES = geometric_edges()


def bucket_of(length: int, edges: tuple[int, ...]) -> int:
    """Index of the first bucket whose upper edge is >= length; lengths above the last edge are refused."""
    if length > edges[-1]:
        raise ValueError(f"length {length} exceeds the last bucket edge {edges[-1]}; truncate the texts "
                         "(--max-length) or add a larger edge")
    return bisect.bisect_left(edges, length)


@dataclass(frozen=True)
class BucketConfig:
    """Bucket edges and how big a batch of each bucket is."""

    edges: tuple[int, ...] = DEFAULT_EDGES
    """Upper edges in tokens, increasing; bucket i holds lengths in (edges[i-1], edges[i]]."""
    total_batch: dict[int, int] = field(default_factory=dict)
    """Upper edge -> batch size over all ranks (Table 9 style); an edge without an entry takes the
    entry of the next larger edge listed (so the paper's 0-500 size covers the finer buckets)."""
    tokens_per_rank: int | None = None
    """Alternative to total_batch: batch per rank = tokens_per_rank // upper edge."""

    def __post_init__(self) -> None:
        if not self.edges or list(self.edges) != sorted(set(self.edges)) or self.edges[0] < 1:
            raise ValueError(f"bucket edges {self.edges} must be positive and strictly increasing")
        if bool(self.total_batch) == (self.tokens_per_rank is not None):
            raise ValueError("give exactly one of total_batch (a table of total batch sizes per bucket edge) "
                             "or tokens_per_rank (a token budget)")
        unknown = sorted(set(self.total_batch) - set(self.edges))
        if unknown:
            raise ValueError(f"total_batch has edges {unknown} that are not bucket edges {self.edges}")

    def per_rank(self, world_size: int) -> dict[int, int]:
        """Bucket index -> samples per rank per batch, checked to divide evenly across ranks."""
        if self.tokens_per_rank is not None:
            # Buckets above the budget get no size: the plan refuses them only if shards hold such samples.
            sizes = {i: self.tokens_per_rank // edge for i, edge in enumerate(self.edges)
                     if self.tokens_per_rank >= edge}
            if not sizes:
                raise ValueError(f"tokens_per_rank={self.tokens_per_rank} is below every bucket edge; raise it "
                                 f"to at least {self.edges[0]}")
            return sizes
        listed = sorted(self.total_batch)
        sizes = {}
        for i, edge in enumerate(self.edges):
            j = bisect.bisect_left(listed, edge)
            if j == len(listed):
                raise ValueError(f"no total batch for bucket edge {edge}: add it (or a larger edge) to total_batch")
            total = self.total_batch[listed[j]]
            if total % world_size:
                raise ValueError(f"total batch {total} of bucket edge {edge} is not divisible by the "
                                 f"{world_size} ranks; pick a multiple of {world_size}")
            sizes[i] = total // world_size
        return sizes
