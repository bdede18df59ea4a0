"""Model + loss as one module: encode a batch's queries and passages, score every head, return named loss
terms and a report (`ObjectiveOutput`, the output contract of every stage kind's objective).

With `gather_dense`, the dense InfoNCE sees every rank's passages as negatives (framework/parallel's
gather_with_grad explains the gradient semantics). `local_rows` (default) scores this rank's queries
against all passages and sums the passages' gradient over ranks in backward; otherwise every rank
scores all queries x all passages, as the reference does, and `rescale_grad` applies the world-size
factor. The local dense block the ensemble and self-distillation use is always computed from the local
tensors: cut out of the gathered matrix it would carry the world-size factor too.

Matryoshka dims: every prefix width's dense scores come from the same gathered vectors (one gather,
then truncation and renormalisation on both sides of it), so each width has the full width's
gradient semantics. The sparse head's health (framework/loss/sparse_health.py) goes into the report as
device tensors, and the FLOPS regulariser, when on, into the terms as flops_loss.

Exclusions (framework/loss/masks.py): placeholder passages, passages whose token-id hash equals one of
the query's positives, and for sources with in_batch_negatives false every other group's passages are
left out of each query's softmax: m3_loss gets the local penalty (every head, the ensemble,
self-distillation, the teacher's targets), and the gathered dense scores get the same rule over all
ranks' passages (their validity and hashes travel in one int64 gather, which replaces the validity
gather; all rows also gather the row rules). The report's `masked_duplicates` (batches that carry hashes:
every stream batch) counts the entries of this rank's query rows that only the duplicate rule left out.

Shape legend (docs/shapes.md): Q queries, P passages (= Q * G), G group size (positive first), L tokens,
R all ranks' queries, S all ranks' passages, B batch rows (queries or passages), D dense size, C colbert size,
Y positives of a query.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from framework.loss import (ColumnKeys, DenseAtDim, GlobalDense, HeadScores, LossConfig, RowRules,
                            check_matryoshka_dims, colbert_scores, dense_prefix, dense_scores, exclusions,
                            flops_loss, health_metrics, lexical_stats, m3_loss, masked_teacher, rows_and_columns,
                            sparse_scores)
from framework.data.dedup import NO_HASH
from framework.model import M3Model, M3Output
from framework.parallel import gather, gather_with_grad, world_size
from framework.train.split_batch import encode, sub_batch_size

if TYPE_CHECKING:
    from framework.data.batch import Batch



class ForwardReport(NamedTuple):
    """What a forward pass reports besides its losses."""

    computed_positions: int | None = None
    """Token positions the encoder's token-wise layers ran on; None: every padded position of the batch
    (a host value: reading it costs no device sync)."""
    metrics: Mapping[str, torch.Tensor] = MappingProxyType({})
    """Detached 0-dim device tensors (sparse-head health...), averaged over a logging window and read at
    the log step like the loss terms; never read per micro-batch."""
    attention_positions: int | None = None
    """Query positions of the encoder's attention calls (M3Output.attention_positions, summed); None:
    every padded position of the batch (a host value)."""


class ObjectiveOutput(NamedTuple):
    """An objective's forward: named loss terms and a report. NamedTuples (not dataclasses), so that
    DeepSpeed's ZeRO-3 hooks, which walk a module's outputs for tensors, see the terms."""

    terms: dict[str, torch.Tensor]
    """'*_loss' terms and 'loss', the total that backward uses (0-dim tensors)."""
    report: ForwardReport


def computed_positions(*outputs: M3Output, field: str = "computed_positions") -> int | None:
    """Positions the encoder computed on for these outputs (None when none reports it: all padded);
    field="attention_positions": those of attention's calls."""
    values = [getattr(out, field) for out in outputs]
    if all(value is None for value in values):
        return None
    return sum(out.token_ids_BL.numel() if value is None else value for out, value in zip(outputs, values))


def head_scores(q: M3Output, p: M3Output, cfg: LossConfig) -> HeadScores:
    """Raw (Q, P) score matrices of the heads the loss trains (a head it ignores costs nothing)."""
    return HeadScores(
        dense=dense_scores(q.dense_BD, p.dense_BD) if cfg.use_dense else None,
        sparse=sparse_scores(q.sparse_BL, q.token_ids_BL, p.sparse_BL, p.token_ids_BL) if cfg.use_sparse else None,
        colbert=colbert_scores(q.colbert_BLC, q.colbert_mask_BL, p.colbert_BLC, p.colbert_mask_BL)
        if cfg.use_colbert else None,
    )


def batch_rules(batch: Batch) -> tuple[RowRules, ColumnKeys]:
    """The batch's row rules and column keys on its device (a batch without them excludes only placeholders)."""
    return rows_and_columns(batch.in_batch_Q, batch.positive_hash_QY, batch.passage_valid_P, batch.passage_hash_P,
                            batch.q_ids_QL.shape[0], batch.p_ids_PL.shape[0], batch.p_ids_PL.device)


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
        if loss_cfg.matryoshka_dims:
            check_matryoshka_dims(loss_cfg.matryoshka_dims, model.encoder.config.hidden_size)
        self.model = model
        self.loss_cfg = loss_cfg
        self.sub_batch, self.sub_batch_tokens = sub_batch, sub_batch_tokens
        self.gather_dense, self.rescale_grad, self.local_rows = gather_dense, rescale_grad, local_rows

    def encode(self, ids_BL: torch.Tensor, mask_BL: torch.Tensor) -> M3Output:
        return encode(self.model, ids_BL, mask_BL, sub_batch_size(ids_BL.shape[1], self.sub_batch,
                                                                 self.sub_batch_tokens))

    def forward(self, batch: Batch, step: int) -> ObjectiveOutput:
        q, p = self.encode(batch.q_ids_QL, batch.q_mask_QL), self.encode(batch.p_ids_PL, batch.p_mask_PL)
        cfg, group_size, teacher_QG = self.loss_cfg, batch.group_size, batch.teacher_scores_QG
        rows, cols = batch_rules(batch)
        local = exclusions(rows, cols, group_size)
        scores = head_scores(q, p, cfg)
        use_global = self.gather_dense and cfg.use_dense and world_size() > 1
        vectors = self._gather_dense(q, p, masked_teacher(teacher_QG, local.penalty_QP, group_size), rows, cols,
                                     group_size) if use_global else None
        dense_global = None if vectors is None else vectors.scores()
        dense_dims = self._dense_dims(q, p, scores, vectors, dense_global) if cfg.matryoshka_dims else None
        terms = m3_loss(scores, group_size, step, cfg, teacher_QG, dense_global=dense_global, dense_dims=dense_dims,
                        penalty_QP=local.penalty_QP)
        metrics = {}
        if batch.passage_hash_P is not None:  # every stream batch; Batch.of without hashes masks no duplicate
            duplicates = local.duplicates_QP if vectors is None else vectors.duplicates_QS
            metrics["masked_duplicates"] = duplicates.sum().to(torch.float32)
        if cfg.use_sparse:
            terms, health = self._sparse_health(q, p, cols.valid_P, terms, step)
            metrics.update(health)
        return ObjectiveOutput(terms, ForwardReport(computed_positions(q, p), MappingProxyType(metrics),
                                                    computed_positions(q, p, field="attention_positions")))

    def _sparse_health(self, q: M3Output, p: M3Output, valid_P, terms: dict, step: int) -> tuple[dict, dict]:
        """The lexical vectors' health metrics, and flops_loss added to the total when it is on."""
        cfg = self.loss_cfg
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.flops_on):
            query, passage = lexical_stats(q.sparse_BL, q.token_ids_BL), lexical_stats(p.sparse_BL, p.token_ids_BL,
                                                                                       valid_P)
        if cfg.flops_on:
            terms = {**terms, "flops_loss": flops_loss(query, passage, cfg, step)}
            terms["loss"] = terms["loss"] + terms["flops_loss"]
        return terms, health_metrics(query, passage)

    def _dense_dims(self, q: M3Output, p: M3Output, scores: HeadScores, vectors: GatheredDense | None,
                    dense_global: GlobalDense | None) -> dict[int, DenseAtDim]:
        """Each Matryoshka width's dense scores (raw: m3_loss adds the local penalty, the gathered ones carry
        theirs); the full width reuses the full scores."""
        width, normalize = q.dense_BD.shape[-1], self.model.cfg.normalize
        views = {}
        for dim in self.loss_cfg.matryoshka_dims:
            if dim == width:
                views[dim] = DenseAtDim(scores.dense, dense_global)
            elif vectors is not None:
                views[dim] = DenseAtDim(dense_global=vectors.scores(dim, normalize))
            else:
                q_Qd, p_Pd = dense_prefix(q.dense_BD, dim, normalize), dense_prefix(p.dense_BD, dim, normalize)
                views[dim] = DenseAtDim(dense_scores(q_Qd, p_Pd))
        return views

    def _gather_dense(self, q: M3Output, p: M3Output, teacher_scores_QG, rows: RowRules, cols: ColumnKeys,
                      group_size: int) -> GatheredDense:
        """`teacher_scores_QG` already carries the local exclusions (masked_teacher)."""
        all_cols = _gather_columns(cols)
        if self.local_rows:
            return self._local_rows_dense(q, p, rows, all_cols, group_size)
        q_all = gather_with_grad(q.dense_BD, self.rescale_grad)
        p_all = gather_with_grad(p.dense_BD, self.rescale_grad)
        teacher_RG = None
        if teacher_scores_QG is not None and self.loss_cfg.kd_loss_type == "m3_kd_loss":
            teacher_RG = gather(teacher_scores_QG).tensor
        excluded = exclusions(_gather_rows(rows), all_cols, group_size)
        return GatheredDense(p_all.tensor, q_all.offset, q_RD=q_all.tensor, penalty_RS=excluded.penalty_QP,
                             teacher_RG=teacher_RG, duplicates_QS=excluded.duplicates_QP[q_all.local_rows])

    def _local_rows_dense(self, q: M3Output, p: M3Output, rows: RowRules, all_cols: ColumnKeys,
                          group_size: int) -> GatheredDense:
        """This rank's queries x all ranks' passages; the passages' gradient is summed over ranks."""
        p_all = gather_with_grad(p.dense_BD, reduce_grad=True)
        num_q = q.dense_BD.shape[0]
        # Every rank holds G passages per query, so the passages' layout gives the query rows too.
        weight = num_q * len(p_all.sizes) * group_size / sum(p_all.sizes)
        offset = p_all.offset // group_size
        excluded = exclusions(rows, all_cols, group_size, offset)
        return GatheredDense(p_all.tensor, offset, q_QD=q.dense_BD, penalty_QS=excluded.penalty_QP,
                             row_weight=weight, duplicates_QS=excluded.duplicates_QP)


def _gather_columns(cols: ColumnKeys) -> ColumnKeys:
    """Every rank's passage validity and hashes, in one int64 gather (no gradient)."""
    keys_S2 = gather(torch.stack([cols.valid_P.to(torch.int64), cols.hash_P], dim=1)).tensor
    return ColumnKeys(keys_S2[:, 0].bool(), keys_S2[:, 1])


def _gather_rows(rows: RowRules) -> RowRules:
    """Every rank's row rules (all-rows layout), in one int64 gather; ranks' positive widths are padded."""
    packed_R1Y = gather(torch.cat([rows.in_batch_Q[:, None].to(torch.int64), rows.positive_hash_QY], dim=1),
                        pad_value=NO_HASH).tensor
    return RowRules(packed_R1Y[:, 0].bool(), packed_R1Y[:, 1:])


class GatheredDense(NamedTuple):
    """Dense vectors over ranks, gathered once; `scores(dim)` scores them at the full or a prefix width.
    The query rows are all ranks' (q_RD, penalty_RS) or, with local rows, this rank's (q_QD, penalty_QS)."""

    p_SD: torch.Tensor
    """All ranks' passages; this rank's rows carry the gradient (framework/parallel/gather.py)."""
    row_offset: int
    """This rank's first query among all ranks' queries."""
    q_RD: torch.Tensor | None = None
    """All ranks' queries (all rows)."""
    penalty_RS: torch.Tensor | None = None
    """The exclusions' penalty of all ranks' queries x all passages (framework/loss/masks.py; None: none)."""
    q_QD: torch.Tensor | None = None
    """This rank's queries (local rows)."""
    penalty_QS: torch.Tensor | None = None
    """The exclusions' penalty of this rank's queries x all passages."""
    teacher_RG: torch.Tensor | None = None
    """All ranks' reranker scores, for kd_loss_type m3_kd_loss over all rows."""
    row_weight: float = 1.0
    """GlobalDense.row_weight of local rows."""
    duplicates_QS: torch.Tensor | None = None
    """This rank's query rows x all passages: the entries only the duplicate rule excluded (the metric)."""

    def scores(self, dim: int | None = None, normalize: bool = True) -> GlobalDense:
        local = self.q_QD is not None
        q, penalty = (self.q_QD, self.penalty_QS) if local else (self.q_RD, self.penalty_RS)
        p_SD = self.p_SD
        if dim is not None:
            q, p_SD = dense_prefix(q, dim, normalize), dense_prefix(p_SD, dim, normalize)
        scores = dense_scores(q, p_SD)
        if penalty is not None:
            scores = scores + penalty.to(scores.dtype)
        rows = {"scores_QS": scores} if local else {"scores_RS": scores}
        return GlobalDense(**rows, row_offset=self.row_offset, teacher_scores_RG=self.teacher_RG,
                           row_weight=self.row_weight)
