"""M3 loss: score matrices of the three heads, grouped InfoNCE, ensemble and self-knowledge distillation."""
from framework.loss.config import HeadWeights, LossConfig
from framework.loss.infonce import grouped_infonce, infonce, m3_kd_loss, own_group, soft_cross_entropy
from framework.loss.m3_loss import GlobalDense, HeadScores, m3_loss
from framework.loss.scores import colbert_scores, dense_scores, ensemble_scores, sparse_scores

__all__ = [
    "GlobalDense", "HeadScores", "HeadWeights", "LossConfig", "colbert_scores", "dense_scores",
    "ensemble_scores", "grouped_infonce", "infonce", "m3_kd_loss", "m3_loss", "own_group",
    "soft_cross_entropy", "sparse_scores",
]
