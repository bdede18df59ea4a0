"""Rank-0 side effects of a run: MLflow runs, metrics, params, artifacts; the one MLflow helper.

`TrackingConfig` is the one tracking section (a training run's `tracking:`, an evaluation's target).
`MlflowStore` holds every MLflow call this package makes, by explicit run ids so that the caller's active
run is never switched or ended: experiments by name, runs nested by tag, batched params and metrics.

`make_tracker` returns a `Tracker` on the main rank and a `NullTracker` (same methods, does nothing)
everywhere else, so training code never asks which rank it is on.

A training run is an MLflow parent run; each curriculum stage is a nested run; an evaluation at a stage
end is nested under the stage (framework/evaluate/tracking.py). Every metric is also appended to
`<output_dir>/metrics.jsonl`, the local record that survives an unreachable tracking server: MLflow
failures are warned about once and tracking then continues locally, never stopping training. Run ids are
kept in `<output_dir>/mlflow_runs.json` so a resumed run logs into the same MLflow runs.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value (8000 on recent servers; stay below both)
MAX_KEY_LENGTH = 250  # MLflow's limit on a param or metric name
PARAM_BATCH = 100  # MLflow's limit of params in one log_batch call
METRIC_BATCH = 1000  # MLflow's limit of entities (metrics + params + tags) in one log_batch call
PARENT_TAG = "mlflow.parentRunId"
TRAIN_EXPERIMENT, EVAL_EXPERIMENT = "m3-embedding", "evaluation"


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow records a run (rank 0 only): a training run's `tracking` section, or an evaluation's target."""

    enabled: bool = True
    """False: record nothing in MLflow (a training run still writes metrics.jsonl)."""
    uri: str | None = None
    """Tracking URI. Training: None = $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/../mlflow.db.
    Evaluation: None = the active run's store, else MLflow's default (MLFLOW_TRACKING_URI or sqlite)."""
    experiment: str | None = None
    """MLflow experiment; None = "m3-embedding" for training, "evaluation" for a top-level evaluation run
    (a nested run always goes to its parent's experiment)."""
    log_every: int = 10
    """Training: optimizer steps between metric batches (and progress lines)."""
    parent_run_id: str | None = None
    """Nest the run under this MLflow run: an evaluation under the training run's stage (None = the active
    run), a training run under e.g. a sweep's run (None = top level)."""
    run_name: str | None = None
    """Name of the run; None = the run config's `name` (training), "eval-<benchmark>" (evaluation)."""

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ValueError(f"tracking.log_every={self.log_every}: use >= 1")
        if self.experiment == "":
            raise ValueError("tracking.experiment is empty: name an MLflow experiment, or leave it out for the default")


def default_tracking_uri(output_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else a sqlite store next to the run directory (one store for all runs)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{output_dir.resolve().parent / 'mlflow.db'}"


def metric_name(name: str) -> str:
    """MLflow rejects '@' and some punctuation in names: ndcg@10 -> ndcg_at_10."""
    return name.replace("@", "_at_").replace("+", "_plus_").replace(" ", "_")


def artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store go next to its database file (MLflow's default is ./mlruns in whatever
    directory the first run started in); other stores keep the server's own location."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()


class MlflowStore:
    """One MLflow store, addressed by explicit run ids (the caller's active run is never touched)."""

    def __init__(self, uri: str):
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    def experiment_id(self, name: str, parent_run_id: str | None = None) -> str:
        """The parent run's experiment, else the named one (created when missing)."""
        if parent_run_id:
            return self.client.get_run(parent_run_id).info.experiment_id
        found = self.client.get_experiment_by_name(name)
        if found:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=artifact_location(self.uri))

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str] | None = None,
                   parent_run_id: str | None = None) -> str:
        """A new run (nested under `parent_run_id` by MLflow's tag); returns its id."""
        all_tags = dict(tags or {}, **({PARENT_TAG: parent_run_id} if parent_run_id else {}))
        return self.client.create_run(experiment_id, run_name=name, tags=all_tags or None).info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Params as strings cut to MLflow's limits, in batches it accepts."""
        from mlflow.entities import Param

        items = [Param(k[:MAX_KEY_LENGTH], str(v)[:MAX_PARAM_LENGTH]) for k, v in sorted(params.items())]
        for start in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(run_id, params=items[start:start + PARAM_BATCH])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """The finite metrics at `step`, names made acceptable to MLflow (metric_name), in batches."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(metric_name(k), float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
        for start in range(0, len(batch), METRIC_BATCH):
            self.client.log_batch(run_id, metrics=batch[start:start + METRIC_BATCH])

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


class NullTracker:
    """The do-nothing twin of Tracker (ranks other than 0, or tracking disabled)."""

    parent_run_id: str | None = None
    stage_run_id: str | None = None

    def start(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> None: ...
    def start_stage(self, stage: str, params: dict[str, Any], tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def end_stage(self, status: str = "FINISHED") -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...

    @property
    def tracking_uri(self) -> str | None:
        return None


class Tracker(NullTracker):
    """MLflow parent run + nested stage runs, with a local metrics.jsonl that is always written."""

    def __init__(self, uri: str, experiment: str | None, output_dir: Path, use_mlflow: bool = True, *,
                 parent_run_id: str | None = None, run_name: str | None = None):
        self.uri, self.experiment = uri, experiment or TRAIN_EXPERIMENT
        # Nesting the whole training run (e.g. under a sweep's run) and renaming it are for its first start;
        # a resumed run reopens the recorded one.
        self.outer_run_id, self.run_name = parent_run_id, run_name
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.local = (self.output_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.ids_path = self.output_dir / "mlflow_runs.json"
        self.ids = json.loads(self.ids_path.read_text()) if self.ids_path.is_file() else {}
        self.store: MlflowStore | None = None
        self.stage: str | None = None
        if use_mlflow:
            self._connect()

    @property
    def tracking_uri(self) -> str | None:
        return self.uri if self.store is not None else None

    def _connect(self) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if self.uri.startswith(("http://", "https://")) and not _reachable(self.uri):
            log.warning("MLflow server %s is unreachable: metrics go to %s only", self.uri, self.local.name)
            return
        self._call("connect", self._open_store)

    def _open_store(self) -> None:
        store = MlflowStore(self.uri)
        self.experiment_id = store.experiment_id(self.experiment, self.outer_run_id)
        self.store = store

    def _call(self, what: str, fn, *args, **kwargs):
        """Run an MLflow call; on failure warn once and carry on with the local record only."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            log.warning("MLflow %s failed (%s: %s); tracking continues in %s only", what,
                        type(err).__name__, err, self.local.name)
            self.store = None
            return None

    @property
    def parent_run_id(self) -> str | None:
        return self.ids.get("parent")

    @property
    def stage_run_id(self) -> str | None:
        return self.ids.get("stages", {}).get(self.stage) if self.stage else None

    def _save_ids(self) -> None:
        tmp = self.ids_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.ids, indent=2))
        os.replace(tmp, self.ids_path)

    def _run(self, key_path: tuple[str, ...], name: str, params, tags, parent: str | None) -> None:
        """Create the run once (or reopen the recorded one on resume) and log params and tags."""
        if self.store is None:
            return
        holder = self.ids
        for key in key_path[:-1]:
            holder = holder.setdefault(key, {})
        run_id = holder.get(key_path[-1])
        if run_id is None:
            run_id = self._call("create_run", self.store.create_run, self.experiment_id, name, tags, parent)
            if run_id is None:
                return
            holder[key_path[-1]] = run_id
            self._save_ids()
            self._call("log params", self.store.log_params, run_id, params)
        else:
            self._call("reopen run", self.store.client.update_run, run_id, status="RUNNING")

    def start(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        self._run(("parent",), self.run_name or name, params, tags, self.outer_run_id)

    def start_stage(self, stage: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        self.stage = stage
        self._run(("stages", stage), stage, params, tags, self.parent_run_id)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        clean = {metric_name(k): float(v) for k, v in metrics.items() if v is not None}
        self.local.write(json.dumps({"stage": self.stage, "step": step, "time": time.time(), **clean}) + "\n")
        self.local.flush()
        run_id = self.stage_run_id or self.parent_run_id
        if self.store is not None and run_id is not None:
            self._call("log metrics", self.store.log_metrics, run_id, clean, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        run_id = self.stage_run_id or self.parent_run_id
        if self.store is not None and run_id is not None:
            client = self.store.client
            self._call("log artifact", client.log_artifacts if Path(path).is_dir() else client.log_artifact,
                       run_id, str(path), artifact_path)

    def end_stage(self, status: str = "FINISHED") -> None:
        if self.store is not None and self.stage_run_id:
            self._call("end stage run", self.store.end, self.stage_run_id, status)
        self.stage = None

    def close(self, status: str = "FINISHED") -> None:
        if self.store is not None and self.parent_run_id:
            self._call("end run", self.store.end, self.parent_run_id, status)
        self.local.close()


def _reachable(uri: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def make_tracker(enabled: bool, is_main: bool, uri: str | None, experiment: str | None, output_dir: Path, *,
                 parent_run_id: str | None = None, run_name: str | None = None) -> NullTracker:
    """Tracker on the main rank (MLflow when enabled, metrics.jsonl always), NullTracker on the others."""
    if not is_main:
        return NullTracker()
    return Tracker(uri or default_tracking_uri(output_dir), experiment, output_dir, use_mlflow=enabled,
                   parent_run_id=parent_run_id, run_name=run_name)
