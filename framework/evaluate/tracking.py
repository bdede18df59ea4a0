"""One evaluation = one MLflow run: params (model, benchmark, config), every metric, tables as artifacts.

The run is nested under `parent_run_id` (the training run at a stage end), else under the active run
if there is one, else it is a top-level run of `experiment`. Everything goes through MlflowClient with
explicit run ids, so the caller's active run (the trainer's) is never ended or switched.

MLflow failures (unreachable server, bad URI, rejected value) become one warning and a None run id:
an evaluation that took an hour is never lost to its logging. Against an HTTP server MLflow retries
first (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT bound how long).
"""
from __future__ import annotations

import json
import logging
import time
import warnings

from framework.evaluate.config import TrackingConfig
from framework.evaluate.report import task_csv, task_table

log = logging.getLogger(__name__)
# MLflow's limit of entities (metrics + params + tags) in one log_batch call.
BATCH_LIMIT = 1000
PARENT_TAG = "mlflow.parentRunId"


def flat_params(results: dict) -> dict[str, str]:
    """Run params: model, benchmark, split, modes and the whole evaluation config as dotted keys."""
    params = {"model": results["model"], "benchmark": results["benchmark"], "split": results["split"],
              "modes": ",".join(results["modes"]), "num_tasks": str(len(results["per_task"]))}
    def walk(prefix: str, table: dict) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                params[f"config.{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    walk("", results["config"])
    return params


def log_evaluation(results: dict, tracking: TrackingConfig) -> str | None:
    """Log the evaluation as an MLflow run; returns its id, or None (with a warning) when MLflow fails."""
    try:
        return _log(results, tracking)
    except Exception as err:  # noqa: BLE001 - any MLflow failure must leave the evaluation intact
        message = (f"MLflow logging of the evaluation failed ({type(err).__name__}: {str(err)[:300]}); the results "
                   "are still returned and written with --out. Check the tracking URI / server and re-log later.")
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return None


def _experiment_id(client, tracking: TrackingConfig, parent_id: str | None) -> str:
    if parent_id:
        return client.get_run(parent_id).info.experiment_id
    experiment = client.get_experiment_by_name(tracking.experiment)
    return experiment.experiment_id if experiment else client.create_experiment(tracking.experiment)


def _log(results: dict, tracking: TrackingConfig) -> str:
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = tracking.tracking_uri or mlflow.get_tracking_uri()
    active = mlflow.active_run()
    # The active run is a parent only in its own store (a run id means nothing in another one).
    same_store = tracking.tracking_uri in (None, mlflow.get_tracking_uri())
    parent_id = tracking.parent_run_id or (active.info.run_id if active and same_store else None)
    client = MlflowClient(uri)
    experiment_id = _experiment_id(client, tracking, parent_id)
    run = client.create_run(experiment_id, run_name=tracking.run_name or f"eval-{results['benchmark']}",
                            tags={PARENT_TAG: parent_id} if parent_id else None)
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in flat_params(results).items()]
        metrics = [Metric(k, float(v), now, 0) for k, v in results["metrics"].items()]
        for start in range(0, len(params), 100):
            client.log_batch(run_id, params=params[start:start + 100])
        for start in range(0, len(metrics), BATCH_LIMIT):
            client.log_batch(run_id, metrics=metrics[start:start + BATCH_LIMIT])
        client.log_text(run_id, task_csv(results), "per_task.csv")
        client.log_text(run_id, task_table(results) + "\n", "per_task.md")
        client.log_dict(run_id, {k: v for k, v in results.items() if k != "metrics"}, "results.json")
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id
