"""The batch-size probe: the largest per-rank batch of each length bucket that one training step fits.

For every probed bucket edge (longest first) the probe runs whole optimizer steps of the stage, as the
trainer does (framework/train/stage.py: build_stage_engine, forward_backward, then the boundary
engine.step(); the stage's heads, loss and self-distillation, split-batch, gradient checkpointing, ZeRO
stage, precision and gather as configured) on synthetic worst-case batches (probe_batches.py), and
searches the batch size: doubling from the size the previous (longer) bucket fitted, then bisection.

A size fits when the step's peak allocated memory (probe_memory.py) stays within the budget less the
safety margin. An out-of-memory error counts as not fitting; the engine is then rebuilt, since DeepSpeed's
gradient buckets may hold half a backward. A size whose peak, extrapolated from the sizes measured, would
exceed what the device physically has is not run at all (it counts as not fitting, marked "extrapolated"):
the probe must not be killed by the memory it is measuring.

Every rank runs every trial at the same size (the gather and DeepSpeed's reductions are collectives) and
the ranks agree after each: a size fits only if it fits on every rank (the smallest device decides).

The probe builds the stage from model.path (a later stage starts from the previous stage's export, which
has the same shapes), writes nothing into the run's output_dir and takes no run lock.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from framework.parallel import all_gather_object, world_size
from framework.train.batching import BatchPlan
from framework.train.config import RunConfig
from framework.train.probe_batches import Shape, TokenIds, builder_for
from framework.train.probe_memory import GB, Meter
from framework.train.stage import StageEngine, build_stage_engine, forward_backward

# A size whose extrapolated peak exceeds this share of the device's physical memory is not tried.
PHYSICAL_SHARE = 0.9


class BudgetTooSmall(ValueError):
    """Not even one sample per rank fits the budget at some bucket edge."""


@dataclass(frozen=True)
class Trial:
    """One batch size tried at one bucket edge (figures agreed over ranks: the largest peak)."""

    batch: int
    """Samples (queries or documents) per rank."""
    peak_bytes: int
    """Peak allocated bytes during the step (extrapolated when `extrapolated`)."""
    fits: bool
    """Peak within the usable budget on every rank, and no out-of-memory error."""
    out_of_memory: bool = False
    """The step raised an out-of-memory error on some rank."""
    extrapolated: bool = False
    """Not run: its peak, extrapolated from smaller sizes, exceeds the device's physical memory."""

    @property
    def label(self) -> str:
        """How the progress line shows it, e.g. '16 ok 0.41', '32 no 0.93', '64 oom', '128 no ~2.1' (GB)."""
        if self.out_of_memory:
            return f"{self.batch} oom"
        return f"{self.batch} {'ok' if self.fits else 'no'} {'~' if self.extrapolated else ''}{self.peak_bytes / GB:.3g}"


@dataclass(frozen=True)
class BucketProbe:
    """The search at one bucket edge."""

    shape: Shape
    """The texts of the bucket."""
    batch: int
    """Largest per-rank batch that fits."""
    trials: tuple[Trial, ...]
    """Every size tried, in order."""
    capped: bool
    """The search stopped at max_batch (a larger size may fit)."""
    seconds: float
    """Wall time of the bucket's search."""

    step_seconds: float = 0.0
    """Wall time of an optimizer step at the chosen size (the faster of two, timed after the search)."""
    tokens: int = 0
    """Real tokens per rank in that step (queries and passages of every micro-batch)."""

    @property
    def chosen(self) -> Trial:
        return next(t for t in reversed(self.trials) if t.batch == self.batch and t.fits)

    @property
    def tokens_per_second(self) -> float:
        """Real tokens per second per rank at the chosen size."""
        return self.tokens / self.step_seconds if self.step_seconds > 0 else 0.0


class Prober:
    """A stage built once on this rank, and its steps at any bucket shape and batch size."""

    def __init__(self, run: RunConfig, index: int, meter: Meter, usable_bytes: int, seed: int = 0):
        self.run, self.index, self.stage = run, index, run.stages[index]
        self.meter, self.usable_bytes = meter, usable_bytes
        stage = self.stage
        # DeepSpeed sees a batch of 1; it uses the numbers only for its bookkeeping (batching.py).
        self.plan = BatchPlan({0: 1}, stage.accumulation, world_size(), steps=stage.steps or 1)
        # A micro-step past every start threshold (self-distillation): the step the trainer ends with.
        self.micro_step = (stage.steps or stage.samples) * stage.accumulation - 1
        self.built: StageEngine | None = None
        self._build()
        self.ids = TokenIds(self.built.task.tokenizer, seed)
        self.make_batch = builder_for(self.built.task.batch_type, stage.kind)

    def _build(self) -> None:
        """The stage's task and engine (again after an out-of-memory step: the old one is dropped first)."""
        self.close()
        self.built = build_stage_engine(self.run, self.index, Path(self.run.model.path), self.plan)
        self.built.engine.train()
        self.meter.rescan()

    def close(self) -> None:
        """Drop the engine and give its memory back. DeepSpeed's gradient hooks, held by the parameters in
        C++, keep an engine alive after its last Python reference (gc cannot see that cycle) until
        engine.destroy() removes them."""
        if self.built is not None:
            self.built.engine.destroy()
            self.built = None
        self.meter.release()
        self.meter.rescan()

    def warm_up(self, shape: Shape) -> None:
        """One step at batch 1: the first step allocates the optimizer's states and DeepSpeed's buffers,
        which every later step holds; measured steps start from there."""
        self.step(shape, 1)

    def step(self, shape: Shape, batch: int) -> Trial:
        """One optimizer step at `batch` samples per rank on every rank, its peak measured; the ranks agreed."""
        oom = False
        with self.meter.session() as peak:
            try:
                self._step(shape, batch)
            except torch.OutOfMemoryError:
                oom = True  # the traceback's frames are gone once the except clause ends
            except IndexError as err:
                raise ValueError(f"stages.{self.stage.name}: a step at {shape.passage_length} tokens failed ({err}); "
                                 "is data.passage_max_length above the model's position table?") from err
        if oom:
            self._build()
        ranks = all_gather_object((peak.bytes, oom))
        worst, any_oom = max(p for p, _ in ranks), any(o for _, o in ranks)
        return Trial(batch=batch, peak_bytes=worst, fits=not any_oom and worst <= self.usable_bytes,
                     out_of_memory=any_oom)

    def timed(self, probe: BucketProbe, repeats: int = 2) -> BucketProbe:
        """`probe` with the step time at its size, timed outside the meter (its dispatch mode slows CPU steps);
        the faster of `repeats` steps (the first at a new shape may pay for one-time set-up)."""
        seconds = []
        for _ in range(repeats):
            self.meter.synchronize()
            start = time.perf_counter()
            tokens = self._step(probe.shape, probe.batch)
            self.meter.synchronize()
            seconds.append(time.perf_counter() - start)
        self.meter.rescan()  # the unmeasured steps made (and kept) tensors the CPU meter has not seen
        slowest_rank = max(all_gather_object(min(seconds)))
        return dataclasses.replace(probe, step_seconds=slowest_rank, tokens=tokens)

    def _step(self, shape: Shape, batch: int) -> int:
        """forward_backward and the boundary engine.step(), as the trainer runs them; returns the real tokens."""
        # The batches are made here: on the device they are part of the step's memory.
        self.ids.reseed(shape, batch)
        batches = [self.make_batch(batch, shape, self.ids) for _ in range(self.stage.accumulation)]
        tokens = sum(b.num_tokens for b in batches)
        built, first = self.built, self.micro_step - self.stage.accumulation + 1
        outputs = forward_backward(built.task, built.engine, batches, first)
        built.engine.step()
        del outputs, batches
        return tokens


def search(prober: Prober, shape: Shape, start: int, max_batch: int, physical_bytes: int) -> BucketProbe:
    """The largest batch that fits at `shape`: doubling from `start` while it fits, then bisection."""
    began, trials = time.monotonic(), []

    def fits(batch: int) -> bool:
        predicted = extrapolate(trials, batch, prober.meter.live_bytes)
        if predicted is not None and predicted > PHYSICAL_SHARE * physical_bytes:
            trial = Trial(batch=batch, peak_bytes=predicted, fits=False, extrapolated=True)
        else:
            trial = prober.step(shape, batch)
        trials.append(trial)
        return trial.fits

    lo, hi, batch = 0, None, min(start, max_batch)
    while hi is None:
        if not fits(batch):
            hi = batch
        elif batch >= max_batch:
            lo = batch
            break
        else:
            lo, batch = batch, min(2 * batch, max_batch)
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    if lo == 0:
        one = next(t for t in trials if t.batch == 1)
        raise BudgetTooSmall(one_sample_message(prober, shape, one))
    return BucketProbe(shape=shape, batch=lo, trials=tuple(trials), capped=hi is None,
                       seconds=time.monotonic() - began)


def extrapolate(trials: list[Trial], batch: int, base_bytes: int) -> int | None:
    """Peak at `batch`, from the parabola through the three largest sizes measured (with the memory held
    before a step as size 0): memory grows faster than linearly in the batch (the loss's score matrices
    are queries x passages), so a straight line would let the probe try sizes that cannot fit. None before
    any measurement; a line through two points when there are only two."""
    measured = sorted({t.batch: t.peak_bytes for t in trials if not t.extrapolated and not t.out_of_memory}.items())
    if not measured:
        return None
    points = ([(0, base_bytes)] + measured)[-3:]
    if len(points) == 2:
        (b1, p1), (b2, p2) = points
        return int(p2 + (p2 - p1) / (b2 - b1) * (batch - b2))
    (b0, p0), (b1, p1), (b2, p2) = points
    # Newton's divided differences; a negative curvature (noise) falls back to the last secant.
    d01, d12 = (p1 - p0) / (b1 - b0), (p2 - p1) / (b2 - b1)
    curvature = max(0.0, (d12 - d01) / (b2 - b0))
    return int(p2 + d12 * (batch - b2) + curvature * (batch - b2) * (batch - b1))


def one_sample_message(prober: Prober, shape: Shape, one: Trial) -> str:
    where = f"stages.{prober.stage.name}"
    what = "ran out of memory" if one.out_of_memory else f"needs {one.peak_bytes / GB:.3g} GB at its peak"
    return (f"{where}: one sample per rank at bucket edge {shape.edge} (queries {shape.query_length}, passages "
            f"{shape.passage_length} tokens, group size {shape.group_size}) {what}, more than the usable "
            f"{prober.usable_bytes / GB:.3g} GB (the budget less the safety margin). Raise --memory-gb, lower "
            f"{where}.data.passage_max_length (or group_size), or save memory: {where}.split_batch.sub_batch, "
            "model.gradient_checkpointing=true, a higher ZeRO stage (engine.zero_stage)")
