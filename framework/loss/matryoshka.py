"""Matryoshka dense vectors: the first d dims of the dense embedding, renormalised, as a d-dim embedding.

Training (loss.matryoshka_dims) gives each listed prefix width its own dense InfoNCE, so that a
prefix keeps most of the full vector's quality; inference truncates (M3Embedder.encode(dense_dim=d),
evaluate --dense-dim d). The export stays a plain BGE-M3 model: the prefix is taken at the output.

Shape legend (docs/shapes.md): B texts, D dense width; d (lower case) the prefix width.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def dense_prefix(dense_BD: torch.Tensor, dim: int, normalize: bool = True) -> torch.Tensor:
    """dense_BD[:, :dim], L2-normalised again when the model normalises its dense output."""
    prefix_Bd = dense_BD[:, :dim]
    return F.normalize(prefix_Bd, dim=-1) if normalize else prefix_Bd


def dense_prefix_numpy(dense_BD: np.ndarray, dim: int, normalize: bool = True) -> np.ndarray:
    """dense_prefix for encode()'s numpy output."""
    prefix_Bd = np.ascontiguousarray(dense_BD[:, :dim])
    if not normalize:
        return prefix_Bd
    norms_B1 = np.linalg.norm(prefix_Bd, axis=1, keepdims=True)
    return prefix_Bd / np.maximum(norms_B1, 1e-12)


def check_prefix_dim(dim: int, width: int, field: str) -> None:
    """ValueError naming `field` unless 1 <= dim <= width."""
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= width:
        raise ValueError(f"{field}={dim!r}: the dense vectors have {width} dims; use a width in 1..{width}.")


def check_matryoshka_dims(dims: Sequence[int], width: int, field: str = "loss.matryoshka_dims") -> None:
    """ValueError naming `field` when a dim exceeds or does not divide the model's dense width."""
    bad = [d for d in dims if d > width or width % d]
    if bad:
        divisors = [d for d in (width // 2 ** k for k in range(8)) if d >= 1 and width % d == 0]
        raise ValueError(f"{field}={list(dims)}: {bad} do not divide the model's dense width {width} (or exceed "
                         f"it); use divisors of {width}, e.g. {sorted(set(divisors), reverse=True)[:4]}.")
