"""Rank-0 side effects of a run: MLflow runs, metrics, params, artifacts, behind one object.

`make_tracker` returns a `Tracker` on the main rank and a `NullTracker` (same methods, does nothing)
everywhere else, so training code never asks which rank it is on.

A training run is an MLflow parent run; each curriculum stage is a nested run; an evaluation at a stage
end is nested under the stage. Every metric is also appended to `<output_dir>/metrics.jsonl`, the local
record that survives an unreachable tracking server: MLflow failures are warned about once and tracking
then continues locally, never stopping training. Run ids are kept in `<output_dir>/mlflow_runs.json`
so a resumed run logs into the same MLflow runs.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value (8000 on recent servers; stay below both)


def default_tracking_uri(output_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else a sqlite store next to the run directory (one store for all runs)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{output_dir.resolve().parent / 'mlflow.db'}"


def metric_name(name: str) -> str:
    """MLflow rejects '@' and some punctuation in names: ndcg@10 -> ndcg_at_10."""
    return name.replace("@", "_at_").replace("+", "_plus_").replace(" ", "_")


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

    def __init__(self, uri: str, experiment: str, output_dir: Path, use_mlflow: bool = True):
        self.uri, self.experiment, self.output_dir = uri, experiment, Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.local = (self.output_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.ids_path = self.output_dir / "mlflow_runs.json"
        self.ids = json.loads(self.ids_path.read_text()) if self.ids_path.is_file() else {}
        self.client = None
        self.stage: str | None = None
        if use_mlflow:
            self._connect()

    @property
    def tracking_uri(self) -> str | None:
        return self.uri if self.client is not None else None

    def _connect(self) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if self.uri.startswith(("http://", "https://")) and not _reachable(self.uri):
            log.warning("MLflow server %s is unreachable: metrics go to %s only", self.uri, self.local.name)
            return
        self._call("connect", self._make_client)

    def _make_client(self) -> None:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        found = client.get_experiment_by_name(self.experiment)
        self.experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
        self.client = client

    def _call(self, what: str, fn, *args, **kwargs):
        """Run an MLflow call; on failure warn once and carry on with the local record only."""
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            log.warning("MLflow %s failed (%s: %s); tracking continues in %s only", what,
                        type(err).__name__, err, self.local.name)
            self.client = None
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
        if self.client is None:
            return
        holder = self.ids
        for key in key_path[:-1]:
            holder = holder.setdefault(key, {})
        run_id = holder.get(key_path[-1])
        if run_id is None:
            all_tags = dict(tags, **({"mlflow.parentRunId": parent} if parent else {}))
            run = self._call("create_run", self.client.create_run, self.experiment_id, run_name=name, tags=all_tags)
            if run is None:
                return
            holder[key_path[-1]] = run_id = run.info.run_id
            self._save_ids()
            self._log_params(run_id, params)
        else:
            self._call("reopen run", self.client.update_run, run_id, status="RUNNING")

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:MAX_PARAM_LENGTH]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self._call("log params", self.client.log_batch, run_id, params=items[start:start + 100])

    def start(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        self._run(("parent",), name, params, tags, None)

    def start_stage(self, stage: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        self.stage = stage
        self._run(("stages", stage), stage, params, tags, self.parent_run_id)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        clean = {metric_name(k): float(v) for k, v in metrics.items() if v is not None}
        self.local.write(json.dumps({"stage": self.stage, "step": step, "time": time.time(), **clean}) + "\n")
        self.local.flush()
        run_id = self.stage_run_id or self.parent_run_id
        if self.client is None or run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in clean.items() if math.isfinite(v)]
        self._call("log metrics", self.client.log_batch, run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        run_id = self.stage_run_id or self.parent_run_id
        if self.client is not None and run_id is not None:
            self._call("log artifact", self.client.log_artifacts if Path(path).is_dir() else
                       self.client.log_artifact, run_id, str(path), artifact_path)

    def end_stage(self, status: str = "FINISHED") -> None:
        if self.client is not None and self.stage_run_id:
            self._call("end stage run", self.client.set_terminated, self.stage_run_id, status)
        self.stage = None

    def close(self, status: str = "FINISHED") -> None:
        if self.client is not None and self.parent_run_id:
            self._call("end run", self.client.set_terminated, self.parent_run_id, status)
        self.local.close()


def _reachable(uri: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def make_tracker(enabled: bool, is_main: bool, uri: str | None, experiment: str, output_dir: Path) -> NullTracker:
    """Tracker on the main rank when enabled, NullTracker otherwise."""
    if not is_main:
        return NullTracker()
    return Tracker(uri or default_tracking_uri(output_dir), experiment, output_dir, use_mlflow=enabled)
