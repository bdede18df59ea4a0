"""Configuration of the M3 training loss: temperature, head weights, divisors, self-distillation.

Two presets (`LossConfig.preset`):

- ``reference`` (the default): what FlagEmbedding's M3 training code does,
  ``L = (L_dense + L_ens + 0.1 L_sparse + L_colbert) / 4`` and, once ``step > self_distill_start_step``,
  ``L_final = (L + (KD_dense + 0.1 KD_sparse + KD_colbert) / 3) / 2`` with a detached teacher.
- ``paper``: the final paper's equations 2-6 (unweighted sums, ``L_final = L + L'``, the teacher is not
  detached because eq. 5 has no stop-gradient, distillation from step 0). The copy of the paper in
  shared/ prints ``/4``, ``/3`` and ``/2`` instead; that variant is one preset call away:
  ``LossConfig.preset("paper", loss_divisor=4, kd_divisor=3, final_divisor=2)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from framework.config.loading import check_choices

KdLossType = Literal["kl_div", "m3_kd_loss"]


@dataclass(frozen=True)
class HeadWeights:
    """One non-negative weight per retrieval head."""

    dense: float
    """Weight of the dense (CLS) head."""
    sparse: float
    """Weight of the sparse (lexical) head."""
    colbert: float
    """Weight of the multi-vector (ColBERT) head."""


@dataclass(frozen=True)
class LossConfig:
    """Everything the M3 loss needs; build it with `LossConfig.preset(name, **overrides)`, or in a run
    config as `loss: {preset: reference, use_sparse: false}` (the loader calls `expand_config`)."""

    temperature: float = 0.02
    """Every score matrix is divided by this before softmax (the reference's --temperature)."""
    use_dense: bool = True
    """Train the dense head (its InfoNCE and, with self-distillation, its KD term)."""
    use_sparse: bool = True
    """Train the sparse head."""
    use_colbert: bool = True
    """Train the multi-vector head."""
    ensemble_dense_weight: float = 1.0
    """w1: weight of the temperature-scaled dense scores inside the ensemble (teacher) scores."""
    ensemble_sparse_weight: float = 0.3
    """w2: weight of the sparse scores inside the ensemble scores."""
    ensemble_colbert_weight: float = 1.0
    """w3: weight of the multi-vector scores inside the ensemble scores."""
    dense_lambda: float = 1.0
    """lambda1: weight of the dense InfoNCE and of the dense KD term."""
    sparse_lambda: float = 0.1
    """lambda2: weight of the sparse InfoNCE and of the sparse KD term."""
    colbert_lambda: float = 1.0
    """lambda3: weight of the multi-vector InfoNCE and of the multi-vector KD term."""
    ensemble_lambda: float = 1.0
    """Weight of the ensemble InfoNCE inside L."""
    loss_divisor: float | None = None
    """L is divided by this; None = the number of active InfoNCE terms (4 with all heads on)."""
    kd_divisor: float | None = None
    """L' (the KD sum) is divided by this; None = the number of active KD terms (3 with all heads)."""
    final_divisor: float | None = None
    """(L + L') is divided by this when self-distillation is active; None = 2 as the reference does."""
    use_self_distill: bool = True
    """Distil every head towards softmax(ensemble scores) once past self_distill_start_step."""
    self_distill_start_step: int = -1
    """Self-distillation applies when step > this (the reference's rule; -1 = from the first step)."""
    detach_teacher: bool = True
    """Stop the gradient through the ensemble teacher (the reference detaches; eq. 5 does not)."""
    kd_loss_type: KdLossType = "kl_div"
    """How reranker teacher scores (pos_scores/neg_scores) are used: 'kl_div' or 'm3_kd_loss'."""
    flops_query_weight: float = 0.0
    """lambda_q of SPLADE's FLOPS regulariser on the queries' lexical weights, added to the total as
    flops_loss (0 = off; SPLADE v2 uses 3e-4 for queries)."""
    flops_passage_weight: float = 0.0
    """lambda_p of the FLOPS regulariser on the passages' lexical weights (0 = off; SPLADE v2: 1e-4)."""
    flops_warmup_steps: int = 0
    """T of the regulariser's quadratic warm-up, lambda_t = lambda * min(1, t/T)^2 with t the objective's
    micro-batch step (as self_distill_start_step counts); 0 = the full weight from the first step."""
    sparse_all_zero_warning: float | None = 0.1
    """Warn at a log step when more than this share of a window's queries or passages have an all-zero
    lexical vector (the sparse head collapsing); None = never warn."""
    matryoshka_dims: tuple[int, ...] = ()
    """Matryoshka dense: widths whose truncated, renormalised prefix gets its own dense InfoNCE, e.g.
    [1024, 512, 256, 128]; each must divide the dense width (list the full width to keep its term).
    () = one InfoNCE at the full width. The ensemble and self-distillation always use the full width."""
    matryoshka_weights: tuple[float, ...] = ()
    """One weight per matryoshka_dims entry; the dense term of L is their weighted sum (as MRL and
    sentence-transformers' MatryoshkaLoss). () = 1 each."""

    def __post_init__(self) -> None:
        _check_positive("temperature", self.temperature)
        for name in ("ensemble_dense_weight", "ensemble_sparse_weight", "ensemble_colbert_weight",
                     "dense_lambda", "sparse_lambda", "colbert_lambda", "ensemble_lambda"):
            _check_non_negative(name, getattr(self, name))
        for name in ("loss_divisor", "kd_divisor", "final_divisor"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        for name in ("flops_query_weight", "flops_passage_weight"):
            _check_non_negative(name, getattr(self, name))
        if self.flops_warmup_steps < 0:
            raise ValueError(f"LossConfig.flops_warmup_steps={self.flops_warmup_steps} must be >= 0; "
                             "use 0 for no warm-up.")
        if self.sparse_all_zero_warning is not None and not 0 <= self.sparse_all_zero_warning <= 1:
            raise ValueError(f"LossConfig.sparse_all_zero_warning={self.sparse_all_zero_warning} is a share; "
                             "use a value in [0, 1], or null to never warn.")
        if (self.flops_query_weight or self.flops_passage_weight) and not self.use_sparse:
            raise ValueError("LossConfig.flops_query_weight/flops_passage_weight regularise the sparse head but "
                             "use_sparse is False; turn the sparse head on or set both weights to 0.")
        self._check_matryoshka()
        if not (self.use_dense or self.use_sparse or self.use_colbert):
            raise ValueError("LossConfig: use_dense, use_sparse and use_colbert are all False; "
                             "turn at least one head on.")
        check_choices(self, "LossConfig")

    def _check_matryoshka(self) -> None:
        dims, weights = self.matryoshka_dims, self.matryoshka_weights
        if not dims:
            if weights:
                raise ValueError("LossConfig.matryoshka_weights is set but matryoshka_dims is empty; "
                                 "give the dims too, or drop the weights.")
            return
        if not self.use_dense:
            raise ValueError("LossConfig.matryoshka_dims trains dense prefixes but use_dense is False; "
                             "turn the dense head on or drop matryoshka_dims.")
        if any(not isinstance(d, int) or d < 1 for d in dims) or len(set(dims)) != len(dims):
            raise ValueError(f"LossConfig.matryoshka_dims={list(dims)} must be distinct positive widths, "
                             "e.g. [1024, 512, 256, 128].")
        if weights and len(weights) != len(dims):
            raise ValueError(f"LossConfig.matryoshka_weights has {len(weights)} entries for {len(dims)} "
                             "matryoshka_dims; give one weight per dim, or none (1 each).")
        if any(not w >= 0 for w in weights) or (weights and not sum(weights) > 0):
            raise ValueError(f"LossConfig.matryoshka_weights={list(weights)} must be >= 0 and not all 0.")

    @property
    def matryoshka(self) -> dict[int, float]:
        """dim -> weight of each Matryoshka dense term ({} when off)."""
        return dict(zip(self.matryoshka_dims, self.matryoshka_weights or (1.0,) * len(self.matryoshka_dims)))

    @property
    def flops_on(self) -> bool:
        """Whether the FLOPS regulariser adds a term."""
        return self.flops_query_weight > 0 or self.flops_passage_weight > 0

    @property
    def ensemble_weights(self) -> HeadWeights:
        """(w1, w2, w3) of the ensemble scores."""
        return HeadWeights(self.ensemble_dense_weight, self.ensemble_sparse_weight,
                           self.ensemble_colbert_weight)

    @property
    def lambdas(self) -> HeadWeights:
        """(lambda1, lambda2, lambda3) of the per-head InfoNCE and KD terms."""
        return HeadWeights(self.dense_lambda, self.sparse_lambda, self.colbert_lambda)

    @classmethod
    def expand_config(cls, raw: dict) -> dict:
        """The config loader's hook: `{preset: name, **fields}` -> the preset's fields with `fields` on top
        (no preset: 'reference'). Unknown fields are left for the loader to name."""
        raw = dict(raw)
        name = raw.pop("preset", "reference")
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; use one of {sorted(_PRESETS)}")
        return {**_PRESETS[name], **raw}

    @classmethod
    def preset(cls, name: str = "reference", **overrides) -> "LossConfig":
        """The named preset with `overrides` (field=value) applied on top.

        'reference' (default): FlagEmbedding's M3 loss, /4, /3, /2 and a detached teacher.
        'paper': the final paper's eqs. 2-6, L + L' with divisors 1 and a teacher with gradient. The
        copy of the paper in shared/ prints /4, /3 and /2; pass loss_divisor=4, kd_divisor=3,
        final_divisor=2 to get that variant.
        """
        if name not in _PRESETS:
            raise ValueError(f"LossConfig.preset: unknown preset {name!r}; use one of {sorted(_PRESETS)}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"LossConfig.preset: unknown field(s) {unknown}; "
                             f"valid fields are {sorted(known)}.")
        return cls(**{**_PRESETS[name], **overrides})


_PRESETS: dict[str, dict] = {
    "reference": {},
    "paper": dict(loss_divisor=1.0, kd_divisor=1.0, final_divisor=1.0, detach_teacher=False,
                  self_distill_start_step=-1),
}


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"LossConfig.{name}={value!r} must be > 0; set a positive value.")


def _check_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"LossConfig.{name}={value!r} must be >= 0; set it to 0 to drop the term instead.")
