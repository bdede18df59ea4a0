"""Model + loss as one module: encode queries and passages, score every head, return named loss terms.

Shape legend: Q queries, P passages (= Q * G), G group size (positive first), L tokens.
"""
from __future__ import annotations

import torch
from torch import nn

from framework.loss import HeadScores, LossConfig, colbert_scores, dense_scores, m3_loss, sparse_scores
from framework.model import M3Model, M3Output


def head_scores(q: M3Output, p: M3Output, cfg: LossConfig) -> HeadScores:
    """Raw (Q, P) score matrices of the heads the loss trains (a head it ignores costs nothing)."""
    return HeadScores(
        dense=dense_scores(q.dense_BD, p.dense_BD) if cfg.use_dense else None,
        sparse=sparse_scores(q.sparse_BL, q.token_ids_BL, p.sparse_BL, p.token_ids_BL) if cfg.use_sparse else None,
        colbert=colbert_scores(q.colbert_BLC, q.colbert_mask_BL, p.colbert_BLC, p.colbert_mask_BL)
        if cfg.use_colbert else None,
    )


class M3Objective(nn.Module):
    """forward(query ids/mask, passage ids/mask, group_size, step) -> {"*_loss": ..., "loss": total}."""

    def __init__(self, model: M3Model, loss_cfg: LossConfig):
        super().__init__()
        for head, model_flag in (("dense", model.cfg.dense), ("sparse", model.cfg.sparse),
                                 ("colbert", model.cfg.colbert)):
            if getattr(loss_cfg, f"use_{head}") and not model_flag:
                raise ValueError(f"loss.use_{head} is on but the model's {head} head is off; "
                                 f"switch the head on (model.{head}=true) or set loss.use_{head}=false")
        self.model = model
        self.loss_cfg = loss_cfg

    def forward(self, q_ids_QL: torch.Tensor, q_mask_QL: torch.Tensor, p_ids_PL: torch.Tensor,
                p_mask_PL: torch.Tensor, group_size: int, step: int,
                teacher_scores_QG: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        scores = head_scores(self.model(q_ids_QL, q_mask_QL), self.model(p_ids_PL, p_mask_PL), self.loss_cfg)
        return m3_loss(scores, group_size, step, self.loss_cfg, teacher_scores_QG)
