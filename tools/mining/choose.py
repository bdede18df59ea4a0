"""Choosing a row's negatives from its ranking: the rules that remove candidates, then a seeded draw.

Rules apply in report.RULES order, and a removed candidate is counted under the first that drops it:
the row's own positives (and its query text), the rank window, the retriever-score window (all three
before any rescoring, so a teacher never scores what they drop), then the margins to the weakest
positive on the choosing score (the teacher's after rescoring, else the retriever's).

Shape legend (docs/shapes.md): K results per query, C candidates left after the window rules.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework.retrieval import MISSING_ID
from .config import MiningConfig, ScoreRules
from .report import SourceCounts


@dataclass
class Candidates:
    """A row's candidates that passed the window rules, in rank order, and the row's counts so far."""

    ids_C: np.ndarray
    """Pool ids, best ranked first."""
    scores_C: np.ndarray
    """Their choosing scores (the retriever's; a teacher's after rescoring)."""
    counts: SourceCounts
    """This row's counts (rows = 1); the margins and the draw add theirs."""


def window_candidates(ids_K: np.ndarray, scores_K: np.ndarray, exclude: set[int], config: MiningConfig) -> Candidates:
    """The retrieved passages minus the row's positives, the ranks before range_start and the score window."""
    rules = config.rules
    counts = SourceCounts(rows=1)
    kept = []
    for rank, (pool_id, score) in enumerate(zip(ids_K[:config.range_end].tolist(), scores_K.tolist())):
        if pool_id == MISSING_ID:
            continue
        counts.candidates += 1
        rule = ("positive" if pool_id in exclude else
                "rank_window" if rank < config.range_start else
                "max_score" if rules.max_score is not None and score > rules.max_score else
                "min_score" if rules.min_score is not None and score < rules.min_score else None)
        if rule is None:
            kept.append(rank)
        else:
            counts.removed[rule] += 1
    return Candidates(ids_K[kept].astype(np.int64), scores_K[kept].astype(np.float32), counts)


def margin_limits(positive_scores: np.ndarray, rules: ScoreRules) -> dict[str, float]:
    """Rule -> the highest choosing score a negative may have, from the row's weakest positive."""
    weakest = float(np.min(positive_scores))
    limits = {}
    if rules.absolute_margin is not None:
        limits["absolute_margin"] = weakest - rules.absolute_margin
    if rules.relative_margin is not None:
        # |pos|, not pos: a negative positive score (a reranker's logit) must not raise the limit above it.
        limits["relative_margin"] = weakest - rules.relative_margin * abs(weakest)
    return limits


def apply_margins(candidates: Candidates, positive_scores: np.ndarray, rules: ScoreRules) -> Candidates:
    """The candidates whose choosing score is within every margin's limit; counts the removed ones."""
    if not rules.has_margins:
        return candidates
    keep_C = np.ones(len(candidates.ids_C), dtype=bool)
    for rule, limit in margin_limits(positive_scores, rules).items():
        dropped_C = keep_C & (candidates.scores_C.astype(np.float64) > limit)
        candidates.counts.removed[rule] += int(dropped_C.sum())
        keep_C &= ~dropped_C
    return Candidates(candidates.ids_C[keep_C], candidates.scores_C[keep_C], candidates.counts)


def draw(candidates: Candidates, config: MiningConfig, line: int) -> Candidates:
    """Up to num_neg of the eligible candidates, in rank order; counts the choice.

    The generator is seeded by (seed, line), so a row's draw depends neither on chunking nor resuming.
    """
    num_eligible = len(candidates.ids_C)
    counts = candidates.counts
    counts.short_rows = int(num_eligible < config.num_neg)
    if num_eligible <= config.num_neg:
        counts.chosen = num_eligible
        return candidates
    chosen = np.sort(np.random.default_rng([config.seed, line]).choice(num_eligible, config.num_neg, replace=False))
    counts.chosen = config.num_neg
    return Candidates(candidates.ids_C[chosen], candidates.scores_C[chosen], counts)
