"""One curriculum stage: build the model, engine and stream, run the steps, checkpoint, export.

Shape legend: Q queries, P passages, L tokens.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from framework.config import flatten, to_dict
from framework.data.manifest import load_manifest
from framework.data.stream import ResumableLoader, StreamConfig
from framework.parallel import all_reduce_sum, is_main, rank, world_size
from framework.tracking import NullTracker
from framework.train.batching import BatchPlan, plan_batches
from framework.train.checkpoint import Checkpoints, ResumePoint
from framework.train.config import RunConfig
from framework.train.engine import build_engine, freeze, resolve_ds_config, resolve_precision
from framework.train.meter import Meter, progress_line
from framework.train.preemption import Preempted, PreemptionWatch
from framework.train.tasks import TASKS

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf and the stage is configured to stop."""


class StageRun:
    """Everything one stage needs; `run()` trains it to the end and returns the export directory."""

    def __init__(self, run: RunConfig, index: int, start_dir: Path, tracker: NullTracker,
                 checkpoints: Checkpoints, resume: ResumePoint | None, preemption: PreemptionWatch | None = None):
        self.run_cfg, self.index, self.stage = run, index, run.stages[index]
        self.start_dir, self.tracker, self.checkpoints, self.resume = start_dir, tracker, checkpoints, resume
        self.step = self.micro_step = 0
        self.last_checkpoint: Path | None = resume.path if resume else None
        self.preemption = preemption

    # ---- construction -------------------------------------------------------------------------
    def build(self) -> None:
        stage, run = self.stage, self.run_cfg
        manifest = load_manifest(stage.data.manifest)
        self.plan: BatchPlan = plan_batches(stage, world_size(), manifest.length_edges)
        # Fresh parameters (heads of a plain HF start, a decoder) come from the run seed, alike on every rank.
        torch.manual_seed(run.seed + self.index)
        self.task = TASKS[stage.kind](run, stage, self.start_dir)
        self.objective, self.tokenizer = self.task.objective, self.task.tokenizer
        self.frozen = freeze(self.objective, stage.freeze)
        self.precision = resolve_precision(run.engine.precision)
        self.ds_config = resolve_ds_config(run.engine, self.plan, stage.optim, self.precision)
        self.engine, self.optimizer, self.scheduler = build_engine(self.objective, stage.optim, self.plan,
                                                                   self.ds_config)
        self.task.after_engine(self.ds_config["zero_optimization"].get("stage", 0))
        self.loader = self._loader()

    def _loader(self) -> ResumableLoader:
        data = self.stage.data
        cfg = StreamConfig(batch_sizes=self.plan.micro_per_rank, group_size=data.group_size,
                           seed=self.run_cfg.seed + 1000 * self.index, num_workers=data.num_workers,
                           mix_sources=data.mix_sources, source_weights=dict(data.source_weights),
                           query_max_length=data.query_max_length, passage_max_length=data.passage_max_length,
                           shuffle_window=data.shuffle_window, sources=tuple(data.sources),
                           max_bad_fraction=data.max_bad_fraction)
        stream_class = self.task.stream_class
        # DataLoader draws a base seed when an iterator starts; from its own generator it leaves the global
        # RNG (dropout) alone, so a resumed run's dropout draws match the uninterrupted run's.
        return ResumableLoader(lambda state: stream_class.from_manifest(data.manifest, cfg, self.tokenizer, rank(),
                                                                        world_size(), state),
                               generator=torch.Generator().manual_seed(cfg.seed))

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> Path:
        self.build()
        if self.resume is not None:
            client = self.checkpoints.load(self.engine, self.resume)
            self.step, self.micro_step = client["step"], client["micro_step"]
            self.loader.load_state_dict(client["data"])
            log.info("resumed stage %s at step %d from %s", self.stage.name, self.step, self.resume.path)
        self._start_tracking()
        self.engine.train()  # from_pretrained leaves modules in eval mode: dropout must be on for training
        self._train()
        self.save_checkpoint()
        export = self.task.export(self.checkpoints.export_dir(self.stage.name))
        self.tracker.log_artifact(export, "model")
        return export

    def _train(self) -> None:
        meter, batches = Meter(), iter(self.loader)
        every = self.run_cfg.tracking.log_every
        start, start_step = time.monotonic(), self.step
        while self.step < self.plan.steps:
            for _ in range(self.plan.accumulation):
                self._micro_step(next(batches), meter)
            self.step += 1
            if self.step % every == 0 or self.step == self.plan.steps:
                metrics = meter.collect()
                metrics["lr"] = self.scheduler.get_last_lr()[0]
                norm = self.engine.get_global_grad_norm()
                if norm is not None:
                    metrics["grad_norm"] = float(norm)
                self.tracker.log_metrics(metrics, self.step)
                if is_main():
                    print(progress_line(self.stage.name, self.step, self.plan.steps, metrics,
                                        time.monotonic() - start, self.step - start_step), flush=True)
            every_ckpt = self.run_cfg.checkpoint.every_steps
            if self.preemption is not None and self.preemption.requested():
                self.save_checkpoint()
                raise Preempted(f"stage {self.stage.name} stopped at step {self.step}; checkpoint "
                                f"{self.last_checkpoint}")
            if every_ckpt and self.step % every_ckpt == 0 and self.step < self.plan.steps:
                self.save_checkpoint()

    def _micro_step(self, batch, meter: Meter) -> None:
        terms = self.engine(*self.task.arguments(batch, self.engine.device, self.micro_step))
        loss = terms["loss"]
        finite = all_reduce_sum(torch.tensor([float(torch.isfinite(loss.detach()).all())]))
        if float(finite[0]) < world_size():
            self._non_finite(batch, meter)
            return
        self.engine.backward(loss)
        self.engine.step()
        self.micro_step += 1
        meter.add({k: v.detach() for k, v in terms.items()}, self.task.num_samples(batch), batch.num_tokens,
                  batch.num_padded_tokens, int(batch.stream[1]), batch.stats)

    def _non_finite(self, batch, meter: Meter) -> None:
        where = (f"stage {self.stage.name}, optimizer step {self.step + 1}, micro-batch {self.micro_step} "
                 f"(bucket {batch.stream[1]}, first sample {batch.keys[0] if batch.keys else '?'})")
        if self.stage.on_nonfinite == "skip":
            log.warning("non-finite loss at %s: micro-batch skipped", where)
            meter.skip()
            self.micro_step += 1
            return
        last = self.last_checkpoint or "none yet (the stage starts over)"
        raise NonFiniteLoss(f"non-finite loss at {where}. Last good checkpoint: {last}. Lower the learning rate "
                            f"or set stages.{self.stage.name}.on_nonfinite=skip, then resume.")

    # ---- side effects -------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        client = {"stage": self.stage.name, "stage_index": self.index, "step": self.step,
                  "micro_step": self.micro_step, "data": self.loader.state_dict(),
                  "progress": {"step": self.step, "of": self.plan.steps}}
        self.last_checkpoint = self.checkpoints.save(self.engine, self.stage.name, f"step{self.step:08d}", client)

    def _start_tracking(self) -> None:
        stage = self.stage
        params = flatten(to_dict(stage))
        params.update({"derived.micro_per_rank": json.dumps(self.plan.micro_per_rank),
                       "derived.global_batch": self.plan.global_batch, "derived.steps": self.plan.steps,
                       "derived.precision": self.precision, "derived.frozen_parameters": len(self.frozen),
                       "derived.start_dir": str(self.start_dir)})
        zero = self.ds_config["zero_optimization"].get("stage", 0)
        self.tracker.start_stage(stage.name, params, {"stage": stage.name, "kind": stage.kind,
                                                      "world_size": str(world_size()), "zero_stage": str(zero)})
        ds_path = self.checkpoints.stage_dir(stage.name) / "deepspeed_config.json"
        if is_main():
            ds_path.parent.mkdir(parents=True, exist_ok=True)
            ds_path.write_text(json.dumps(self.ds_config, indent=2))
            self.tracker.log_artifact(ds_path, "config")
