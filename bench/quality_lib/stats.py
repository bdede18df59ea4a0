"""Seed statistics of the quality bench: means, standard errors and per-seed paired differences.

A comparison "X - Y" pairs seed s of arm X with seed s of arm Y (the same data order and dropout draws,
see arms.py); against the zero-shot start, Y is one deterministic number for every seed. The standard
error of a mean of n values is the sample standard deviation / sqrt(n) (None for n < 2); |mean| / SE
above ~2 is a difference beyond the seed noise at this number of seeds (with 3 seeds a t-test needs
|t| > 4.3 for p < 0.05, so the table prints t for the reader to judge).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds with its standard error."""

    mean: float
    se: float | None
    values: tuple[float, ...]
    """Per-seed values, in seed order."""

    @property
    def t(self) -> float | None:
        """mean / SE (None without an SE, inf for a constant non-zero difference)."""
        if self.se is None:
            return None
        if self.se == 0:
            return math.inf if self.mean else 0.0
        return self.mean / self.se


def estimate(values: Sequence[float]) -> Estimate:
    values = tuple(float(v) for v in values)
    if not values:
        raise ValueError("no values to average: run at least one seed")
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return Estimate(statistics.fmean(values), se, values)


def paired(x: Sequence[float], y: Sequence[float] | float) -> Estimate:
    """Estimate of x_s - y_s over seeds s (y one number: the same for every seed)."""
    ys = [float(y)] * len(x) if isinstance(y, (int, float)) else list(y)
    if len(ys) != len(x):
        raise ValueError(f"paired difference of {len(x)} and {len(ys)} values: run the same seeds for both arms")
    return estimate([a - b for a, b in zip(x, ys)])


def fmt(e: Estimate, scale: float = 100.0, signed: bool = False) -> str:
    """'87.9 ± 0.4' (x100); '+1.2 ± 0.3' when signed; the SE is left out for one seed."""
    sign = "+" if signed else ""
    text = f"{e.mean * scale:{sign}.1f}"
    return text if e.se is None else f"{text} ± {e.se * scale:.1f}"
