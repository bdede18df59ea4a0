"""Length-sorted batches under a token budget: little padding, and a batch size that follows the length.

Inputs are sorted longest first (so an out-of-memory shows in the first batch, not hours later), then
cut greedily: a batch grows while rows x its padded width stays within the budget.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from framework.teacher.config import BatchingConfig

# Batches are padded to a multiple of 8 tokens (framework.data.collate.pad_to_multiple); the budget counts that.
PAD_MULTIPLE = 8


def padded_width(length: int) -> int:
    return -(-length // PAD_MULTIPLE) * PAD_MULTIPLE


def length_batches(lengths: Sequence[int], config: BatchingConfig) -> list[np.ndarray]:
    """Indices into `lengths`, one array per batch, longest inputs first; every index appears once."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        width = padded_width(int(lengths[order[start]]))
        size = max(1, min(config.max_batch_size, config.batch_tokens // max(width, 1)))
        batches.append(order[start:start + size])
        start += size
    return batches
