"""One curriculum stage: build the kind's task, the engine and the stream, run the steps, checkpoint, export.

The stage kind (framework/train/tasks/) brings the objective, the stream and the export; this module
knows nothing kind-specific. Each optimizer step: the micro-batches of the step (drawn one step ahead,
framework/train/steps.py), forward and backward of each through the DeepSpeed engine, one agreement
across ranks (finite losses, and whether the next step holds an empty micro-batch), then the update, or
the update withheld on every rank when the step must be skipped. With `evaluate.every_steps`, the live
weights are evaluated after those steps (framework/train/evaluation.py), before the step's checkpoint,
and patience may end the stage early there.

Shape legend (docs/shapes.md): A micro-batches per optimizer step (accumulation).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from framework.config import flatten, to_dict
from framework.data.batch import TrainBatch
from framework.data.manifest import load_manifest
from framework.data.stream import ResumableLoader, StreamConfig
from framework.parallel import is_main, rank, world_size
from framework.tracking import NullTracker
from framework.train.batching import BatchPlan, plan_batches, samples_per_bucket
from framework.train.checkpoint import Checkpoints, ResumePoint
from framework.train.config import RunConfig
from framework.train.engine import (UpdateGate, build_engine, freeze, logged_lrs, resolve_ds_config, resolve_precision,
                                    size_buckets)
from framework.train.evaluation import TrainingEvaluation
from framework.train.meter import Meter, Window, loss_lines, progress_line
from framework.train.objective import ObjectiveOutput
from framework.train.preemption import Preempted, PreemptionWatch
from framework.train.reshape import world_change
from framework.train.steps import PlannedStep, StepCounters, StepFeed, Verdict
from framework.train.tasks import StageTask, task_class

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf and the stage is configured to stop."""


@dataclass(frozen=True)
class StageEngine:
    """A stage's kind, built and wrapped by DeepSpeed (what build_stage_engine returns)."""

    task: StageTask
    """The stage kind's task: objective, tokenizer, stream, forward, export."""
    frozen: list[str]
    """Names of the parameters stages[i].freeze froze."""
    precision: str
    """'bf16' or 'fp32' (engine.precision resolved)."""
    ds_config: dict
    """The DeepSpeed config the engine was built with."""
    engine: Any
    """The DeepSpeed engine around task.objective."""
    updates: UpdateGate
    """The gate that can withhold an optimizer update."""
    scheduler: torch.optim.lr_scheduler.LRScheduler
    """The learning-rate schedule."""
    zero_stage: int
    """ZeRO stage in effect."""


def build_stage_engine(run: RunConfig, index: int, start_dir: Path, plan: BatchPlan,
                       load_universal: bool = False) -> StageEngine:
    """Stage `index`'s task from `start_dir`, its frozen parameters and its DeepSpeed engine at `plan`: what
    the trainer trains and the batch-size probe (framework/train/probe.py) measures. `load_universal`: the
    engine will load a ZeRO 1-3 checkpoint of another world size (from its universal copy)."""
    stage = run.stages[index]
    # Fresh parameters (heads of a plain HF start, a decoder) come from the run seed, alike on every rank.
    torch.manual_seed(run.seed + index)
    task = task_class(stage.kind)(run, stage, start_dir)
    frozen = freeze(task.objective, stage.freeze)
    precision = resolve_precision(run.engine.precision)
    trainable = sum(p.numel() for p in task.objective.parameters() if p.requires_grad)
    ds_config = size_buckets(resolve_ds_config(run.engine, plan, stage.optim, precision), trainable)
    if load_universal and ds_config["zero_optimization"].get("stage", 0) > 0:
        ds_config.setdefault("checkpoint", {})["load_universal"] = True
    engine, updates, scheduler = build_engine(task.objective, stage.optim, plan, ds_config)
    zero_stage = ds_config["zero_optimization"].get("stage", 0)
    task.after_engine(zero_stage)
    return StageEngine(task=task, frozen=frozen, precision=precision, ds_config=ds_config, engine=engine,
                       updates=updates, scheduler=scheduler, zero_stage=zero_stage)


def forward_backward(task: StageTask, engine, batches: list[TrainBatch], first_micro: int) -> list[ObjectiveOutput]:
    """The micro-batches of one optimizer step through forward and backward (`first_micro`: the stage's
    micro-batch index of the first). engine.step() runs after every one but the last (DeepSpeed only counts
    the micro-step there); the caller runs the boundary step once it knows whether the update applies."""
    outputs, num = [], len(batches)
    for k, batch in enumerate(batches):
        out = task.forward(engine, batch.to(engine.device), first_micro + k)
        engine.backward(out.terms["loss"])
        if k < num - 1:
            engine.step()  # not the accumulation boundary: DeepSpeed only counts the micro-step
        outputs.append(ObjectiveOutput({n: t.detach() for n, t in out.terms.items()}, out.report))
    return outputs


class StageRun:
    """Everything one stage needs, built on construction; `run()` trains it to the end and returns the
    export directory."""

    def __init__(self, run: RunConfig, index: int, start_dir: Path, tracker: NullTracker,
                 checkpoints: Checkpoints, resume: ResumePoint | None, preemption: PreemptionWatch | None = None):
        self.run_cfg, self.index, self.stage = run, index, run.stages[index]
        self.start_dir, self.tracker, self.checkpoints, self.resume = start_dir, tracker, checkpoints, resume
        self.preemption = preemption
        self.last_checkpoint: Path | None = resume.path if resume else None
        self.train_seconds = 0.0
        stage = self.stage
        manifest = load_manifest(stage.data.manifest)
        self.plan = plan_batches(stage, world_size(), manifest.length_edges,
                                 samples_per_bucket(manifest, stage.data.sources))
        # Another world size than the checkpoint's: ZeRO's partitioned states load from a universal copy
        # (reshape.py); ZeRO 0's whole states load as they are.
        self.world_change = world_change(resume.path if resume else None, world_size())
        built = build_stage_engine(run, index, start_dir, self.plan, load_universal=self.world_change is not None)
        self.task, self.frozen, self.precision, self.ds_config = built.task, built.frozen, built.precision, \
            built.ds_config
        self.engine, self.updates, self.scheduler, self.zero_stage = built.engine, built.updates, \
            built.scheduler, built.zero_stage
        self.feed = StepFeed(self._loader(), self.plan.accumulation, self.plan.steps)
        self.counters = StepCounters()
        self.evaluation = (TrainingEvaluation(stage, self.task, self.engine.device, tracker, checkpoints.exports)
                           if stage.evaluate.every_steps else None)

    def _loader(self) -> ResumableLoader:
        data = self.stage.data
        # The stream reads the stage's data section as it is; only the values derived for this run are added.
        cfg = StreamConfig(data, batch_sizes=self.plan.micro_per_rank, seed=self.run_cfg.seed + 1000 * self.index)
        # DataLoader draws a base seed when an iterator starts; from its own generator it leaves the global
        # RNG (dropout) alone, so a resumed run's dropout draws match the uninterrupted run's.
        return ResumableLoader(lambda state: self.task.stream(data.manifest, cfg, rank(), world_size(), state),
                               generator=torch.Generator().manual_seed(cfg.seed))

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> Path:
        client = None
        if self.resume is not None:
            change = self.world_change
            client = self.checkpoints.load(self.engine, self.resume, change, (self.run_cfg.seed, self.index,
                                                                              self.resume.tag))
            self.counters.load_state_dict(client.get("steps", client))  # (older checkpoints: top-level step)
            # A data position saved before it named its layout was counted by the checkpoint's ranks.
            data = {"world_size": change.saved if change else world_size(), **client["data"]}
            self.feed.load_state_dict(data)
            log.info("resumed stage %s at step %d from %s%s", self.stage.name, self.counters.step, self.resume.path,
                     f" (written by {change.saved} ranks, continued on {change.current}: the epoch's rest re-split)"
                     if change else "")
        if self.evaluation is not None:
            self.evaluation.start(client.get("evaluation") if client else None, self.counters.step)
        self._start_tracking()
        self.engine.train()  # from_pretrained leaves modules in eval mode: dropout must be on for training
        started = time.monotonic()
        self._train()
        self.train_seconds = time.monotonic() - started
        self.save_checkpoint()
        export = self.task.export(self.checkpoints.export_dir(self.stage.name))
        self.tracker.log_artifact(export, "model")
        if self.evaluation is not None:
            self.evaluation.finish()
        return export

    def close(self) -> None:
        """Release the engine once the stage has exported. DeepSpeed keeps an engine (weights, optimizer
        state, ZeRO buffers, hooks) reachable until destroy(): without this every finished stage's engine
        stayed resident to the end of the run, beside the next stage's and the stage-end evaluation
        (bench/memory_per_rank.py's curriculum mode counts them)."""
        if self.engine is not None:
            self.engine.destroy()
        self.engine = self.updates = self.scheduler = self.feed = self.task = None

    def next_start(self, export: Path) -> Path:
        """The directory the next stage starts from: `export` (the last weights) or the best evaluation's."""
        return export if self.evaluation is None else self.evaluation.next_start(export)

    def summary(self) -> dict:
        """What the stage's done marker records besides its export: this attempt's seconds in the training
        loop (steps, evaluations, checkpoints) and the evaluations during training."""
        return {"train_s": round(self.train_seconds, 1), **(self.evaluation.summary() if self.evaluation else {})}

    def _train(self) -> None:
        meter, every, counters = Meter(), self.run_cfg.tracking.log_every, self.counters
        start, start_step = time.monotonic(), counters.step
        logged, planned = counters.step, self.feed.first(counters.step)
        while counters.step < self.plan.steps and not (self.evaluation and self.evaluation.stopped):
            planned = self._optimizer_step(planned, meter)
            stop, spent = self._evaluate(counters.step)
            start += spent  # progress lines and throughput count training time only
            meter.exclude(spent)
            if counters.step % every == 0 or counters.step == self.plan.steps or stop:
                self._log(meter.collect(), logged, time.monotonic() - start, counters.step - start_step)
                logged = counters.step
            if stop:
                return  # run() ends the stage as at its last step: checkpoint, export
            every_ckpt = self.run_cfg.checkpoint.every_steps
            if self.preemption is not None and self.preemption.requested():
                self.save_checkpoint()
                raise Preempted(f"stage {self.stage.name} stopped at step {counters.step}; checkpoint "
                                f"{self.last_checkpoint}")
            if every_ckpt and counters.step % every_ckpt == 0 and counters.step < self.plan.steps:
                self.save_checkpoint()

    def _evaluate(self, step: int) -> tuple[bool, float]:
        """The evaluation due after `step`, if any: (stop the stage, seconds it took)."""
        if self.evaluation is None or not self.evaluation.due(step):
            return False, 0.0
        start = time.monotonic()
        decision = self.evaluation.run(step)
        return decision.stop, time.monotonic() - start

    def _optimizer_step(self, planned: PlannedStep, meter: Meter) -> PlannedStep | None:
        """Optimizer step counters.step + 1 on every rank; returns the next step, agreed on."""
        step = self.counters.step + 1
        if planned.runnable:
            outputs = self._forward_backward(planned.batches, step)
            verdict = self.feed.settle(step, torch.stack([torch.isfinite(o.terms["loss"]).all() for o in outputs]))
            reason = self._update(planned.batches, verdict, step)
        else:
            verdict, reason = self.feed.settle(step, None), "empty"
            self.scheduler.step()  # no engine step ran: the schedule follows the trainer's step count
        if reason is None:
            for batch, out in zip(planned.batches, outputs):
                meter.add(batch, out.terms, out.report)
        else:
            self.counters.skipped[reason] += 1
            meter.skip(planned.batches, reason)
        self.counters.step = step
        return verdict.next_step

    def _forward_backward(self, batches: list[TrainBatch], step: int) -> list[ObjectiveOutput]:
        """Every micro-batch of the step through forward and backward; the update waits for the verdict."""
        return forward_backward(self.task, self.engine, batches, self._micro(step, 0))

    def _update(self, batches: list[TrainBatch], verdict: Verdict, step: int) -> str | None:
        """The boundary engine.step(), its update withheld on a non-finite step; returns why the update
        was skipped (None: applied)."""
        if verdict.nonfinite:
            where = self._where(step, verdict.nonfinite[0], batches[verdict.nonfinite[0]])
            if self.stage.on_nonfinite == "stop":
                last = self.last_checkpoint or "none yet (the stage starts over)"
                raise NonFiniteLoss(f"non-finite loss at {where}. Last good checkpoint: {last}. Lower the "
                                    f"learning rate or set stages.{self.stage.name}.on_nonfinite=skip, then resume.")
            if is_main():
                log.warning("non-finite loss at %s: optimizer step skipped on every rank", where)
        with self.updates.withheld(bool(verdict.nonfinite)):
            self.engine.step()
        if not self.engine.was_step_applied():
            # DeepSpeed met non-finite gradients and skipped the update and the schedule's step itself.
            self.scheduler.step()
            return "nonfinite" if verdict.nonfinite else "overflow"
        return "nonfinite" if verdict.nonfinite else None

    def _micro(self, step: int, k: int) -> int:
        """Micro-batch index within the stage (the objectives' `step`: self-distillation start, mask seeds)."""
        return (step - 1) * self.plan.accumulation + k

    def _where(self, step: int, k: int, batch: TrainBatch) -> str:
        return (f"stage {self.stage.name}, optimizer step {step}, micro-batch {self._micro(step, k)} (bucket "
                f"{batch.bucket}, this rank's first sample {batch.keys[0] if batch.keys else '?'})")

    # ---- side effects -------------------------------------------------------------------------
    def _log(self, window: Window, since: int, elapsed_s: float, steps_here: int) -> None:
        step, metrics = self.counters.step, window.metrics
        metrics.update(logged_lrs(self.stage.optim, self.scheduler))
        norm = self.engine.get_global_grad_norm()
        if norm is not None:
            metrics["grad_norm"] = float(norm)
        self.tracker.log_metrics(metrics, step)
        if is_main():
            lines = [progress_line(self.stage.name, step, self.plan.steps, metrics, elapsed_s, steps_here),
                     *loss_lines(self.stage.name, step, since, window),
                     *(f"[{self.stage.name}] steps {since + 1}-{step}: {text}"
                       for text in self.task.warnings(metrics))]
            print("\n".join(lines), flush=True)

    def save_checkpoint(self) -> None:
        step = self.counters.step
        client = {"stage": self.stage.name, "stage_index": self.index, "steps": self.counters.state_dict(),
                  "data": self.feed.state_dict(),
                  # The layout, also in COMPLETE, where preflight reads it without loading any state.
                  "progress": {"step": step, "of": self.plan.steps, "world_size": world_size(),
                               "num_workers": max(self.stage.data.num_workers, 1)}}
        if self.evaluation is not None:
            client["evaluation"] = self.evaluation.state_dict()
        self.last_checkpoint = self.checkpoints.save(self.engine, self.stage.name, f"step{step:08d}", client)
        if self.evaluation is not None:
            self.evaluation.checkpointed(step)

    def _start_tracking(self) -> None:
        stage = self.stage
        params = flatten(to_dict(stage))
        params.update({"derived.micro_per_rank": json.dumps(self.plan.micro_per_rank),
                       "derived.global_batch": self.plan.global_batch, "derived.steps": self.plan.steps,
                       "derived.precision": self.precision, "derived.frozen_parameters": len(self.frozen),
                       "derived.start_dir": str(self.start_dir)})
        self.tracker.start_stage(stage.name, params, {"stage": stage.name, "kind": stage.kind,
                                                      "world_size": str(world_size()),
                                                      "zero_stage": str(self.zero_stage)})
        ds_path = self.checkpoints.stage_dir(stage.name) / "deepspeed_config.json"
        if is_main():
            ds_path.parent.mkdir(parents=True, exist_ok=True)
            ds_path.write_text(json.dumps(self.ds_config, indent=2))
            self.tracker.log_artifact(ds_path, "config")
