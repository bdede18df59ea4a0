"""The teacher contract: score (query, passage) pairs, one float per pair, in the order given."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Called after each forward pass with the number of pairs it finished (progress lines).
OnPairs = Callable[[int], None]


@dataclass(frozen=True)
class ScorePair:
    """One (query, passage) pair to score; both non-empty."""

    query: str
    """The query text, as the student will see it."""
    passage: str
    """The passage text."""


class Teacher(Protocol):
    """A model that scores pairs: a cross-encoder's logit, or an M3 model's hybrid score."""

    def score(self, pairs: Sequence[ScorePair], on_pairs: OnPairs | None = None) -> np.ndarray:
        """float32 (N,) scores of `pairs`, in their order (higher = more relevant).

        The result for a set of pairs depends only on that set (and the config), so that rescoring the
        same pairs gives the same bytes.
        """

    def identity(self) -> dict:
        """Every option that changes the scores (JSON): a resumed run must match it."""


def check_pairs(pairs: Sequence[ScorePair]) -> list[ScorePair]:
    pairs = list(pairs)
    for i, pair in enumerate(pairs):
        if not isinstance(pair, ScorePair):
            raise ValueError(f"pairs[{i}] is a {type(pair).__name__}; pass ScorePair(query=..., passage=...)")
        for name in ("query", "passage"):
            text = getattr(pair, name)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"pairs[{i}].{name} is empty or not a string; drop that pair (an empty text has "
                                 "no score)")
    return pairs
