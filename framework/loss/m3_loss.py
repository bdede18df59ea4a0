"""The M3 training loss: per-head grouped InfoNCE, ensemble InfoNCE and self-knowledge distillation.

    L  = (l1*L_dense + l2*L_sparse + l3*L_colbert + l_ens*L_ens) / loss_divisor
    L' = (l1*KD_dense + l2*KD_sparse + l3*KD_colbert) / kd_divisor,  KD(s) = -mean sum t*log softmax(s)
    loss = (L + L') / final_divisor once step > self_distill_start_step, else L

with t = softmax(ensemble scores) over the whole batch row. The ensemble term and distillation need
two heads or more; with one head L is that head's (weighted) InfoNCE, the reference's dense-only mode.
With Matryoshka dims (cfg.matryoshka_dims), L_dense = sum_d w_d * L_dense@d over the truncated,
renormalised prefixes (framework/loss/matryoshka.py); the ensemble and KD keep the full-width scores.
A `penalty_QP` (framework/loss/masks.py: placeholders, duplicates of a query's positives, other groups of
a source without in-batch negatives) is added to every local matrix (each head's, each width's, the
ensemble's, hence self-distillation's targets) and, in its own-group entries, to the teacher's scores.

Shape legend (docs/shapes.md):
    Q  this rank's queries        P  this rank's passages = Q*G        G  passages per query
    R  all ranks' queries         S  all ranks' passages = R*G
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, asdict, dataclass, fields

import torch
from torch import Tensor

from framework.heads import HEADS
from framework.loss.config import LossConfig
from framework.loss.infonce import grouped_infonce, infonce, m3_kd_loss, own_group, soft_cross_entropy
from framework.loss.masks import masked_teacher
from framework.loss.scores import ensemble_scores


@dataclass(frozen=True)
class HeadScores:
    """Raw (not temperature-scaled) (Q, P) score matrices of the local batch; None for heads off."""

    dense: Tensor | None = None
    """Dense scores; may stay None when GlobalDense is given (the local block is then sliced from it)."""
    sparse: Tensor | None = None
    """Sparse (lexical) scores."""
    colbert: Tensor | None = None
    """Multi-vector scores."""


@dataclass(frozen=True)
class GlobalDense:
    """Dense scores against all ranks' passages, for cross-device negatives. Exactly one of the two score
    matrices is given: `scores_RS` (every rank scores all ranks' queries, the reference's layout) or
    `scores_QS` (local rows: this rank's queries only)."""

    scores_RS: Tensor | None = None
    """Raw (R, S) dense scores, rows and columns in rank order (this rank's own rows carry gradient), with
    the exclusions' penalty already added (framework/loss/masks.py over the gathered rows and columns)."""
    scores_QS: Tensor | None = None
    """Raw (Q, S) scores of this rank's queries against all ranks' passages (the passages gathered with
    reduce_grad), penalty added; the dense InfoNCE is computed on these rows and weighted by row_weight."""
    _: KW_ONLY
    row_offset: int
    """Index of this rank's first query among all ranks' R queries (rank * Q when all ranks hold Q)."""
    teacher_scores_RG: Tensor | None = None
    """All ranks' reranker scores, masked like the local ones (masks.masked_teacher); needed only for
    teacher distillation with kd_loss_type 'm3_kd_loss' (with scores_RS)."""
    row_weight: float = 1.0
    """With scores_QS: Q x W / R, so that the engine's mean over ranks equals the mean over all R rows."""

    def __post_init__(self) -> None:
        if (self.scores_RS is None) == (self.scores_QS is None):
            raise ValueError("GlobalDense: give exactly one of scores_RS (all ranks' query rows) and scores_QS "
                             "(this rank's query rows, local rows)")

    @property
    def local_rows(self) -> bool:
        """True when the scores are this rank's query rows (scores_QS)."""
        return self.scores_QS is not None


@dataclass(frozen=True)
class DenseAtDim:
    """Raw dense scores of one Matryoshka prefix width: local, or over all ranks when gathered."""

    scores_QP: Tensor | None = None
    """(Q, P) scores of the prefix vectors; used when dense_global is None."""
    dense_global: GlobalDense | None = None
    """The prefix vectors' scores over all ranks (the same layout as m3_loss's dense_global)."""


def m3_loss(scores: HeadScores | Mapping[str, Tensor | None], group_size: int, step: int,
            cfg: LossConfig, teacher_scores_QG: Tensor | None = None,
            dense_global: GlobalDense | None = None,
            dense_dims: Mapping[int, DenseAtDim] | None = None,
            penalty_QP: Tensor | None = None) -> dict[str, Tensor]:
    """Named loss terms of one local batch; `loss` is the total to backpropagate.

    `step` is compared with cfg.self_distill_start_step; the reference counts forward calls from 0
    (micro-batches, so with gradient accumulation it runs ahead of the optimizer step).
    `teacher_scores_QG` are raw reranker scores (positive first), turned into softmax targets over the
    group and applied to every head's loss and the ensemble's, as the reference does.
    With `dense_global`, the dense InfoNCE runs over all ranks' queries and passages (targets r*G),
    while the ensemble and distillation use this rank's (Q, P) block, exactly as the reference does.
    `dense_dims` (needed when cfg.matryoshka_dims is set): each prefix width's scores, local or gathered
    like the full ones; the dense term is then their weighted sum, logged per width as dense_<d>_loss.
    `penalty_QP`: the local exclusions (framework/loss/masks.py), raw-score units; None excludes nothing.
    """
    head_scores = _as_head_scores(scores)
    num_q = _check_inputs(head_scores, group_size, cfg, teacher_scores_QG, dense_global)
    _check_dense_dims(dense_dims, num_q, group_size, cfg, teacher_scores_QG is not None)
    _check_penalty(penalty_QP, num_q, group_size)
    active = [head for head in HEADS if getattr(cfg, f"use_{head}")]
    local = {head: _scaled(score_QP, penalty_QP, cfg)
             for head, score_QP in _local_blocks(head_scores, dense_global, num_q, group_size).items()}
    teacher_QG = masked_teacher(teacher_scores_QG, penalty_QP, group_size)
    targets_QG = None if teacher_QG is None else _teacher_targets(teacher_QG)
    terms = {}
    for head in active:
        if head == "dense":
            terms.update(_dense_terms(local.get("dense"), dense_global, dense_dims, num_q, group_size, targets_QG,
                                      cfg, penalty_QP))
        else:
            terms[f"{head}_loss"] = grouped_infonce(local[head], group_size, targets_QG, cfg.kd_loss_type)
    lambdas = asdict(cfg.lambdas)
    weighted = [(lambdas[head], terms[f"{head}_loss"]) for head in active]
    ensemble_QP = None
    if len(active) > 1:
        ensemble_QP = ensemble_scores(local.get("dense"), local.get("sparse"), local.get("colbert"),
                                      cfg.ensemble_weights)
        if penalty_QP is not None:
            # The heads carry the penalty already; added once more so that it holds whatever the weights.
            ensemble_QP = ensemble_QP + _widen(penalty_QP) / cfg.temperature
        terms["ensemble_loss"] = grouped_infonce(ensemble_QP, group_size, targets_QG, cfg.kd_loss_type)
        weighted.append((cfg.ensemble_lambda, terms["ensemble_loss"]))
    loss = _weighted_sum(weighted) / _divisor(cfg.loss_divisor, len(weighted))
    if ensemble_QP is not None and cfg.use_self_distill and step > cfg.self_distill_start_step:
        terms.update(_self_distill_terms(ensemble_QP, local, lambdas, cfg))
        loss = (loss + terms["kd_loss"]) / _divisor(cfg.final_divisor, 2)
    terms["loss"] = loss
    return terms


def _self_distill_terms(ensemble_QP: Tensor, local: dict[str, Tensor], lambdas: dict[str, float],
                        cfg: LossConfig) -> dict[str, Tensor]:
    """KD of every head towards softmax(ensemble) over the full batch row, and their weighted sum."""
    teacher_QP = ensemble_QP.detach() if cfg.detach_teacher else ensemble_QP
    targets_QP = torch.softmax(teacher_QP, dim=-1)
    terms = {f"kd_{head}_loss": soft_cross_entropy(targets_QP, scaled_QP)
             for head, scaled_QP in local.items()}
    weighted = [(lambdas[head], terms[f"kd_{head}_loss"]) for head in local]
    terms["kd_loss"] = _weighted_sum(weighted) / _divisor(cfg.kd_divisor, len(weighted))
    return terms


def _dense_terms(scaled_QP: Tensor | None, dense_global: GlobalDense | None,
                 dense_dims: Mapping[int, DenseAtDim] | None, num_q: int | None, group_size: int,
                 targets_QG: Tensor | None, cfg: LossConfig, penalty_QP: Tensor | None) -> dict[str, Tensor]:
    """dense_loss: the full width's InfoNCE, or with Matryoshka dims the weighted sum of each width's."""
    if not cfg.matryoshka_dims:
        return {"dense_loss": _dense_infonce(scaled_QP, dense_global, num_q, group_size, targets_QG, cfg)}
    terms = {}
    for dim, view in ((dim, dense_dims[dim]) for dim in cfg.matryoshka_dims):
        scaled = None if view.scores_QP is None else _scaled(view.scores_QP, penalty_QP, cfg)
        terms[f"dense_{dim}_loss"] = _dense_infonce(scaled, view.dense_global, num_q, group_size, targets_QG, cfg)
    terms["dense_loss"] = _weighted_sum([(weight, terms[f"dense_{dim}_loss"])
                                         for dim, weight in cfg.matryoshka.items()])
    return terms


def _dense_infonce(scaled_QP: Tensor | None, dense_global: GlobalDense | None, num_q: int | None,
                   group_size: int, targets_QG: Tensor | None, cfg: LossConfig) -> Tensor:
    if dense_global is not None:
        return _global_dense_loss(dense_global, num_q, group_size, targets_QG, cfg)
    return grouped_infonce(scaled_QP, group_size, targets_QG, cfg.kd_loss_type)


def _global_dense_loss(dense_global: GlobalDense, num_q: int | None, group_size: int,
                       targets_QG: Tensor | None, cfg: LossConfig) -> Tensor:
    """Dense InfoNCE over all ranks (the reference's _compute_cross_device_neg_loss)."""
    if dense_global.local_rows:
        scaled_QS, offset = _widen(dense_global.scores_QS) / cfg.temperature, dense_global.row_offset
        loss = infonce(scaled_QS, group_size, offset)
        if targets_QG is not None:
            loss = loss + soft_cross_entropy(targets_QG, own_group(scaled_QS, group_size, offset))
        return dense_global.row_weight * loss
    scaled_RS = _widen(dense_global.scores_RS) / cfg.temperature
    if targets_QG is None:
        return infonce(scaled_RS, group_size)
    if cfg.kd_loss_type == "m3_kd_loss":
        # The reference gathers every rank's teacher targets and distils over all R rows.
        targets_RG = _teacher_targets(dense_global.teacher_scores_RG)
        return m3_kd_loss(targets_RG, scaled_RS, group_size)
    rows = slice(dense_global.row_offset, dense_global.row_offset + num_q)
    student_QG = own_group(scaled_RS, group_size)[rows]
    return soft_cross_entropy(targets_QG, student_QG) + infonce(scaled_RS, group_size)


def _local_blocks(head_scores: HeadScores, dense_global: GlobalDense | None, num_q: int | None,
                  group_size: int) -> dict[str, Tensor]:
    """Each active head's local (Q, P) matrix; the dense one is cut out of the global one if absent."""
    blocks = {head: getattr(head_scores, head) for head in HEADS
              if getattr(head_scores, head) is not None}
    if dense_global is not None and "dense" not in blocks and num_q is not None and not dense_global.local_rows:
        row, col = dense_global.row_offset, dense_global.row_offset * group_size
        blocks["dense"] = dense_global.scores_RS[row:row + num_q, col:col + num_q * group_size]
    return {head: blocks[head] for head in HEADS if head in blocks}


def _scaled(score_QP: Tensor, penalty_QP: Tensor | None, cfg: LossConfig) -> Tensor:
    """Raw scores with the exclusions' penalty, in float32 at least, divided by the temperature."""
    widened_QP = _widen(score_QP)
    return (widened_QP if penalty_QP is None else widened_QP + penalty_QP.to(widened_QP.dtype)) / cfg.temperature


def _teacher_targets(teacher_scores_QG: Tensor) -> Tensor:
    """softmax over the group of the reranker's raw scores; never differentiated."""
    return torch.softmax(_widen(teacher_scores_QG.detach()), dim=-1)


def _widen(score_QP: Tensor) -> Tensor:
    """Half-precision scores go to float32: the matrices are small and a bf16 softmax of /0.02 scores
    is coarse (the reference computes in the model's dtype)."""
    narrow = not score_QP.is_floating_point() or score_QP.dtype in (torch.float16, torch.bfloat16)
    return score_QP.float() if narrow else score_QP


def _divisor(configured: float | None, num_terms: int) -> float:
    """The configured divisor, or the number of terms when it is None (the reference's averaging)."""
    return num_terms if configured is None else configured


def _weighted_sum(weighted: list[tuple[float, Tensor]]) -> Tensor:
    return sum((weight * term for weight, term in weighted[1:]), weighted[0][0] * weighted[0][1])


def _as_head_scores(scores: HeadScores | Mapping[str, Tensor | None]) -> HeadScores:
    if isinstance(scores, HeadScores):
        return scores
    if not isinstance(scores, Mapping):
        raise ValueError(f"m3_loss: scores must be a HeadScores or a dict with keys {HEADS}, "
                         f"got {type(scores).__name__}.")
    unknown = sorted(set(scores) - set(HEADS))
    if unknown:
        raise ValueError(f"m3_loss: unknown score key(s) {unknown}; use {HEADS}.")
    return HeadScores(**scores)


def _check_inputs(head_scores: HeadScores, group_size: int, cfg: LossConfig,
                  teacher_scores_QG: Tensor | None, dense_global: GlobalDense | None) -> int | None:
    """Raise ValueError on inconsistent inputs; return Q (None only for dense-only global runs)."""
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"m3_loss: group_size={group_size!r} must be an int >= 1 "
                         "(1 positive + G-1 negatives per query).")
    num_q = _check_local_scores(head_scores, group_size, cfg, dense_global)
    if teacher_scores_QG is not None:
        num_q = _check_teacher(teacher_scores_QG, num_q, group_size, "teacher_scores_QG")
    if dense_global is not None:
        _check_global(dense_global, num_q, group_size, cfg, teacher_scores_QG is not None)
    return num_q


def _check_penalty(penalty_QP: Tensor | None, num_q: int | None, group_size: int) -> None:
    if penalty_QP is None:
        return
    expected = None if num_q is None else (num_q, num_q * group_size)
    if penalty_QP.dim() != 2 or (expected is not None and tuple(penalty_QP.shape) != expected):
        raise ValueError(f"m3_loss: penalty_QP has shape {tuple(penalty_QP.shape)}; it must match the local score "
                         f"matrices {expected} (framework/loss/masks.py builds it from the batch).")


def _check_local_scores(head_scores: HeadScores, group_size: int, cfg: LossConfig,
                        dense_global: GlobalDense | None) -> int | None:
    num_q = None
    for field in fields(HeadScores):
        head, score_QP = field.name, getattr(head_scores, field.name)
        is_on = getattr(cfg, f"use_{head}")
        if score_QP is None:
            if is_on and not (head == "dense" and dense_global is not None):
                raise ValueError(f"m3_loss: cfg.use_{head} is True but scores.{head} is None; "
                                 f"pass its (Q, Q*G) scores or set use_{head}=False.")
            continue
        if not is_on:
            raise ValueError(f"m3_loss: scores.{head} was given but cfg.use_{head} is False; "
                             f"pass None or set use_{head}=True.")
        num_q = _check_matrix(score_QP, group_size, f"scores.{head}", num_q)
    return num_q


def _check_matrix(score_QP: Tensor, group_size: int, name: str, num_q: int | None) -> int:
    if score_QP.dim() != 2 or score_QP.shape[0] == 0:
        raise ValueError(f"m3_loss: {name} has shape {tuple(score_QP.shape)}; "
                         "it must be (Q, Q*G) with Q >= 1.")
    rows, cols = score_QP.shape
    if cols != rows * group_size:
        raise ValueError(f"m3_loss: {name} has shape {tuple(score_QP.shape)} but group_size={group_size} "
                         f"needs {rows * group_size} columns (G passages per query, positive first).")
    if num_q is not None and rows != num_q:
        raise ValueError(f"m3_loss: {name} has {rows} queries but another head has {num_q}; "
                         "all heads must score the same batch.")
    return rows


def _check_teacher(teacher_QG: Tensor, num_q: int | None, group_size: int, name: str) -> int:
    rows = num_q if num_q is not None else (teacher_QG.shape[0] if teacher_QG.dim() else 0)
    expected = (rows, group_size)
    if teacher_QG.dim() != 2 or tuple(teacher_QG.shape) != expected or rows == 0:
        raise ValueError(f"m3_loss: {name} has shape {tuple(teacher_QG.shape)}; it must be (Q, G) = "
                         f"{expected} (one reranker score per passage of the query's group, Q >= 1).")
    return expected[0]


def _check_global(dense_global: GlobalDense, num_q: int | None, group_size: int, cfg: LossConfig,
                  has_teacher: bool) -> None:
    if not cfg.use_dense:
        raise ValueError("m3_loss: dense_global was given but cfg.use_dense is False; "
                         "pass None or set use_dense=True.")
    if dense_global.local_rows:
        _check_local_rows(dense_global, num_q, group_size, cfg, has_teacher)
        return
    num_r = _check_matrix(dense_global.scores_RS, group_size, "dense_global.scores_RS", None)
    if num_q is not None and not 0 <= dense_global.row_offset <= num_r - num_q:
        raise ValueError(f"m3_loss: dense_global.row_offset={dense_global.row_offset} does not fit {num_q} "
                         f"local queries in {num_r} global rows; pass this rank's first global row.")
    if has_teacher and cfg.kd_loss_type == "m3_kd_loss":
        if dense_global.teacher_scores_RG is None:
            raise ValueError("m3_loss: kd_loss_type 'm3_kd_loss' with dense_global needs "
                             "dense_global.teacher_scores_RG (all ranks' teacher scores, gathered).")
        _check_teacher(dense_global.teacher_scores_RG, num_r, group_size,
                       "dense_global.teacher_scores_RG")


def _check_dense_dims(dense_dims: Mapping[int, DenseAtDim] | None, num_q: int | None, group_size: int,
                      cfg: LossConfig, has_teacher: bool) -> None:
    if not cfg.matryoshka_dims:
        if dense_dims:
            raise ValueError("m3_loss: dense_dims was given but cfg.matryoshka_dims is empty; pass None or set "
                             "loss.matryoshka_dims.")
        return
    missing = sorted(set(cfg.matryoshka_dims) - set(dense_dims or {}))
    if missing:
        raise ValueError(f"m3_loss: cfg.matryoshka_dims={list(cfg.matryoshka_dims)} but dense_dims lacks {missing}; "
                         "pass the scores of every prefix width (framework.train.objective builds them).")
    for dim in cfg.matryoshka_dims:
        view = dense_dims[dim]
        if view.dense_global is not None:
            _check_global(view.dense_global, num_q, group_size, cfg, has_teacher)
        elif view.scores_QP is None:
            raise ValueError(f"m3_loss: dense_dims[{dim}] holds no scores; give scores_QP or dense_global.")
        else:
            _check_matrix(view.scores_QP, group_size, f"dense_dims[{dim}].scores_QP", num_q)


def _check_local_rows(dense_global: GlobalDense, num_q: int | None, group_size: int, cfg: LossConfig,
                      has_teacher: bool) -> None:
    scores = dense_global.scores_QS
    if scores.dim() != 2 or (num_q is not None and scores.shape[0] != num_q):
        raise ValueError(f"m3_loss: dense_global.scores_QS has shape {tuple(scores.shape)}; it must be this "
                         f"rank's {num_q} queries x all ranks' passages.")
    if (dense_global.row_offset + scores.shape[0]) * group_size > scores.shape[1]:
        raise ValueError(f"m3_loss: row_offset={dense_global.row_offset} puts this rank's positives beyond the "
                         f"{scores.shape[1]} gathered passages; pass this rank's first global query index.")
    if has_teacher and cfg.kd_loss_type == "m3_kd_loss":
        raise ValueError("m3_loss: kd_loss_type 'm3_kd_loss' distils over all ranks' rows; use gather "
                         "scores 'all_rows' (stages.<name>.gather.scores=all_rows) or kd_loss_type 'kl_div'.")
