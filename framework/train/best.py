"""The best evaluation of a stage and early stopping: which evaluation was best, how many since then did
not improve, and the kept export of the best weights.

    BestTracker   pure bookkeeping, the same on every rank: the evaluation history, the best score and
                  step, the evaluations without improvement, whether the stage stopped early. Its
                  `state_dict()` is checkpoint client state (next to the step counters), so a resumed
                  stage keeps the best-so-far and its patience count.
    BestExport    the files: exports/<stage>.best/ (a BGE-M3 export of the best weights, with
                  evaluation.json inside: which evaluation it is) and exports/<stage>.best.json (the
                  score and the history, for people and tools).

A kill can land between writing a new best export and the next checkpoint; the resumed stage then
continues from a checkpoint whose best is the previous one. So the previous best export is kept as
exports/<stage>.best.prev/ until a checkpoint records the new one, and `reconcile` puts back the export
that the resumed state names.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from framework.parallel import barrier, broadcast_object, is_main

if TYPE_CHECKING:
    from framework.train.config import RunConfig, StageConfig

log = logging.getLogger(__name__)
MARKER = "evaluation.json"


def check_evaluation(stage: StageConfig, run: RunConfig) -> None:
    """Config-load checks of a stage's evaluation during training that need the stage or the model."""
    cfg, where = stage.evaluate, f"stages.{stage.name}.evaluate"
    if cfg.every_steps is None:
        return
    from framework.train.tasks import task_class

    if not task_class(stage.kind).evaluates_in_training:
        raise ValueError(f"{where}.every_steps: a {stage.kind} stage has no retrieval heads to evaluate while it "
                         "trains; drop every_steps (the stage-end evaluation of its export still runs)")
    if stage.steps is not None and cfg.every_steps > stage.steps:
        raise ValueError(f"{where}.every_steps={cfg.every_steps} exceeds the stage's {stage.steps} steps: no "
                         f"evaluation would run; use at most {stage.steps}")
    if cfg.best_metric is None:
        return
    from framework.evaluate.pipeline import mode_heads

    mode, _ = cfg.best_key()
    missing = [h for h in mode_heads(mode, cfg.hybrid.weights()) if not getattr(run.model, h)]
    if missing:
        raise ValueError(f"{where}.best_metric={cfg.best_metric!r} needs the {'/'.join(missing)} head(s), which "
                         "model switches off; choose a mode of the model's heads, e.g. dense.ndcg@10")


@dataclass(frozen=True)
class Decision:
    """What one evaluation changed; every rank computes the same from the same (broadcast) scores."""

    improved: bool
    """The evaluation beat the best so far (by more than min_delta): its weights become the best export."""
    stop: bool
    """Patience ran out: the stage ends after this step."""


class BestTracker:
    """The evaluations of one stage so far, the best of them and the patience count."""

    def __init__(self, metric: str | None, patience: int | None, min_delta: float = 0.0):
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.history: list[dict] = []
        self.best_step: int | None = None
        self.best_score: float | None = None
        self.without_improvement = 0
        self.stopped_at: int | None = None

    def observe(self, step: int, score: float | None, metrics: dict[str, float], seconds: float) -> Decision:
        """Record the evaluation at `step` (its best_metric `score`, None without a best_metric, and the
        metrics it logged)."""
        self.history.append({"step": step, "score": score, "seconds": round(seconds, 3), "metrics": dict(metrics)})
        if self.metric is None:
            return Decision(improved=False, stop=False)
        if score is None or not math.isfinite(score):
            raise ValueError(f"evaluation at step {step}: {self.metric} is {score}; the metric must be finite")
        improved = self.best_score is None or score > self.best_score + self.min_delta
        if improved:
            self.best_step, self.best_score, self.without_improvement = step, score, 0
        else:
            self.without_improvement += 1
        stop = self.patience is not None and self.without_improvement >= self.patience
        if stop:
            self.stopped_at = step
        return Decision(improved, stop)

    @property
    def seconds(self) -> float:
        """Seconds spent in the evaluations so far (restored ones included)."""
        return sum(entry["seconds"] for entry in self.history)

    def record(self) -> dict:
        """The best and the history, as exports/<stage>.best.json holds them."""
        return {"metric": self.metric, "score": self.best_score, "step": self.best_step,
                "stopped_at": self.stopped_at, "history": self.history}

    def state_dict(self) -> dict:
        return {"metric": self.metric, "history": list(self.history), "best_step": self.best_step,
                "best_score": self.best_score, "without_improvement": self.without_improvement,
                "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
        if state["metric"] != self.metric:
            if None in (state["metric"], self.metric):  # a best_metric added or dropped: the history stays
                return
            raise ValueError(f"the checkpoint chose its best by {state['metric']}, this config by {self.metric}: "
                             f"resume with evaluate.best_metric={state['metric']}, or start the stage over in a "
                             "new output_dir")
        self.best_step, self.best_score = state["best_step"], state["best_score"]
        self.without_improvement, self.stopped_at = int(state["without_improvement"]), state["stopped_at"]

    def forget_best(self) -> None:
        """The best export is gone (see BestExport.reconcile): the next evaluation becomes the best."""
        self.best_step = self.best_score = None


class BestExport:
    """exports/<stage>.best/ and its score file; rank 0 moves files, every rank takes part in an export."""

    def __init__(self, exports: Path, stage: str):
        self.dir = Path(exports) / f"{stage}.best"
        self.prev = self.dir.with_name(f"{stage}.best.prev")
        self.partial = self.dir.with_name(f"{stage}.best.partial")
        self.score_file = self.dir.with_name(f"{stage}.best.json")

    @staticmethod
    def step_of(folder: Path) -> int | None:
        marker = folder / MARKER
        return json.loads(marker.read_text())["step"] if marker.is_file() else None

    def write(self, record: dict, export: Callable[[Path], Path], checkpointed_step: int | None) -> None:
        """Export the live weights as the new best (`export` is the stage kind's, called on every rank).
        The current best is kept as .prev when the latest checkpoint records it, else dropped."""
        if is_main():
            shutil.rmtree(self.partial, ignore_errors=True)
        barrier()
        export(self.partial)
        if is_main():
            _write_json(self.partial / MARKER, record)
            current = self.step_of(self.dir)
            if current is not None and checkpointed_step is not None and current <= checkpointed_step:
                shutil.rmtree(self.prev, ignore_errors=True)
                os.replace(self.dir, self.prev)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
            os.replace(self.partial, self.dir)
            _write_json(self.score_file, record)
        barrier()

    def update_record(self, record: dict) -> None:
        """The score file alone (an evaluation that did not improve, a resume)."""
        if is_main():
            _write_json(self.score_file, record)

    def checkpointed(self, step: int) -> None:
        """A checkpoint at `step` is complete: the best it records is the current one, .prev is not needed."""
        if is_main() and self.prev.exists() and (self.step_of(self.dir) or math.inf) <= step:
            shutil.rmtree(self.prev)

    def reconcile(self, best_step: int | None) -> bool:
        """After a resume: leave in place the export of the evaluation at `best_step` (the resumed state's
        best), drop exports written after the checkpoint; False when that export is gone."""
        found = True
        if is_main():
            shutil.rmtree(self.partial, ignore_errors=True)
            if best_step is not None and self.step_of(self.dir) != best_step and self.step_of(self.prev) == best_step:
                log.info("%s was written after the checkpoint; the best the checkpoint records is %s again",
                         self.dir, self.prev)
                shutil.rmtree(self.dir)
                os.replace(self.prev, self.dir)
            shutil.rmtree(self.prev, ignore_errors=True)
            if best_step is None or self.step_of(self.dir) != best_step:
                shutil.rmtree(self.dir, ignore_errors=True)
                found = best_step is None
        return broadcast_object(found)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
