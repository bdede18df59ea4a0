"""What every rank must agree on about an optimizer step, with one collective per step.

A step is `accumulation` micro-batches. Two things can make it unusable, and every rank must decide the
same, or the ranks' collectives (the gather in forward, DeepSpeed's reductions in backward) fall out of
step:

    empty      a micro-batch holds no sample on some rank (its stream ran dry: bad records, a damaged
               shard). The encoder cannot run on it, so the whole step is skipped on every rank, before
               any forward; known from the host-side batch sizes.
    nonfinite  a loss is NaN/inf on some rank. Known only after the forwards; the step's backward passes
               still run (DeepSpeed's micro-step counter and accumulation boundary stay aligned with the
               trainer's steps) and the update is withheld (framework/train/engine.py's UpdateGate), or the
               stage stops (on_nonfinite: stop), before the optimizer touches the weights.

Both go into one all-reduce per step: the finite flags of the step just run (device tensors, no sync
while the micro-batches run) and whether the *next* step holds an empty micro-batch. So the feed draws
each step's micro-batches one step ahead; its state (what a checkpoint saves) is the loader's position
before the drawn-ahead step, so a resumed run reads that step again.

Shape legend (docs/shapes.md): A micro-batches of one optimizer step.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from framework.data.batch import TrainBatch
from framework.data.stream import ResumableLoader
from framework.parallel import all_reduce_sum


@dataclass
class PlannedStep:
    """The micro-batches of one optimizer step and whether every rank can run them."""

    batches: list[TrainBatch]
    runnable: bool
    """False when some rank holds an empty micro-batch in this step (all ranks skip it)."""


@dataclass(frozen=True)
class Verdict:
    """What the ranks agreed on at the end of a step."""

    nonfinite: tuple[int, ...]
    """Micro-batches of the step (0-based) whose loss was non-finite on some rank."""
    next_step: PlannedStep | None
    """The next step, drawn and agreed on; None after the stage's last step."""


class StepFeed:
    """Draws the micro-batches of each optimizer step one step ahead and agrees on them across ranks."""

    def __init__(self, loader: ResumableLoader, accumulation: int, total_steps: int):
        self.loader, self.accumulation, self.total_steps = loader, accumulation, total_steps
        self._batches = None
        self._position = loader.state_dict()

    def state_dict(self) -> dict:
        """The loader's position before the step drawn ahead (that step is read again on resume)."""
        return dict(self._position)

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._position, self._batches = self.loader.state_dict(), None

    def first(self, step: int) -> PlannedStep | None:
        """The step after `step` optimizer steps (the stage's start or its resume point), agreed on."""
        return self.settle(step, None).next_step

    def settle(self, step: int, finite_A: torch.Tensor | None) -> Verdict:
        """End step `step` (1-based; `finite_A`: its micro-batches' finite flags, None when it did not run):
        draw step + 1 and agree on both in one all-reduce. Every rank calls it at every step."""
        upcoming = self._draw() if step < self.total_steps else None
        if upcoming is None:
            self._position = self.loader.state_dict()  # the stage's data is all consumed
        device = finite_A.device if finite_A is not None else torch.device("cpu")
        flags = torch.zeros(self.accumulation + 1, dtype=torch.float32, device=device)
        if finite_A is not None:
            flags[:-1] = (~finite_A).to(torch.float32)
        if upcoming is not None:
            flags[-1] = float(sum(b.num_samples == 0 for b in upcoming))
        *nonfinite, empty = all_reduce_sum(flags).tolist()  # the step's one host read of device values
        nonfinite_ids = tuple(i for i, n in enumerate(nonfinite) if n > 0)
        return Verdict(nonfinite_ids, None if upcoming is None else PlannedStep(upcoming, empty == 0))

    def _draw(self) -> list[TrainBatch]:
        if self._batches is None:
            self._batches = iter(self.loader)
        self._position = self.loader.state_dict()
        return [next(self._batches) for _ in range(self.accumulation)]


class StepCounters:
    """Where a stage's loop stands: optimizer steps done and those skipped, by reason."""

    def __init__(self) -> None:
        self.step = 0
        self.skipped: Counter = Counter()

    def state_dict(self) -> dict:
        return {"step": self.step, "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.skipped = Counter(state.get("skipped", {}))
