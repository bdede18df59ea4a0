"""Health of the sparse (lexical) head, and SPLADE's FLOPS regulariser.

A text's lexical vector holds, per token id, the max weight of its occurrences (what inference returns
as `lexical_weights`). Per micro-batch, for queries and passages separately:

    nonzero     mean number of non-zero lexical weights per text
    all_zero    share of texts whose lexical vector is all zero (the collapse FlagEmbedding users meet
                after unified fine-tuning)
    flops       SPLADE's FLOPS, sum over the vocabulary of (mean over the texts of weight_j)^2
    weight      mean of the non-zero lexical weights

Everything stays on the device: the trainer averages these tensors over a logging window and reads
them once at the log step, like the loss terms. The regulariser adds lambda_t * flops for queries and
passages with SPLADE's quadratic warm-up lambda_t = lambda * min(1, t / T)^2.

Shape legend (docs/shapes.md): B texts, L tokens, N the batch's (text, token) slots, B * L of them.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from framework.loss.config import LossConfig

SIDES = ("query", "passage")


class LexicalStats(NamedTuple):
    """What the lexical vectors of one side of a batch look like (0-dim float32 tensors)."""

    nonzero: Tensor
    """Mean number of non-zero lexical weights per text."""
    all_zero: Tensor
    """Share of texts whose lexical vector is all zero."""
    flops: Tensor
    """sum_j (mean_i w_ij)^2 over the vocabulary; carries the weights' gradient."""
    weight: Tensor
    """Mean non-zero lexical weight (0 when there is none)."""


def lexical_stats(weights_BL: Tensor, ids_BL: Tensor, valid_B: Tensor | None = None) -> LexicalStats:
    """Statistics of the texts' lexical vectors; `valid_B` False drops a text (placeholder passages).

    Exact over the whole vocabulary V: an id absent from the batch adds 0 to every sum. The (id, text)
    pairs are grouped by sorting N = B*L keys rather than with torch.unique (the compaction the sparse
    score uses): unique's output size depends on the data, so on a GPU it makes the host wait for the
    device on every micro-batch, while sort, cumsum and scatter keep every shape at N. Memory is O(N),
    not O(B*V) nor O(B*U).
    """
    num_b, num_l = weights_BL.shape
    weights_N = weights_BL.float().reshape(-1)
    rows_N = torch.arange(num_b, device=ids_BL.device)[:, None].expand(num_b, num_l).reshape(-1)
    ids_N = ids_BL.long().reshape(-1)
    keep_B = torch.ones(num_b, device=weights_N.device) if valid_B is None else valid_B.float()
    weights_N = weights_N * keep_B[rows_N]
    # Sorting by id * B + row puts each (id, text) pair's tokens together, and each id's pairs together.
    keys_N, order_N = torch.sort(ids_N * num_b + rows_N)
    pair_N = _segments(keys_N)
    group_N = _segments(ids_N[order_N])
    lexical_N = weights_N.new_zeros(keys_N.shape).scatter_reduce(0, pair_N, weights_N[order_N], reduce="amax",
                                                                 include_self=False)
    # Slots past the last pair keep weight 0 and point at group/row 0, where they add nothing.
    pair_group_N = torch.zeros_like(pair_N).scatter_(0, pair_N, group_N)
    pair_row_N = torch.zeros_like(pair_N).scatter_(0, pair_N, rows_N[order_N])
    num_texts = keep_B.sum().clamp(min=1)
    mean_N = weights_N.new_zeros(keys_N.shape).index_add(0, pair_group_N, lexical_N) / num_texts
    nonzero_B = weights_N.new_zeros(num_b).index_add(0, pair_row_N, (lexical_N > 0).float())
    num_nonzero = (nonzero_B * keep_B).sum()
    return LexicalStats(
        nonzero=num_nonzero / num_texts,
        all_zero=((nonzero_B == 0).float() * keep_B).sum() / num_texts,
        flops=(mean_N ** 2).sum(),
        weight=lexical_N.detach().sum() / num_nonzero.clamp(min=1),
    )


def _segments(sorted_N: Tensor) -> Tensor:
    """Index of each element's run of equal values in a sorted tensor (0, 0, 1, 2, 2, ...)."""
    starts_N = torch.ones_like(sorted_N, dtype=torch.long)
    starts_N[1:] = (sorted_N[1:] != sorted_N[:-1]).long()
    return starts_N.cumsum(0) - 1


def health_metrics(query: LexicalStats, passage: LexicalStats) -> dict[str, Tensor]:
    """The report's metric names: sparse_query_nonzero, sparse_passage_all_zero, ... (detached)."""
    return {f"sparse_{side}_{name}": value.detach()
            for side, stats in zip(SIDES, (query, passage)) for name, value in stats._asdict().items()}


def flops_lambda(weight: float, step: int, warmup_steps: int) -> float:
    """SPLADE's quadratic warm-up: weight * min(1, step / warmup_steps)^2 (warmup_steps 0: weight)."""
    if warmup_steps <= 0:
        return weight
    return weight * min(1.0, step / warmup_steps) ** 2


def flops_loss(query: LexicalStats, passage: LexicalStats, cfg: LossConfig, step: int) -> Tensor:
    """lambda_q,t * FLOPS(queries) + lambda_p,t * FLOPS(passages), the term added to the total."""
    return (flops_lambda(cfg.flops_query_weight, step, cfg.flops_warmup_steps) * query.flops
            + flops_lambda(cfg.flops_passage_weight, step, cfg.flops_warmup_steps) * passage.flops)


def all_zero_warnings(metrics: dict[str, float], threshold: float | None,
                      first_window: dict[str, float] | None = None) -> list[str]:
    """One sentence per side whose window share of all-zero lexical vectors is above `threshold`.

    `first_window`: the metrics of the first window this stage run logged. A share that has risen since
    then is a collapse (FlagEmbedding issues #982, #914); a share that was already that high and has not
    risen is a head that has not learned yet (a freshly drawn sparse_linear zeroes many short texts), and
    the advice differs."""
    if threshold is None:
        return []
    lines = []
    for side in SIDES:
        key = f"sparse_{side}_all_zero"
        share = metrics.get(key)
        if share is None or share <= threshold:
            continue
        start = None if first_window is None else first_window.get(key)
        head = (f"WARNING sparse head: {share:.0%} of {side} texts have an all-zero lexical vector "
                f"(threshold {threshold:.0%}; mean non-zero weights per text "
                f"{metrics.get(f'sparse_{side}_nonzero', float('nan')):.1f}")
        if start is not None and start > threshold and share <= start:
            lines.append(f"{head}; {start:.0%} in the stage's first window): the head has not learned to weight "
                         "these texts yet (a fresh sparse_linear starts so); if the share does not fall, raise "
                         "loss.sparse_lambda or the learning rate, or train the heads first (a heads stage)")
        else:
            lines.append(f"{head}): the sparse head is collapsing; lower the learning rate, raise "
                         "loss.sparse_lambda, or lower loss.flops_*_weight if set")
    return lines
