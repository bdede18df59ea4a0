"""M3 loss: score matrices of the three heads, grouped InfoNCE, ensemble and self-knowledge distillation,
Matryoshka dense prefixes, sparse-head health and the FLOPS regulariser, and the exclusions (masks.py:
placeholders, duplicates, sources without in-batch negatives)."""
from framework.loss.config import HeadWeights, LossConfig
from framework.loss.infonce import grouped_infonce, infonce, m3_kd_loss, own_group, soft_cross_entropy
from framework.loss.m3_loss import DenseAtDim, GlobalDense, HeadScores, m3_loss
from framework.loss.masks import (EXCLUDED_SCORE, ColumnKeys, Exclusions, RowRules, exclusions, masked_teacher,
                                  rows_and_columns)
from framework.loss.matryoshka import check_matryoshka_dims, check_prefix_dim, dense_prefix, dense_prefix_numpy
from framework.loss.scores import colbert_scores, dense_scores, ensemble_scores, sparse_scores
from framework.loss.sparse_health import (LexicalStats, all_zero_warnings, flops_lambda, flops_loss,
                                          health_metrics, lexical_stats)

__all__ = [
    "EXCLUDED_SCORE", "ColumnKeys", "DenseAtDim", "Exclusions", "GlobalDense", "HeadScores", "HeadWeights",
    "LexicalStats", "LossConfig", "RowRules", "all_zero_warnings", "exclusions", "masked_teacher",
    "rows_and_columns",
    "check_matryoshka_dims", "check_prefix_dim", "colbert_scores", "dense_prefix", "dense_prefix_numpy",
    "dense_scores", "ensemble_scores", "flops_lambda", "flops_loss", "grouped_infonce", "health_metrics",
    "infonce", "lexical_stats", "m3_kd_loss", "m3_loss", "own_group", "soft_cross_entropy", "sparse_scores",
]
