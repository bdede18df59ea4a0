"""One evaluation = one MLflow run: params (model, benchmark, config), every metric, tables as artifacts.

The run is nested under `parent_run_id` (the training run at a stage end), else under the active run
if there is one, else it is a top-level run of `experiment`. Everything goes through framework.tracking's
MlflowStore with explicit run ids, so the caller's active run (the trainer's) is never ended or switched.

MLflow failures (unreachable server, bad URI, rejected value) become one warning and a None run id:
an evaluation that took an hour is never lost to its logging. Against an HTTP server MLflow retries
first (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT bound how long).
"""
from __future__ import annotations

import json
import logging
import warnings

from framework.evaluate.report import task_csv, task_table
from framework.tracking import EVAL_EXPERIMENT, MlflowStore, TrackingConfig

log = logging.getLogger(__name__)


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
    if not tracking.enabled:
        return None
    try:
        return _log(results, tracking)
    except Exception as err:  # noqa: BLE001 - any MLflow failure must leave the evaluation intact
        message = (f"MLflow logging of the evaluation failed ({type(err).__name__}: {str(err)[:300]}); the results "
                   "are still returned and written with --out. Check the tracking URI / server and re-log later.")
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return None


def _log(results: dict, tracking: TrackingConfig) -> str:
    import mlflow

    active = mlflow.active_run()
    # The active run is a parent only in its own store (a run id means nothing in another one).
    same_store = tracking.uri in (None, mlflow.get_tracking_uri())
    parent_id = tracking.parent_run_id or (active.info.run_id if active and same_store else None)
    store = MlflowStore(tracking.uri or mlflow.get_tracking_uri())
    experiment_id = store.experiment_id(tracking.experiment or EVAL_EXPERIMENT, parent_id)
    run_id = store.create_run(experiment_id, tracking.run_name or f"eval-{results['benchmark']}",
                              parent_run_id=parent_id)
    try:
        store.log_params(run_id, flat_params(results))
        store.log_metrics(run_id, results["metrics"], step=0)
        store.client.log_text(run_id, task_csv(results), "per_task.csv")
        store.client.log_text(run_id, task_table(results) + "\n", "per_task.md")
        store.client.log_dict(run_id, {k: v for k, v in results.items() if k != "metrics"}, "results.json")
        store.end(run_id, "FINISHED")
    except Exception:
        store.end(run_id, "FAILED")
        raise
    return run_id
