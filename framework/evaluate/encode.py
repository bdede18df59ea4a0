"""Encode a benchmark's distinct texts once, optionally sharded over the ranks of a distributed launch.

Distributed hook: with a `Shard`, rank r encodes texts r, r + W, r + 2W, ... and the caller's
`all_gather` (for example a wrapper of torch.distributed.all_gather_object from framework/parallel/;
this module never imports torch.distributed) returns every rank's part, which is interleaved back
into input order; every rank then holds the whole encoding. Without one, one process encodes everything.

Shape legend (docs/shapes.md): N texts, D dense size, L tokens of one text, C colbert size.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

ENCODE_KEYS = ("dense_vecs", "lexical_weights", "colbert_vecs")


@dataclass(frozen=True)
class Shard:
    """This process's part of a distributed encoding."""

    rank: int
    """Rank of this process, 0 <= rank < world_size."""
    world_size: int
    """Number of processes that encode together."""
    all_gather: Callable[[object], list]
    """Returns the object of every rank, in rank order (like torch.distributed.all_gather_object)."""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank}, world_size={self.world_size}: need 0 <= rank < world_size")


class TextPool:
    """Distinct texts in first-seen order; `add` returns the pool positions of a list of texts."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._position: dict[str, int] = {}

    def add(self, texts: Sequence[str]) -> np.ndarray:
        positions_N = np.empty(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            position = self._position.get(text)
            if position is None:
                position = self._position[text] = len(self.texts)
                self.texts.append(text)
            positions_N[i] = position
        return positions_N

    def __len__(self) -> int:
        return len(self.texts)


def encode_texts(embedder, texts: Sequence[str], shard: Shard | None = None, **options) -> dict:
    """embedder.encode(texts, **options), or this rank's share of it gathered from all ranks."""
    if shard is None or shard.world_size == 1:
        return embedder.encode(list(texts), **options)
    local = list(texts[shard.rank::shard.world_size])
    part = embedder.encode(local, **options) if local else {}
    return merge_shards(shard.all_gather(part), len(texts))


def merge_shards(parts: list[dict], num_texts: int) -> dict:
    """Interleave per-rank encode() outputs (rank r holds texts r, r + W, ...) back into input order."""
    world = len(parts)
    merged: dict = {}
    for key in ENCODE_KEYS:
        present = [p for p in parts if key in p]
        if not present:
            continue
        rows: list = [None] * num_texts
        for rank, part in enumerate(parts):
            for j, row in enumerate(part.get(key, [])):
                rows[rank + j * world] = row
        assert all(r is not None for r in rows), f"shards did not cover all {num_texts} texts for {key}"
        merged[key] = np.stack(rows) if key == "dense_vecs" else rows
    return merged


def colbert_fits(tokenizer, texts: Sequence[str], max_length: int, colbert_dim: int, budget_bytes: float,
                 batch: int = 4096) -> bool:
    """Whether the multi-vector outputs of `texts`, (tokens - 1) x colbert_dim float32 each, fit the budget."""
    total = 0
    for start in range(0, len(texts), batch):
        ids = tokenizer(list(texts[start:start + batch]), truncation=True, max_length=max_length,
                        verbose=False)["input_ids"]
        total += sum(len(seq) - 1 for seq in ids) * colbert_dim * 4
        if total > budget_bytes:  # a large corpus is not tokenised to the end just to learn it is large
            return False
    return True


@dataclass
class BenchmarkEncoding:
    """Encoder outputs of a benchmark's distinct queries and documents, and where each task's rows are."""

    queries: dict
    """encode() output of the distinct query texts."""
    corpus: dict
    """encode() output of the distinct document texts (colbert_vecs only when they fit in memory)."""
    corpus_texts: list[str]
    """The distinct document texts, in pool order."""
    query_positions: list[np.ndarray]
    """Per task, the pool position of each query."""
    corpus_positions: list[np.ndarray]
    """Per task, the pool position of each document."""
    corpus_mcls_ND: np.ndarray | None = None
    """MCLS dense vectors of the distinct documents, when asked for."""
    seconds: dict[str, float] | None = None
    """Encoding seconds per pass: queries, corpus, corpus_mcls."""
