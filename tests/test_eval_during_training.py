"""Evaluation during training: `evaluate.every_steps`, `best_metric`, `patience`, `next_stage_from`.

Fast: the config checks at load time, the best/patience bookkeeping and the files of the best export
(its rotation across checkpoints and its reconciliation after a resume), the live-weights evaluation
against an evaluation of the same weights exported. Distributed (tests/train_scenarios.py,
real DeepSpeed, real shards, a real sqlite MLflow store, the tiny model): two ranks at ZeRO-3 keep as best
export the evaluation with the highest logged metric and train exactly as without evaluation; early
stopping stops at the step its patience predicts, and a run killed between evaluations resumes with its
best-so-far and patience count.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from framework.config import from_dict
from framework.evaluate.config import BenchmarkConfig, EvalConfig
from framework.train.best import BestExport, BestTracker
from framework.train.config import RunConfig
from tests.test_train import _drive, _kill_at_checkpoint, shards  # noqa: F401 - shards is a fixture
from tests.train_scenarios import losses, run_config

SLICE = {"tasks": ["de", "de-en"], "max_queries": 8}


# ---- config, at load time --------------------------------------------------------------------------
def _run(tmp_path: Path, evaluate: dict, model: dict | None = None, **stage) -> RunConfig:
    base = {"name": "s", "steps": 10, "data": {"manifest": "m.json", "buckets": {"total_batch": {8192: 8}}},
            "evaluate": {"benchmark": "ddtp-dev", **evaluate}}
    base.update(stage)
    return from_dict(RunConfig, {"output_dir": str(tmp_path), "model": {"path": "m", **(model or {})},
                                 "stages": [base]})


def test_best_metric_is_checked_against_the_modes_and_metrics_that_exist(tmp_path):
    """'all.ndcg@10' and 'all.ndcg_at_10' name the same metric; an unknown metric, a mode that is not
    evaluated (not in `modes`, MCLS without mcls, BM25) or a mode needing a head the model lacks fail at
    load, naming the field and what to write instead."""
    for spelling in ("all.ndcg@10", "all.NDCG@10", "all.ndcg_at_10"):
        cfg = _run(tmp_path, {"every_steps": 2, "best_metric": spelling}).stages[0].evaluate
        assert cfg.best_key() == ("all", "ndcg_at_10")
    assert _run(tmp_path, {"every_steps": 2, "best_metric": "hybrid_0.4_0.4_0.2.mrr@10",
                           "hybrid": {"custom": [[0.4, 0.4, 0.2]]}}).stages[0].evaluate.best_key() == \
        ("hybrid_0.4_0.4_0.2", "mrr_at_10")
    bad = {"all.ndcg@5": r"stages\.0\.evaluate: best_metric='all\.ndcg@5': write '<mode>\.<metric>' with a "
                         r"metric of \['ndcg@10', 'recall@20', 'recall@100', 'mrr@10'\]",
           "ndcg@10": r"best_metric='ndcg@10': write '<mode>\.<metric>'",
           "bm25.ndcg@10": r"BM25 does not depend on the trained weights; choose a mode of the model, "
                           r"e\.g\. all\.ndcg@10",
           "dense_mcls.ndcg@10": r"mode 'dense_mcls' is not evaluated"}
    for metric, message in bad.items():
        with pytest.raises(ValueError, match=message):
            _run(tmp_path, {"every_steps": 2, "best_metric": metric})
    with pytest.raises(ValueError, match=r"mode 'all' is not evaluated; choose one of \['dense', 'sparse'\]"):
        _run(tmp_path, {"every_steps": 2, "best_metric": "all.ndcg@10", "modes": ["dense", "sparse"]})
    with pytest.raises(ValueError, match=r"stages\.s\.evaluate\.best_metric='all\.ndcg@10' needs the colbert "
                                         r"head\(s\), which model switches off"):
        _run(tmp_path, {"every_steps": 2, "best_metric": "all.ndcg@10"}, model={"colbert": False},
             loss={"use_colbert": False})


def test_evaluation_fields_need_each_other_and_fit_the_stage(tmp_path):
    """patience, min_delta and next_stage_from=best need a best_metric, which needs every_steps, which
    needs a benchmark and an evaluation inside the stage; a RetroMAE stage has no heads to evaluate."""
    cases = [({"every_steps": 2, "patience": 2}, r"patience needs best_metric"),
             ({"every_steps": 2, "next_stage_from": "best"}, r"next_stage_from needs best_metric"),
             ({"every_steps": 2, "min_delta": 0.01}, r"min_delta needs best_metric"),
             ({"best_metric": "all.ndcg@10"}, r"best_metric needs every_steps"),
             ({"every_steps": 0}, r"every_steps=0: use a positive number"),
             ({"every_steps": 2, "best_metric": "dense.ndcg@10", "patience": 0}, r"patience=0: use >= 1"),
             ({"every_steps": 2, "next_stage_from": "first"}, r"next_stage_from='first' is not one of"),
             ({"every_steps": 20}, r"stages\.s\.evaluate\.every_steps=20 exceeds the stage's 10 steps")]
    for evaluate, message in cases:
        with pytest.raises(ValueError, match=message):
            _run(tmp_path, evaluate)
    with pytest.raises(ValueError, match=r"every_steps needs a benchmark"):
        EvalConfig(every_steps=2)
    with pytest.raises(ValueError, match=r"stages\.s\.evaluate\.every_steps: a retromae stage has no retrieval "
                                         r"heads to evaluate while it trains"):
        _run(tmp_path, {"every_steps": 2}, kind="retromae", retromae={"max_length": 128},
             data={"manifest": "m.json", "passage_max_length": 128, "buckets": {"total_batch": {8192: 8}}})
    cfg = _run(tmp_path, {"every_steps": 5, "best_metric": "dense.recall@100", "patience": 3,
                          "next_stage_from": "best", **SLICE}).stages[0].evaluate
    assert (cfg.every_steps, cfg.patience, cfg.next_stage_from, cfg.benchmark.max_queries) == (5, 3, "best", 8)


# ---- the bookkeeping ----------------------------------------------------------------------------------
def test_tracker_keeps_the_best_counts_patience_and_round_trips_its_state():
    """Strict improvement by more than min_delta; `patience` evaluations without one stop; a tracker
    restored from the state continues exactly like the original."""
    tracker = BestTracker("all.ndcg@10", patience=2, min_delta=0.01)
    scores = {2: 0.30, 4: 0.35, 6: 0.355, 8: 0.40, 10: 0.40, 12: 0.405, 14: 0.5}
    decisions = {}
    for step in (2, 4, 6):
        decisions[step] = tracker.observe(step, scores[step], {"eval/all_ndcg_at_10": scores[step]}, 1.0)
    restored = BestTracker("all.ndcg@10", patience=2, min_delta=0.01)
    restored.load_state_dict(json.loads(json.dumps(tracker.state_dict())))  # as a checkpoint keeps it
    for step in (8, 10, 12, 14):
        decisions[step] = tracker.observe(step, scores[step], {}, 1.0)
        assert restored.observe(step, scores[step], {}, 1.0) == decisions[step]
        if decisions[step].stop:
            break
    # 6 and 12 improve by less than min_delta, 10 not at all: 12 is the second evaluation without improvement.
    assert [s for s, d in decisions.items() if d.improved] == [2, 4, 8]
    assert [s for s, d in decisions.items() if d.stop] == [12] and 14 not in decisions
    assert restored.state_dict() == tracker.state_dict()
    assert (tracker.best_step, tracker.best_score, tracker.stopped_at, tracker.seconds) == (8, 0.40, 12, 6.0)
    with pytest.raises(ValueError, match=r"the checkpoint chose its best by all\.ndcg@10, this config by "
                                         r"dense\.ndcg@10: resume with evaluate\.best_metric=all\.ndcg@10"):
        BestTracker("dense.ndcg@10", 2).load_state_dict(tracker.state_dict())
    with pytest.raises(ValueError, match=r"evaluation at step 2: all\.ndcg@10 is nan"):
        BestTracker("all.ndcg@10", None).observe(2, float("nan"), {}, 0.0)


def test_best_export_keeps_the_checkpointed_best_until_a_checkpoint_records_the_new_one(tmp_path):
    """A new best replaces exports/<stage>.best; the previous one stays as .best.prev while no checkpoint
    records the new one, so a resume from the last checkpoint finds the best export its state names."""
    files = BestExport(tmp_path, "warmup")

    def export(step):
        def write(out: Path) -> Path:
            out.mkdir(parents=True)
            (out / "weights").write_text(f"step {step}")
            return out
        return write

    def write(step, checkpointed):
        files.write({"step": step, "score": step / 100}, export(step), checkpointed)

    def held(folder: Path) -> str | None:
        return (folder / "weights").read_text() if folder.is_dir() else None

    write(2, None)                      # before any checkpoint
    files.checkpointed(4)               # the checkpoint at 4 records best = 2
    write(6, 4)                         # 2 is kept as .prev: the latest checkpoint names it
    write(8, 4)                         # 6 was never checkpointed: dropped, .prev still holds 2
    assert (held(files.dir), held(files.prev)) == ("step 8", "step 2")
    assert json.loads(files.score_file.read_text())["step"] == 8
    assert files.reconcile(2) is True   # killed here, resumed from the checkpoint at 4
    assert (held(files.dir), held(files.prev)) == ("step 2", None)
    write(6, 4)
    files.checkpointed(6)               # the checkpoint at 6 records best = 6: .prev goes
    assert (held(files.dir), held(files.prev)) == ("step 6", None)
    assert files.reconcile(6) is True and held(files.dir) == "step 6"
    assert files.reconcile(None) is True and not files.dir.exists()  # a resume from before any best
    write(2, None)
    assert files.reconcile(4) is False and not files.dir.exists()    # the named export is gone


# ---- the live weights ------------------------------------------------------------------------------------
def test_live_evaluation_equals_the_export_and_leaves_training_state_alone(tiny_model_dir, tmp_path):
    """The in-memory evaluation of a training model (train mode, no DeepSpeed: ZeRO-0 weights) gives the
    metrics of evaluating its BGE-M3 export; afterwards the model is still in train mode and every random
    state (torch, numpy, random) is where it was."""
    from framework.evaluate import evaluate
    from framework.model import load_m3, save_m3
    from framework.train.config import DataConfig, StageConfig
    from framework.train.evaluation import LiveEvaluation

    model, tokenizer = load_m3(tiny_model_dir)
    with torch.no_grad():  # weights that differ from the directory's, so the export is not a copy of it
        model.sparse_linear.weight.mul_(3.0)
    model.train()
    cfg = EvalConfig(benchmark_name="ddtp-dev", every_steps=1, benchmark=BenchmarkConfig(tasks=("de", "de-en"),
                                                                                         max_queries=8))
    stage = StageConfig(name="s", steps=2, data=DataConfig(manifest="m.json"), evaluate=cfg)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    live = LiveEvaluation(stage, model, tokenizer, torch.device("cpu"))
    results = live()
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(before[0], torch.get_rng_state()) and (before[1] == np.random.get_state()[1]).all()
    assert before[2] == random.getstate()
    assert "bm25" not in results["modes"] and set(results["modes"]) == {"dense", "sparse", "colbert",
                                                                           "dense_sparse", "all"}
    export = save_m3(model, tokenizer, tmp_path / "export")
    again = evaluate(export, "ddtp-dev", live.cfg)
    for mode in results["modes"]:
        for metric, value in results["overall"][mode].items():
            assert value == pytest.approx(again["overall"][mode][metric], abs=1e-9), (mode, metric)


# ---- real runs ----------------------------------------------------------------------------------------
def _evaluations(output_dir: Path, name: str) -> dict[int, float]:
    """step -> the logged value of `name` in metrics.jsonl (a step logged twice keeps the last)."""
    return {step: value for (_, step), value in losses(output_dir, name).items()}


@pytest.mark.distributed
def test_two_ranks_zero3_keep_the_best_logged_evaluation_and_train_as_without(tmp_path, tiny_model_dir, shards):
    """Two ranks at ZeRO-3, an evaluation every 2 steps (encoding sharded over the ranks, parameters
    gathered): the metrics reach the stage's MLflow run at their steps; exports/warmup.best holds the
    evaluation with the highest logged all.ndcg@10 (the JSON next to it says so, and evaluating the export
    again gives that score); the next stage starts from it (next_stage_from: best); and every loss equals
    that of the same run without evaluation."""
    from mlflow import MlflowClient

    from framework.evaluate import evaluate
    from framework.model import load_m3

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stage = run_config(tmp_path, tiny_model_dir, shards)["stages"][0]
    stage.update(steps=8, evaluate={"benchmark": "ddtp-dev", **SLICE, "every_steps": 2,
                                    "best_metric": "all.ndcg@10", "next_stage_from": "best"})
    second = dict(stage, name="next", steps=1, evaluate={})
    evaluated = run_config(tmp_path / "evaluated", tiny_model_dir, shards, stages=[stage, second], zero_stage=3,
                           tracking_uri=uri, name="evaluated")
    plain = run_config(tmp_path / "plain", tiny_model_dir, shards, stages=[dict(stage, evaluate={})], zero_stage=3)
    _drive([evaluated, plain], tmp_path, nproc=2)

    run_dir = tmp_path / "evaluated"
    trained, expected = losses(run_dir), losses(tmp_path / "plain")
    assert len(expected) == 8 and len(set(expected.values())) > 4
    for key, value in expected.items():
        assert trained[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    logged = _evaluations(run_dir, "eval/all_ndcg_at_10")
    assert sorted(logged) == [2, 4, 6, 8]
    best_step = max(logged, key=lambda s: (logged[s], -s))
    record = json.loads((run_dir / "exports" / "warmup.best.json").read_text())
    assert (record["step"], record["score"]) == (best_step, logged[best_step])
    assert [(e["step"], e["score"]) for e in record["history"]] == sorted(logged.items())
    assert best_step != 8, f"the metric rose to the last evaluation {logged}: best and last cannot be told apart"
    best_dir = run_dir / "exports" / "warmup.best"
    cfg = EvalConfig(modes=("dense", "sparse", "colbert", "dense_sparse", "all"),
                     benchmark=BenchmarkConfig(tasks=tuple(SLICE["tasks"]), max_queries=8), progress=False)
    again = evaluate(best_dir, "ddtp-dev", cfg)
    assert again["overall"]["all"]["ndcg_at_10"] == pytest.approx(record["score"], abs=1e-6)
    best, _ = load_m3(best_dir)
    last, _ = load_m3(run_dir / "exports" / "warmup")
    assert any(not torch.equal(a, b) for a, b in zip(best.state_dict().values(), last.state_dict().values()))
    done = json.loads((run_dir / "exports" / "warmup.done.json").read_text())
    assert done["next_start"] == str(best_dir) and done["best_step"] == best_step and done["evaluations"] == 4

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("m3-embedding").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment])}
    history = client.get_metric_history(runs["warmup"].info.run_id, "eval/all_ndcg_at_10")
    assert sorted((m.step, m.value) for m in history) == sorted(logged.items())
    assert "eval/monolingual_dense_ndcg_at_10" in runs["warmup"].data.metrics
    assert runs["warmup"].data.metrics["eval/best_all_ndcg_at_10"] == record["score"]
    assert runs["next"].data.params["derived.start_dir"] == str(best_dir)


@pytest.mark.distributed
def test_early_stop_at_the_predicted_step_and_resume_keeps_the_best_so_far(tmp_path, tiny_model_dir, shards):
    """The encoder is frozen and best_metric is dense.ndcg@10, which only the encoder decides: the metric
    cannot improve after the first evaluation (step 2), so patience 2 stops the stage at step 6 (the heads
    still train: the losses move). The stage ends cleanly there: progress logged, a checkpoint, the
    stage-end export and the done marker. A run killed after its checkpoint at step 4 resumes with the
    best and the patience count of steps 2 and 4: it stops at 6 too (a fresh count would go on to 10),
    keeps step 2 as best, and every loss equals the uninterrupted run's."""
    stage = run_config(tmp_path, tiny_model_dir, shards)["stages"][0]
    stage.update(steps=12, freeze=[r"^model\.encoder\."],
                 evaluate={"benchmark": "ddtp-dev", **SLICE, "modes": ["dense", "sparse"], "every_steps": 2,
                           "best_metric": "dense.ndcg@10", "patience": 2})
    configs = {name: run_config(tmp_path / name, tiny_model_dir, shards, stages=[stage],
                                checkpoint={"every_steps": 4, "keep_last": 2}) for name in ("whole", "killed")}
    tag = _kill_at_checkpoint(configs["killed"], tmp_path, "warmup")
    assert tag == "step00000004", f"killed at {tag}, not between the evaluations at 4 and 6"
    _drive(list(configs.values()), tmp_path)

    records = {}
    for name in configs:
        run_dir = tmp_path / name
        assert not (run_dir / "error.txt").exists(), (run_dir / "error.txt").read_text()
        assert sorted(_evaluations(run_dir, "eval/dense_ndcg_at_10")) == [2, 4, 6]
        assert max(step for _, step in losses(run_dir)) == 6
        assert (run_dir / "checkpoints" / "warmup" / "step00000006" / "COMPLETE").is_file()
        assert (run_dir / "exports" / "warmup" / "config.json").is_file()
        done = json.loads((run_dir / "exports" / "warmup.done.json").read_text())
        assert (done["stopped_early_at"], done["best_step"], done["next_start"]) == \
            (6, 2, str(run_dir / "exports" / "warmup"))  # next_stage_from: last (the default)
        records[name] = json.loads((run_dir / "exports" / "warmup.best.json").read_text())
    whole, killed = records["whole"], records["killed"]
    assert len({e["score"] for e in whole["history"]}) == 1
    assert (whole["step"], whole["stopped_at"]) == (killed["step"], killed["stopped_at"]) == (2, 6)
    assert [(e["step"], e["metrics"]) for e in whole["history"]] == \
        [(e["step"], e["metrics"]) for e in killed["history"]]
    expected, resumed = losses(tmp_path / "whole"), losses(tmp_path / "killed")
    assert resumed.keys() == expected.keys() and len(set(expected.values())) > 3
    for key, value in expected.items():
        assert resumed[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
