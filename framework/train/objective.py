"""Model + loss as one module: encode a batch's queries and passages, score every head, return named loss
terms and a report (`ObjectiveOutput`, the output contract of every stage kind's objective).

With `gather_dense`, the dense InfoNCE sees every rank's passages as negatives (framework/parallel's
gather_with_grad explains the gradient semantics). `local_rows` (default) scores this rank's queries
against all passages and sums the passages' gradient over ranks in backward; otherwise every rank
scores all queries x all passages, as the reference does, and `rescale_grad` applies the world-size
factor. The local dense block the ensemble and self-distillation use is always computed from the local
tensors: cut out of the gathered matrix it would carry the world-size factor too.

Shape legend (docs/shapes.md): Q queries, P passages (= Q * G), G group size (positive first), L tokens,
R all ranks' queries, S all ranks' passages, B batch rows (queries or passages), D dense size, C colbert size.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from framework.loss import GlobalDense, HeadScores, LossConfig, colbert_scores, dense_scores, m3_loss, sparse_scores
from framework.model import M3Model, M3Output
from framework.parallel import gather, gather_with_grad, world_size
from framework.train.split_batch import encode, sub_batch_size

if TYPE_CHECKING:
    from framework.data.batch import Batch

# Added to the raw score of a placeholder passage (a query without negatives): after the temperature
# (1/0.02) it is far below any real score, so softmax gives it zero weight, yet it stays finite in bf16.
INVALID_SCORE = -1e4


class ForwardReport(NamedTuple):
    """What a forward pass reports besides its losses (host values: reading them costs no device sync)."""

    computed_positions: int | None = None
    """Token positions the encoder's token-wise layers ran on; None: every padded position of the batch."""


class ObjectiveOutput(NamedTuple):
    """An objective's forward: named loss terms and a report. NamedTuples (not dataclasses), so that
    DeepSpeed's ZeRO-3 hooks, which walk a module's outputs for tensors, see the terms."""

    terms: dict[str, torch.Tensor]
    """'*_loss' terms and 'loss', the total that backward uses (0-dim tensors)."""
    report: ForwardReport


def computed_positions(*outputs: M3Output) -> int | None:
    """Positions the encoder computed on for these outputs (None when none reports it: all padded)."""
    if all(out.computed_positions is None for out in outputs):
        return None
    return sum(out.token_ids_BL.numel() if out.computed_positions is None else out.computed_positions
               for out in outputs)


def head_scores(q: M3Output, p: M3Output, cfg: LossConfig) -> HeadScores:
    """Raw (Q, P) score matrices of the heads the loss trains (a head it ignores costs nothing)."""
    return HeadScores(
        dense=dense_scores(q.dense_BD, p.dense_BD) if cfg.use_dense else None,
        sparse=sparse_scores(q.sparse_BL, q.token_ids_BL, p.sparse_BL, p.token_ids_BL) if cfg.use_sparse else None,
        colbert=colbert_scores(q.colbert_BLC, q.colbert_mask_BL, p.colbert_BLC, p.colbert_mask_BL)
        if cfg.use_colbert else None,
    )


def mask_invalid(scores: HeadScores, valid_P: torch.Tensor | None) -> HeadScores:
    """Push placeholder passages' columns far below every real score in each head. Always added (zeros
    where every passage is valid): testing `valid_P.all()` first would sync the host with the device."""
    if valid_P is None:
        return scores
    penalty_P = (~valid_P).to(torch.float32) * INVALID_SCORE

    def masked(score_QP):
        return None if score_QP is None else score_QP + penalty_P.to(score_QP.dtype)

    return HeadScores(masked(scores.dense), masked(scores.sparse), masked(scores.colbert))


class M3Objective(nn.Module):
    """forward(batch, step) -> ObjectiveOutput({"*_loss": ..., "loss": total}, report); `batch` is a
    framework.data.batch.Batch on the model's device, `step` the micro-step (self-distillation starts by it)."""

    def __init__(self, model: M3Model, loss_cfg: LossConfig, sub_batch: int | None = None,
                 sub_batch_tokens: int | None = None, gather_dense: bool = False, rescale_grad: bool = True,
                 local_rows: bool = True):
        super().__init__()
        for head, model_flag in (("dense", model.cfg.dense), ("sparse", model.cfg.sparse),
                                 ("colbert", model.cfg.colbert)):
            if getattr(loss_cfg, f"use_{head}") and not model_flag:
                raise ValueError(f"loss.use_{head} is on but the model's {head} head is off; "
                                 f"switch the head on (model.{head}=true) or set loss.use_{head}=false")
        self.model = model
        self.loss_cfg = loss_cfg
        self.sub_batch, self.sub_batch_tokens = sub_batch, sub_batch_tokens
        self.gather_dense, self.rescale_grad, self.local_rows = gather_dense, rescale_grad, local_rows

    def encode(self, ids_BL: torch.Tensor, mask_BL: torch.Tensor) -> M3Output:
        return encode(self.model, ids_BL, mask_BL, sub_batch_size(ids_BL.shape[1], self.sub_batch,
                                                                 self.sub_batch_tokens))

    def forward(self, batch: Batch, step: int) -> ObjectiveOutput:
        q, p = self.encode(batch.q_ids_QL, batch.q_mask_QL), self.encode(batch.p_ids_PL, batch.p_mask_PL)
        cfg, group_size, teacher_QG, valid_P = self.loss_cfg, batch.group_size, batch.teacher_scores_QG, \
            batch.passage_valid_P
        scores = mask_invalid(head_scores(q, p, cfg), valid_P)
        use_global = self.gather_dense and cfg.use_dense and world_size() > 1
        dense_global = self._global_dense(q, p, teacher_QG, valid_P, group_size) if use_global else None
        terms = m3_loss(scores, group_size, step, cfg, teacher_QG, dense_global=dense_global)
        return ObjectiveOutput(terms, ForwardReport(computed_positions(q, p)))

    def _global_dense(self, q: M3Output, p: M3Output, teacher_scores_QG, valid_P, group_size: int) -> GlobalDense:
        if self.local_rows:
            return self._local_rows_dense(q, p, valid_P, group_size)
        q_all = gather_with_grad(q.dense_BD, self.rescale_grad)
        p_all = gather_with_grad(p.dense_BD, self.rescale_grad)
        scores_RS = dense_scores(q_all.tensor, p_all.tensor)
        if valid_P is not None:
            valid_S = gather(valid_P.to(scores_RS.dtype)).tensor
            scores_RS = scores_RS + (1 - valid_S) * INVALID_SCORE
        teacher_RG = None
        if teacher_scores_QG is not None and self.loss_cfg.kd_loss_type == "m3_kd_loss":
            teacher_RG = gather(teacher_scores_QG).tensor
        return GlobalDense(scores_RS, q_all.offset, teacher_RG)

    def _local_rows_dense(self, q: M3Output, p: M3Output, valid_P, group_size: int) -> GlobalDense:
        """This rank's queries x all ranks' passages; the passages' gradient is summed over ranks."""
        p_all = gather_with_grad(p.dense_BD, reduce_grad=True)
        num_q = q.dense_BD.shape[0]
        scores_QS = dense_scores(q.dense_BD, p_all.tensor)
        if valid_P is not None:
            valid_S = gather(valid_P.to(scores_QS.dtype)).tensor
            scores_QS = scores_QS + (1 - valid_S) * INVALID_SCORE
        # Every rank holds G passages per query, so the passages' layout gives the query rows too.
        weight = num_q * len(p_all.sizes) * group_size / sum(p_all.sizes)
        return GlobalDense(scores_QS, p_all.offset // group_size, local_rows=True, row_weight=weight)
