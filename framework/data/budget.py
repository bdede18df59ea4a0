"""The error budget for bad records: one class for shard preparation and for the training stream.

Both read records that can be bad (malformed input lines; damaged or undecodable shard samples). A bad
record is counted by reason and skipped; only when more than `max_bad_fraction` of the records read were
bad does the reader stop, because then the data, not a stray line, is wrong. The fraction is checked
once `min_records` have been read (one early bad record of a big file must not stop it), and a final
check (shard preparation's, at the end of its input) counts every record.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


class DataError(RuntimeError):
    """Training data that cannot be used as it is (the message says what and how to fix it)."""


class ErrorBudgetExceeded(DataError, ValueError):
    """More records were bad than the budget allows."""


@dataclass(frozen=True)
class BudgetConfig:
    """How many bad records a reader tolerates."""

    max_bad_fraction: float = 0.01
    """Stop when more than this fraction of the records read were bad."""
    min_records: int = 1000
    """Records read before the fraction is checked (the final check ignores it)."""
    option: str = "max_bad_fraction"
    """The setting's name as the user writes it, for the message (e.g. --max-bad-fraction)."""
    fix: str = "Fix the input or raise the budget."
    """What the user should do: the message's last sentence."""

    def __post_init__(self) -> None:
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"{self.option}={self.max_bad_fraction}: use a fraction in [0, 1]")
        if self.min_records < 0:
            raise ValueError(f"min_records={self.min_records}: use >= 0")


class ErrorBudget:
    """Counts good and bad records (bad ones by reason, with the first examples) and enforces the budget."""

    def __init__(self, config: BudgetConfig, num_examples: int = 3):
        self.config, self.num_examples = config, num_examples
        self.num_good = 0
        self.bad: Counter = Counter()
        self.examples: list[str] = []

    @property
    def num_bad(self) -> int:
        return sum(self.bad.values())

    @property
    def num_records(self) -> int:
        return self.num_good + self.num_bad

    def good(self, count: int = 1) -> None:
        self.num_good += count

    def add_bad(self, reason: str, where: str, detail: str = "", count: int = 1) -> None:
        """`count` bad records of one reason; `where` names them (file:line, shard:key, ...)."""
        self.bad[reason] += count
        if len(self.examples) < self.num_examples:
            self.examples.append(f"{where} {reason}" + (f" ({detail})" if detail else ""))

    def check(self, final: bool = False) -> None:
        """Raise ErrorBudgetExceeded when more than the allowed fraction of the records read were bad."""
        num_bad, total, cfg = self.num_bad, self.num_records, self.config
        if num_bad <= cfg.max_bad_fraction * total or (not final and total < cfg.min_records):
            return
        reasons = ", ".join(f"{reason} {count}" for reason, count in self.bad.most_common())
        raise ErrorBudgetExceeded(
            f"{num_bad} of {total} records rejected ({num_bad / total:.1%}), more than {cfg.option} "
            f"{cfg.max_bad_fraction}: {reasons}. First: {'; '.join(self.examples)}. {cfg.fix}")
