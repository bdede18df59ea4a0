"""The tracker: a dead tracking server costs a warning, never the run; resumed runs reuse their MLflow runs."""
from __future__ import annotations

import json
import logging

from framework.parallel import free_port
from framework.tracking import NullTracker, Tracker, make_tracker, metric_name


def test_unreachable_server_warns_and_keeps_a_local_record(tmp_path, caplog):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="framework.tracking"):
        tracker = Tracker(uri, "exp", tmp_path)
        tracker.start("run", {"a": 1}, {})
        tracker.start_stage("warmup", {}, {})
        tracker.log_metrics({"loss": 1.5, "ndcg@10": 0.25}, step=3)
        tracker.end_stage()
        tracker.close()
    assert tracker.tracking_uri is None and "unreachable" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"stage": "warmup", "step": 3, "time": rows[0]["time"], "loss": 1.5, "ndcg_at_10": 0.25}]


def test_resumed_run_logs_into_the_same_mlflow_runs(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = []
    for attempt in range(2):  # the second Tracker plays a resumed job in the same output_dir
        tracker = Tracker(uri, "exp", tmp_path / "run")
        tracker.start("run", {"seed": 0}, {"git_commit": "x"})
        tracker.start_stage("warmup", {"lr": 1e-5}, {"stage": "warmup"})
        tracker.log_metrics({"loss": 2.0 - attempt}, step=attempt + 1)
        ids.append((tracker.parent_run_id, tracker.stage_run_id))
        tracker.end_stage()
        tracker.close()
    assert ids[0] == ids[1] and None not in ids[0]
    client = MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(ids[0][1], "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
    assert client.get_run(ids[0][1]).data.tags["mlflow.parentRunId"] == ids[0][0]


def test_null_tracker_on_other_ranks(tmp_path):
    assert type(make_tracker(True, False, None, "exp", tmp_path)) is NullTracker
    assert not (tmp_path / "metrics.jsonl").exists()
    assert metric_name("dense+sparse ndcg@10") == "dense_plus_sparse_ndcg_at_10"


def test_artifacts_of_a_sqlite_store_go_next_to_its_database(tmp_path, monkeypatch):
    """MLflow's default artifact root is ./mlruns of whatever directory the first run started in."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    store = tmp_path / "store"
    tracker = Tracker(f"sqlite:///{store / 'mlflow.db'}", "exp", tmp_path / "run")
    tracker.start("run", {}, {})
    note = tmp_path / "note.txt"
    note.write_text("kept")
    tracker.log_artifact(note, "notes")
    tracker.close()
    assert [p.read_text() for p in (store / "mlartifacts").rglob("notes/note.txt")] == ["kept"]
    assert not (cwd / "mlruns").exists()
