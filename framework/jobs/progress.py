"""Progress lines every N seconds: lines done, work items (e.g. scored pairs) done, their rate, time left."""
from __future__ import annotations

import time
from collections.abc import Callable


def _print(line: str) -> None:
    print(line, flush=True)


class Progress:
    """Counts the lines and items of one run and prints a line at most every `interval` seconds.

    Items are the unit of work a rate is quoted in ("pairs" for scoring); they can be added in the
    middle of a chunk, so that a long chunk still shows progress. Rates count this run's work only,
    not lines kept from an earlier run.
    """

    def __init__(self, total_lines: int, done_lines: int = 0, item_name: str = "items", interval: float = 10.0,
                 label: str = "", write: Callable[[str], None] = _print,
                 clock: Callable[[], float] = time.monotonic):
        if interval < 0:
            raise ValueError(f"progress interval={interval}: use seconds >= 0 (0 prints after every update)")
        self.total_lines, self.done_lines, self.item_name = total_lines, done_lines, item_name
        self.interval, self.label, self.write, self.clock = interval, label, write, clock
        self.lines = self.items = 0
        self.start = self.last = clock()

    def add_items(self, num: int) -> None:
        """Items finished (may be called inside a chunk)."""
        self.items += num
        self.maybe_print()

    def add_lines(self, num: int) -> None:
        """Lines written."""
        self.lines += num
        self.maybe_print()

    def rate(self) -> float:
        """Items per second since this run started."""
        return self.items / max(self.clock() - self.start, 1e-9)

    def maybe_print(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        left_lines = self.total_lines - self.done_lines - self.lines
        left = f"~{left_lines / (self.lines / elapsed):,.0f} s left" if self.lines else "time left unknown yet"
        self.write(f"{self.label}{self.done_lines + self.lines:,}/{self.total_lines:,} lines, {self.items:,} "
                   f"{self.item_name} in {elapsed:,.0f} s, {self.rate():,.1f} {self.item_name}/s, {left}")
