"""tools/compare_runs.py on a real sqlite MLflow store laid out by the framework's own tracking code.

Two training runs, each an MLflow parent run (framework.tracking.Tracker) with nested stage runs that log
loss curves, evaluation runs at stage ends and a final evaluation under the parent (framework.evaluate's
log_evaluation), with results A and B from real evaluations on a DDTP slice of the tiny model and of a
perturbed copy of it:

    run-a: warmup (evaluated: B), unified (evaluated: A), evaluate-final (B)
    run-b: warmup (not evaluated), unified (evaluated: B), evaluate-final (A)
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from framework.evaluate import BenchmarkConfig, EvalConfig, TrackingConfig, evaluate
from framework.evaluate.compare import classify
from framework.evaluate.tracking import log_evaluation
from framework.inference import M3Embedder
from framework.model import load_m3
from framework.tracking import Tracker
from tools.compare_runs import main

EXPERIMENT, LOST = "m3-demo", "lost-artifacts"
EVAL = EvalConfig(modes=("dense", "sparse"), k=10, candidates=10, progress=False,
                  benchmark=BenchmarkConfig(tasks=("de", "de-en"), max_queries=6, max_corpus=15))


@pytest.fixture(autouse=True)
def _no_mlflow_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _results(model_dir: Path, noise: float) -> dict:
    torch.manual_seed(3)  # the tiny model has no head files: fresh sparse heads, reproducible
    model, tokenizer = load_m3(model_dir)
    with torch.no_grad():  # a second model without building one: the same one with other word embeddings
        embeddings = model.encoder.get_input_embeddings().weight
        embeddings.add_(noise * torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(1)))
    return evaluate(M3Embedder(model, tokenizer), "ddtp", EVAL)


@pytest.fixture(scope="module")
def results(tiny_model_dir: Path) -> dict[str, dict]:
    return {"A": _results(tiny_model_dir, 0.0), "B": _results(tiny_model_dir, 1.0)}


def _training_run(uri: str, out: Path, name: str, stages: dict[str, dict | None], final: dict, offset: float) -> str:
    tracker = Tracker(uri, EXPERIMENT, out / name)
    tracker.start(name, {"seed": 0}, {"world_size": "1"})
    for stage, evaluation in stages.items():
        tracker.start_stage(stage, {"steps": 3}, {"stage": stage, "kind": "contrastive"})
        for step in (1, 2, 3):
            tracker.log_metrics({"loss": offset + 1.0 / step, "lr": 1e-4}, step)
        if evaluation is not None:
            log_evaluation(evaluation, TrackingConfig(uri=uri, parent_run_id=tracker.stage_run_id,
                                                      run_name=f"evaluate-{stage}"))
        tracker.end_stage()
    log_evaluation(final, TrackingConfig(uri=uri, parent_run_id=tracker.parent_run_id,
                                         run_name="evaluate-final"))
    tracker.close()
    return tracker.parent_run_id


@pytest.fixture(scope="module")
def store(results: dict[str, dict], tmp_path_factory) -> tuple[str, dict[str, str]]:
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder}/mlflow.db"  # one store for the module: creating one costs seconds
    # Artifact locations are given so that no ./mlruns appears in the working directory; the tracking
    # code then finds the experiments by name.
    for name in (EXPERIMENT, LOST):
        MlflowClient(uri).create_experiment(name, artifact_location=(folder / name).as_uri())
    a, b = results["A"], results["B"]
    ids = {"run-a": _training_run(uri, folder, "run-a", {"warmup": b, "unified": a}, b, offset=1.0),
           "run-b": _training_run(uri, folder, "run-b", {"warmup": None, "unified": b}, a, offset=2.0)}
    return uri, ids


def _table(capsys, argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    assert main(argv) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return header, rows


def test_default_table_is_one_column_per_training_run(store, results, capsys) -> None:
    uri, ids = store
    header, rows = _table(capsys, ["--tracking-uri", uri, "--experiment", EXPERIMENT, "--metrics", "ndcg"])
    assert header == ["metric", f"run-a ({ids['run-a'][:8]})", f"run-b ({ids['run-b'][:8]})"]
    final = ["dense_ndcg_at_10", "sparse_ndcg_at_10"]  # the modes' averages over all tasks
    # The averages over all tasks: the final evaluation's, then each evaluated stage's; no per-task rows.
    assert list(rows) == final + [f"warmup/{m}" for m in final] + [f"unified/{m}" for m in final]
    a, b = results["A"]["metrics"], results["B"]["metrics"]
    for m in final:
        assert rows[m] == [f"{b[m]:.4f}", f"{a[m]:.4f}"]
        assert rows[f"warmup/{m}"] == [f"{b[m]:.4f}", "-"]
        assert rows[f"unified/{m}"] == [f"{a[m]:.4f}", f"{b[m]:.4f}"]


def test_per_task_rows_follow_the_averages(store, results, capsys) -> None:
    uri, ids = store
    # A glob names the metric without its group/task prefix: `dense_ndcg_*` keeps de_dense_ndcg_at_10 too.
    _, rows = _table(capsys, ["--tracking-uri", uri, ids["run-a"], ids["run-b"], "--metrics", "dense_ndcg_*",
                              "--per-task"])
    groups, tasks = sorted(results["A"]["groups"]), sorted(results["A"]["per_task"])
    assert groups == ["cross-lingual", "monolingual"] and tasks == ["de", "de-en"]
    per_evaluation = [f"{p}_dense_ndcg_at_10" for p in groups + tasks]
    assert list(rows) == ["dense_ndcg_at_10", "warmup/dense_ndcg_at_10", "unified/dense_ndcg_at_10",
                          *per_evaluation, *(f"warmup/{m}" for m in per_evaluation),
                          *(f"unified/{m}" for m in per_evaluation)]
    a = results["A"]["metrics"]
    assert rows["de-en_dense_ndcg_at_10"][1] == f"{a['de-en_dense_ndcg_at_10']:.4f}"
    assert rows["unified/monolingual_dense_ndcg_at_10"][0] == f"{a['monolingual_dense_ndcg_at_10']:.4f}"


def test_baseline_shows_differences_to_the_first_run(store, results, capsys) -> None:
    uri, _ = store
    _, rows = _table(capsys, ["--tracking-uri", uri, "--experiment", EXPERIMENT, "--metrics", "ndcg", "--baseline"])
    a, b = results["A"]["metrics"], results["B"]["metrics"]
    for m in ("dense_ndcg_at_10", "sparse_ndcg_at_10"):
        assert rows[m] == [f"{b[m]:.4f}", f"{a[m]:.4f} ({a[m] - b[m]:+.4f})"]
        assert rows[f"warmup/{m}"] == [f"{b[m]:.4f}", "-"]
    assert any(a[m] != b[m] for m in ("dense_ndcg_at_10", "sparse_ndcg_at_10")), "the two models score alike"


def test_plot_is_a_png(store, tmp_path, capsys) -> None:
    from matplotlib.image import imread

    uri, _ = store
    path = tmp_path / "plots" / "runs.png"
    _table(capsys, ["--tracking-uri", uri, "--experiment", EXPERIMENT, "--metrics", "ndcg", "--plot", str(path)])
    assert path.stat().st_size > 10_000
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert pixels.std() > 0.05  # curves and bars drawn, not a blank canvas


def test_errors_exit_2_with_the_reason(store, capsys) -> None:
    uri, _ = store
    assert main(["--tracking-uri", uri, "--experiment", "nope"]) == 2
    assert "no experiment named 'nope'" in capsys.readouterr().err
    assert main(["--tracking-uri", uri, "--experiment", EXPERIMENT, "--metrics", "no_such_metric"]) == 2
    assert "no evaluation metric matches --metrics" in capsys.readouterr().err


def test_lost_artifacts_only_merge_groups_into_tasks(store, results, capsys, caplog) -> None:
    from mlflow import MlflowClient

    uri, _ = store
    run_id = log_evaluation(results["A"], TrackingConfig(uri=uri, experiment=LOST, run_name="eval-lost"))

    artifacts = Path(MlflowClient(uri).get_run(run_id).info.artifact_uri.removeprefix("file://"))
    shutil.rmtree(artifacts)
    with caplog.at_level(logging.WARNING, logger="framework.evaluate.compare"):
        _, rows = _table(capsys, ["--tracking-uri", uri, run_id, "--metrics", "dense_ndcg_at_10", "--per-task"])
    assert list(rows) == ["dense_ndcg_at_10", *(f"{p}_dense_ndcg_at_10" for p in
                                                ("cross-lingual", "de", "de-en", "monolingual"))]
    assert "results.json unreadable" in caplog.text


@pytest.mark.parametrize("name, expected", [
    ("dense_ndcg_at_10", ("overall", "")), ("dense_sparse_recall_at_100", ("overall", "")),
    ("dense_ms_per_query", ("overall", "")), ("corpus_passages_per_s", ("overall", "")),
    ("de_dense_sparse_ndcg_at_10", ("task", "de")), ("de-en_sparse_mrr_at_10", ("task", "de-en")),
    ("cross-lingual_dense_ndcg_at_10", ("group", "cross-lingual")), ("something_else", ("overall", "")),
])
def test_metric_names_are_split_by_mode(name: str, expected: tuple[str, str]) -> None:
    assert classify(name, ("dense", "sparse", "dense_sparse"), {"cross-lingual", "monolingual"}) == expected
