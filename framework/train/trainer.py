"""The curriculum: stages in order, each from the previous one's exported weights, resumable.

On start the run directory decides where to begin: finished stages (exports/<stage>.done.json) are
skipped, the stage of the latest complete checkpoint continues from it, anything else starts fresh.
"""
from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import yaml

from framework.config import flatten, to_dict
from framework.parallel import barrier, broadcast_object, is_main, world_size
from framework.tracking import NullTracker
from framework.train.checkpoint import Checkpoints, ResumePoint
from framework.train.config import RunConfig
from framework.train.preemption import Preempted
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
        """Where to continue, agreed by all ranks (rank 0 reads the directory)."""
        point = self.checkpoints.latest() if is_main() else None
        point = broadcast_object(point)
        used = broadcast_object(is_main() and (self.output_dir / "checkpoints").exists())
        policy = self.cfg.checkpoint.resume
        if policy == "never" and used:
            raise ValueError(f"{self.output_dir} already holds checkpoints and checkpoint.resume=never; "
                             "choose a new output_dir or set checkpoint.resume=auto")
        if policy == "must" and point is None:
            raise ValueError(f"--resume: {self.output_dir} holds no complete checkpoint to resume from")
        return point

    def save_config(self) -> Path:
        path = self.output_dir / "config.yaml"
        if is_main():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False, allow_unicode=True))
        barrier()
        return path

    def train(self) -> Path:
        """All stages; returns the last stage's export directory."""
        point = self.resume_point()
        config_path = self.save_config()
        self.tracker.start(self.cfg.name, flatten(to_dict(self.cfg)),
                           {"git_commit": git_commit(), "world_size": str(world_size()),
                            "output_dir": str(self.output_dir.resolve())})
        self.tracker.log_artifact(config_path, "config")
        start_dir = Path(self.cfg.model.path)
        for index, stage in enumerate(self.cfg.stages):
            done = self.checkpoints.stage_done(stage.name)
            if done is not None:
                log.info("stage %s finished earlier: %s", stage.name, done["export"])
                start_dir = Path(done["export"])
                continue
            resume = point if point is not None and point.stage == stage.name else None
            start = time.monotonic()
            status = "FAILED"
            try:
                export = StageRun(self.cfg, index, start_dir, self.tracker, self.checkpoints, resume,
                                  self.preemption).run()
                if self.evaluate is not None and stage.evaluate.benchmark_name:
                    self.evaluate(stage, export, self.tracker, self.output_dir)
                status = "FINISHED"
            except Preempted:
                status = "KILLED"
                raise
            finally:
                self.tracker.end_stage(status)
            self.checkpoints.mark_stage_done(stage.name, {"export": str(export),
                                                          "seconds": round(time.monotonic() - start, 1)})
            start_dir = export
        return start_dir
