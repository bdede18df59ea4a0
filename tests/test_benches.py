"""The benchmark scripts of issue 11 run end to end in their small modes, and what they report holds up.

Each test runs one script as a user would (a subprocess from the repo root) on the tiny model of
tests/conftest.py and checks the JSON it writes, not only its exit status.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.mark.slow
@pytest.mark.distributed
def test_vs_flagembedding_quick_runs_both_arms_on_the_same_batches(tiny_model_dir, tmp_path):
    pytest.importorskip("FlagEmbedding.finetune.embedder.encoder_only.m3")
    out = tmp_path / "vs.json"
    done = _run(["-m", "bench.vs_flagembedding", "--quick", "--model-dir", str(tiny_model_dir),
                 "--work-dir", str(tmp_path / "work"), "--out", str(out)], timeout=900)
    (result,) = json.loads(out.read_text())
    steps = int(result["setting"]["steps"])
    for arm in ("flag", "ours"):
        (losses,) = result[arm]["losses"]  # one run per arm in quick mode
        assert len(losses) == steps and all(loss > 0 for loss in losses), arm
        assert result[arm]["samples_per_s"] > 0 and result[arm]["peak_rss_bytes"] > 100 * 2 ** 20, arm
    # Same weights, same batches, dropout off: the reference's loss and ours agree at the first step
    # (measured: equal to float32 rounding), and stay together while the updates are alike.
    assert result["first_step_relative_gap"] < 1e-4
    flag, ours = result["flag"]["losses"][0], result["ours"]["losses"][0]
    assert all(abs(a - b) / a < 1e-3 for a, b in zip(flag, ours))
    assert len(result["tokens_per_step"]) == steps and min(result["tokens_per_step"]) > 0
    assert "ours / flag samples/s" in done.stdout


@pytest.mark.slow
def test_gpu_suite_smoke_runs_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    _run(["-m", "bench.gpu_suite", "--smoke", "--out", str(out)], timeout=600)
    results = json.loads(out.read_text())
    assert results["environment"]["smoke"] is True
    for section in ("throughput", "max_batch", "flag_ratio", "search", "gather"):
        assert "error" not in results[section] and "skipped" not in results[section] or (
            section == "flag_ratio" and "not installed" in results[section].get("skipped", "")), section
    rows = [row for key, row in results["throughput"]["sdpa"].items() if key.isdigit()]
    assert rows and all(row["tokens_per_s"] > 0 and row["tflops"] > 0 for row in rows)
    for method, found in results["max_batch"].items():
        if not isinstance(found, dict) or "probes" not in found:
            continue
        assert found["max_batch"] > 0, method
        # The reported batch is one that was run and fitted; every larger one that was run did not fit.
        fitted = {p["batch"] for p in found["probes"] if p["fits"]}
        assert found["max_batch"] in fitted, method
        assert all(not p["fits"] for p in found["probes"] if p["batch"] > found["max_batch"]), method
    assert results["search"]["faiss_cpu"]["top10_agreement_with_torch"] >= 0.99
    assert results["gather"]["correct"] is True


@pytest.mark.slow
@pytest.mark.distributed
def test_memory_per_rank_phases_and_floor(tiny_model_dir, tmp_path):
    out = tmp_path / "memory.json"
    done = _run(["-m", "bench.memory_per_rank", "--models", "tiny", "--model-dir", str(tiny_model_dir), "--rows", "300",
                 "--zero", "2", "--procs", "1", "--steps", "2", "--work-dir", str(tmp_path / "work"),
                 "--out", str(out)], timeout=900)
    (rank0,) = json.loads(out.read_text())
    phases = [row["phase"] for row in rank0["phases"]]
    assert phases[:4] == ["runtime", "weights", "engine", "loader"]
    assert phases[4:] == [f"step {s} {p}" for s in (1, 2) for p in ("forward", "backward", "optimizer")]
    n, t = rank0["counts"]["parameters"], rank0["counts"]["trainable"]
    assert 0 < t <= n
    assert rank0["floor"]["total"] == 4 * n + 4 * t + 8 * t  # one rank: ZeRO shards nothing
    assert rank0["peak"] >= max(row["rss"] for row in rank0["phases"]) > rank0["floor"]["total"]
    # The live-tensor tracker saw the last step: encoder activations, then more at the loss.
    assert 0 < rank0["live"]["encoded"] <= rank0["live"]["loss_peak"]
    assert "peak RSS per rank" in done.stdout


@pytest.mark.slow
@pytest.mark.distributed
def test_trainer_releases_each_stage_engine(tiny_model_dir, tmp_path):
    """The real Trainer over two stages: every stage's DeepSpeed engine is gone once the stage has
    exported (StageRun.close); kept alive, as before, both would still be there at the end."""
    def engines_alive(*extra: str) -> list[dict]:
        out = tmp_path / f"curriculum{len(extra)}.json"
        _run(["-m", "bench.memory_per_rank", "--models", "tiny", "--model-dir", str(tiny_model_dir), "--rows", "300",
              "--zero", "2", "--procs", "1", "--steps", "2", "--stage", "warmup,unified",
              "--work-dir", str(tmp_path / "work"), "--out", str(out), *extra], timeout=900)
        (rank0,) = json.loads(out.read_text())
        return rank0

    released, kept = engines_alive(), engines_alive("--keep-engines")
    assert [row["stage"] for row in released["stages"]] == ["warmup", "unified"]
    assert [row["earlier_engines_alive"] for row in released["stages"]] == [0, 0]
    assert released["engines_alive_at_end"] == 0
    assert [row["earlier_engines_alive"] for row in kept["stages"]] == [0, 1] and kept["engines_alive_at_end"] == 2
    # The bucket sizes the stage used came from the model (the tiny model's trainable count: the rule's floor).
    assert released["stages"][0]["buckets"] == {"reduce_bucket_size": 999_424, "allgather_bucket_size": 999_424}
