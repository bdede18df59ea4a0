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

    def __post_init__(self) -> None:
        _check_positive("temperature", self.temperature)
        for name in ("ensemble_dense_weight", "ensemble_sparse_weight", "ensemble_colbert_weight",
                     "dense_lambda", "sparse_lambda", "colbert_lambda", "ensemble_lambda"):
            _check_non_negative(name, getattr(self, name))
        for name in ("loss_divisor", "kd_divisor", "final_divisor"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        if not (self.use_dense or self.use_sparse or self.use_colbert):
            raise ValueError("LossConfig: use_dense, use_sparse and use_colbert are all False; "
                             "turn at least one head on.")
        check_choices(self, "LossConfig")

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
