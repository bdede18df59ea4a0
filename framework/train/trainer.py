"""The curriculum: stages in order, each from the previous one's exported weights, resumable.

On start rank 0 takes the output directory's lock (framework/train/lock.py: one run per directory), then
the run directory decides where to begin: finished stages (exports/<stage>.done.json) are skipped, the
stage of the latest complete checkpoint continues from it, anything else starts fresh. Before the first
step every remaining stage is checked (framework/train/preflight.py), and the attempt's config is kept
(framework/train/attempts.py).
"""
from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

from framework.config import flatten, to_dict
from framework.parallel import barrier, broadcast_object, is_main, world_size
from framework.tracking import NullTracker
from framework.train.attempts import record_attempt
from framework.train.checkpoint import Checkpoints, ResumePoint
from framework.train.config import RunConfig
from framework.train.export import write_model_card
from framework.train.lock import hold_run_lock
from framework.train.model_card import ModelCard
from framework.train.preemption import Preempted
from framework.train.preflight import PreflightError, check_run
from framework.train.stage import StageRun

log = logging.getLogger(__name__)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


class Trainer:
    """Runs a RunConfig's stages; `evaluate` (framework/train/evaluation.py) runs at stage ends that name a
    benchmark."""

    def __init__(self, cfg: RunConfig, tracker: NullTracker, evaluate=None, preemption=None):
        self.cfg, self.tracker, self.evaluate, self.preemption = cfg, tracker, evaluate, preemption
        self.output_dir = Path(cfg.output_dir)
        self.checkpoints = Checkpoints(self.output_dir, cfg.checkpoint.keep_last)

    def resume_point(self) -> ResumePoint | None:
        """Where to continue, agreed by all ranks (rank 0 reads the directory; its error reaches all)."""
        point, error, used = None, None, False
        if is_main():
            used = (self.output_dir / "checkpoints").exists()
            try:
                point = self.checkpoints.latest()
            except ValueError as err:
                error = str(err)
        point, error, used = broadcast_object((point, error, used))
        if error is not None:
            raise ValueError(error)
        policy = self.cfg.checkpoint.resume
        if policy == "never" and used:
            raise ValueError(f"{self.output_dir} already holds checkpoints and checkpoint.resume=never; "
                             "choose a new output_dir or set checkpoint.resume=auto")
        if policy == "must" and point is None:
            raise ValueError(f"--resume: {self.output_dir} holds no complete checkpoint to resume from")
        return point

    def preflight(self, point: ResumePoint | None) -> None:
        """Every remaining stage's inputs and the resume's changes, checked by rank 0 before any step."""
        error = None
        if is_main():
            done = {s.name: d for s in self.cfg.stages if (d := self.checkpoints.stage_done(s.name)) is not None}
            try:
                check_run(self.cfg, done, point, world_size())
            except PreflightError as err:
                error = str(err)
        error = broadcast_object(error)
        if error is not None:
            raise PreflightError(error)

    def save_config(self) -> Path:
        """config.yaml (this attempt) and config-attempt-N.yaml (kept for every attempt)."""
        if is_main():
            attempt = record_attempt(self.output_dir, self.cfg)
            log.info("config of this attempt: %s", attempt)
        barrier()
        return self.output_dir / "config.yaml"

    def train(self) -> Path:
        """All stages; returns the last stage's export directory."""
        with hold_run_lock(self.output_dir):
            return self._train()

    def _train(self) -> Path:
        point = self.resume_point()
        self.preflight(point)
        config_path = self.save_config()
        self.tracker.start(self.cfg.name, flatten(to_dict(self.cfg)),
                           {"git_commit": git_commit(), "world_size": str(world_size()),
                            "output_dir": str(self.output_dir.resolve())})
        self.tracker.log_artifact(config_path, "config")
        start_dir = Path(self.cfg.model.path)
        for index, stage in enumerate(self.cfg.stages):
            done = self.checkpoints.stage_done(stage.name)
            if done is not None:
                start_dir = Path(done.get("next_start", done["export"]))
                log.info("stage %s finished earlier: %s", stage.name, start_dir)
                continue
            resume = point if point is not None and point.stage == stage.name else None
            start = time.monotonic()
            status = "FAILED"
            try:
                stage_run = StageRun(self.cfg, index, start_dir, self.tracker, self.checkpoints, resume,
                                     self.preemption)
                export = stage_run.run()
                stage_run.close()  # its engine goes before the stage-end evaluation and the next stage's engine
                if self.evaluate is not None and stage.evaluate.benchmark_name:
                    self.evaluate(stage, export, self.tracker, self.output_dir)
                write_model_card(export, ModelCard.for_stage(self.cfg, index))
                status = "FINISHED"
            except Preempted:
                status = "KILLED"
                raise
            finally:
                self.tracker.end_stage(status)
            start_dir = stage_run.next_start(export)  # evaluate.next_stage_from: the last export or the best
            self.checkpoints.mark_stage_done(stage.name, {"export": str(export), "next_start": str(start_dir),
                                                          "seconds": round(time.monotonic() - start, 1),
                                                          **stage_run.summary()})
        return start_dir
