"""slurm/*.sbatch on a real SLURM: a one-node cluster on this machine (tests/slurm_cluster.py) runs

  - the sharding array job (tools/submit_shards.py -> slurm/prepare_shards.sbatch, 2 parts) and the merge
    job that waits for it (slurm/merge_shards.sbatch, --dependency=afterok);
  - slurm/train.sbatch with 2 CPU tasks on the merged shards, preempted with `scancel --signal=USR1`
    after a few steps: it checkpoints, requeues itself (`scontrol requeue`), starts again and finishes
    from the checkpoint (export, checkpoints, MLflow parent + stage run in a sqlite store);
  - slurm/evaluate.sbatch on the exported model (skipped while `python -m framework evaluate` is absent).

Jobs use this interpreter's virtual environment (M3_VENV, read by slurm/env.sh). The daemons are
installed with apt-get when missing (skip only when that is impossible) and stopped at the end; the
time from daemon start to the last job done is printed (run with -s to see it).
"""
from __future__ import annotations

import contextlib
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm_cluster import FINAL_STATES, LocalSlurm, ensure_installed
from tests.train_scenarios import REPO_ROOT, run_config

pytestmark = pytest.mark.slurm

DDTP = REPO_ROOT / "data" / "ddtp" / "train"
SHARD_INPUTS = [DDTP / f"{name}.jsonl.gz" for name in ("de", "fr", "en", "de-en")]
NUM_PARTS = 2
TRAIN_STEPS = 40
PREEMPT_AFTER_STEPS = 3  # metrics rows seen before the signal is sent
# The 2-CPU test node has no GPUs: cancel train.sbatch's 8-GPU default and run 2 tasks of 1 CPU.
CPU_JOB = ["--gpus-per-node=0", "--cpus-per-task=1"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> LocalSlurm:
    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        print(f"\nSLURM: munged, slurmctld, slurmd up and the node idle in "
              f"{time.monotonic() - cluster.started_at:.1f} s", flush=True)
        yield cluster
    finally:
        cluster.stop()
        if cluster.started_at is not None and cluster.last_job_done is not None:
            print(f"\nSLURM: daemon start -> last job done: {cluster.last_job_done - cluster.started_at:.1f} s",
                  flush=True)


@pytest.fixture(scope="module")
def job_env() -> dict[str, str]:
    """Jobs run this venv's python (slurm/env.sh activates M3_VENV) from this checkout (M3_REPO)."""
    env = {"M3_REPO": str(REPO_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    if sys.prefix != sys.base_prefix:
        env["M3_VENV"] = sys.prefix
    return env


@contextlib.contextmanager
def logs_on_failure(cluster: LocalSlurm, folder: Path):
    """On any failure inside, print the job logs under `folder` and the daemons' logs."""
    try:
        yield
    except BaseException:
        for log in sorted(folder.glob("*.out")):
            print(f"---- {log}\n{log.read_text(errors='replace')[-6000:]}")
        print(cluster.daemon_logs())
        raise


def wait_for(ready, timeout: float, what: str, cluster: LocalSlurm, job_id: str, poll: float = 0.1):
    """Poll `ready()` until truthy; fail early when the job reached a final state first."""
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        states = {job["JobState"] for job in cluster.jobs(job_id)}
        if states <= FINAL_STATES:
            raise AssertionError(f"job {job_id} ended ({states}) before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s (job {job_id}: {states})")
        time.sleep(poll)
    return value


# ---- shards: array job + dependent merge ---------------------------------------------------------------
@pytest.fixture(scope="module")
def merged_shards(slurm: LocalSlurm, job_env, tokenizer_dir, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("shard_jobs")
    out = work / "shards"
    cmd = [sys.executable, str(REPO_ROOT / "tools" / "submit_shards.py"), "--parts", str(NUM_PARTS), "--parsable",
           "--", *map(str, SHARD_INPUTS), "--out", str(out), "--tokenizer", str(tokenizer_dir), "--pretokenize",
           "--max-length", "128", "--progress-seconds", "1000"]
    with logs_on_failure(slurm, work):
        started = time.monotonic()
        done = subprocess.run(cmd, env={**slurm.env, **job_env}, cwd=work, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        array_id, merge_id = done.stdout.split()
        states = slurm.wait([array_id, merge_id], timeout=180)
        print(f"\nSLURM: {NUM_PARTS}-part shard array + merge done in {time.monotonic() - started:.1f} s", flush=True)
        assert set(states.values()) == {"COMPLETED"}, states
    return {"manifest": out / "manifest.json", "array_id": array_id, "merge_id": merge_id, "work": work}


def test_shard_array_job_and_dependent_merge(slurm, merged_shards):
    """Each array task wrote its part; the merge ran after both and its manifest counts every input row."""
    array = slurm.jobs(merged_shards["array_id"])
    merge, = slurm.jobs(merged_shards["merge_id"])
    assert sorted(job["ArrayTaskId"] for job in array) == [str(i) for i in range(NUM_PARTS)]
    assert merge["JobState"] == "COMPLETED"
    assert merge["StartTime"] >= max(job["EndTime"] for job in array), (merge["StartTime"], array)
    out = merged_shards["manifest"].parent
    assert sorted(p.name for p in out.glob("manifest-part*.json")) == [
        f"manifest-part{i:05d}-of-{NUM_PARTS:05d}.json" for i in range(NUM_PARTS)]
    manifest = json.loads(merged_shards["manifest"].read_text())
    num_rows = sum(sum(1 for line in gzip.open(path, "rt") if line.strip()) for path in SHARD_INPUTS)
    assert manifest["totals"]["num_records"] == num_rows
    assert manifest["totals"]["num_samples"] == num_rows - manifest["totals"]["num_rejected"] == num_rows
    assert sorted(map(tuple, manifest["parts"])) == [(i, NUM_PARTS) for i in range(NUM_PARTS)]
    assert sorted(manifest["inputs"]) == sorted(map(str, SHARD_INPUTS))
    for shard in manifest["shards"]:
        assert (out / shard["path"]).is_file(), shard


# ---- training: preempted, requeued, resumed ------------------------------------------------------------
@pytest.fixture(scope="module")
def preempted_run(slurm: LocalSlurm, job_env, merged_shards, tiny_model_dir, tmp_path_factory) -> dict:
    """train.sbatch with 2 tasks, SIGUSR1 after a few steps; what was seen at the preemption and after."""
    work = tmp_path_factory.mktemp("train_job")
    output_dir = work / "run"
    stage = run_config(output_dir, tiny_model_dir, merged_shards["manifest"])["stages"][0]
    stage["steps"] = TRAIN_STEPS
    config = run_config(output_dir, tiny_model_dir, merged_shards["manifest"], stages=[stage], name="slurm-test",
                        tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                        checkpoint={"every_steps": 10_000, "keep_last": 2})
    config_path = work / "run.yaml"
    config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    metrics = output_dir / "metrics.jsonl"
    log = work / "train.out"
    with logs_on_failure(slurm, work):
        started = time.monotonic()
        job_id = slurm.sbatch([*CPU_JOB, "--ntasks-per-node=2", f"--output={log}",
                               str(REPO_ROOT / "slurm" / "train.sbatch"), str(config_path),
                               "tracking.log_every=1"], env=job_env, cwd=work)
        wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= PREEMPT_AFTER_STEPS,
                 300, f"{PREEMPT_AFTER_STEPS} logged steps", slurm, job_id)
        first_step_at = time.monotonic()
        slurm.cmd(["scancel", "--signal=USR1", job_id])
        wait_for(lambda: log.is_file() and "preempted:" in log.read_text(), 120, "preemption message", slurm, job_id)
        at_preemption = {"latest": json.loads((output_dir / "checkpoints" / "latest.json").read_text()),
                         "num_rows": len(metrics.read_text().splitlines())}
        state = slurm.wait([job_id], timeout=400)
        print(f"\nSLURM: train job {job_id}: first steps after {first_step_at - started:.1f} s, "
              f"done after {time.monotonic() - started:.1f} s (preempted at {at_preemption['latest']['tag']})",
              flush=True)
    return {"job_id": job_id, "state": state, "job": slurm.jobs(job_id)[0], "log": log, "work": work,
            "config": config, "output_dir": output_dir, **at_preemption}


def test_train_job_preempted_requeued_and_resumed_to_the_end(slurm, preempted_run):
    """SIGUSR1 reached both tasks: they checkpointed short of the end and the job requeued itself once;
    the second start resumed from that checkpoint, logged the following steps and exported the model."""
    run, out = preempted_run, preempted_run["output_dir"]
    with logs_on_failure(slurm, run["work"]):
        assert run["state"] == {run["job_id"]: "COMPLETED"}
        assert run["job"]["Restarts"] == "1", run["job"]
        starts = [line for line in run["log"].read_text().splitlines() if f"job {run['job_id']} (restart" in line]
        assert len(starts) == 2, starts
        # Checkpoint at the preemption: a complete one, short of the end, kept (keep_last=2) next to the final one.
        assert run["latest"]["stage"] == "warmup"
        stopped = int(run["latest"]["tag"].removeprefix("step"))
        assert PREEMPT_AFTER_STEPS <= stopped < TRAIN_STEPS, run["latest"]
        assert (out / "checkpoints" / "warmup" / run["latest"]["tag"]).is_dir()
        assert json.loads((out / "checkpoints" / "latest.json").read_text()) == {
            "stage": "warmup", "tag": f"step{TRAIN_STEPS:08d}"}
        # Metrics: the first start logged up to the checkpoint, the second went on with the next step.
        steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        before, after = steps[:run["num_rows"]], steps[run["num_rows"]:]
        assert before == list(range(1, stopped + 1)), before
        assert after == list(range(stopped + 1, TRAIN_STEPS + 1)), after
        # The final export.
        done = json.loads((out / "exports" / "warmup.done.json").read_text())
        assert Path(done["export"]) == out / "exports" / "warmup"
        assert {"config.json", "model.safetensors", "tokenizer.json", "colbert_linear.pt",
                "sparse_linear.pt"} <= {p.name for p in (out / "exports" / "warmup").iterdir()}
        _check_mlflow(run)


def _check_mlflow(run: dict) -> None:
    """One parent run named after the config (reopened, not duplicated, by the requeued start) and one
    nested stage run holding every step's loss; both finished."""
    from mlflow import MlflowClient

    ids = json.loads((run["output_dir"] / "mlflow_runs.json").read_text())
    client = MlflowClient(tracking_uri=run["config"]["tracking"]["uri"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert sorted(r.info.run_id for r in runs) == sorted([ids["parent"], ids["stages"]["warmup"]])
    parent, stage = client.get_run(ids["parent"]), client.get_run(ids["stages"]["warmup"])
    assert parent.info.run_name == "slurm-test" and parent.info.status == "FINISHED"
    assert stage.info.run_name == "warmup" and stage.info.status == "FINISHED"
    assert stage.data.tags["mlflow.parentRunId"] == ids["parent"]
    logged = sorted(m.step for m in client.get_metric_history(ids["stages"]["warmup"], "loss"))
    assert logged == list(range(1, TRAIN_STEPS + 1))


# ---- evaluation ------------------------------------------------------------------------------------------
def test_evaluate_job_on_the_export(slurm, job_env, preempted_run):
    """slurm/evaluate.sbatch runs `python -m framework evaluate` on the trained model (1 CPU task)."""
    probe = subprocess.run([sys.executable, "-m", "framework", "evaluate", "--help"], capture_output=True,
                           text=True, cwd=REPO_ROOT)
    if probe.returncode != 0:
        pytest.skip("`python -m framework evaluate` is not available yet: " + probe.stderr.strip()[-300:])
    work = preempted_run["work"]
    results, log = work / "eval.json", work / "evaluate.out"
    with logs_on_failure(slurm, work):
        job_id = slurm.sbatch([*CPU_JOB, f"--output={log}", str(REPO_ROOT / "slurm" / "evaluate.sbatch"),
                               "--model", str(preempted_run["output_dir"] / "exports" / "warmup"),
                               "--benchmark", "ddtp", "--tasks", "de", "--max-queries", "10", "--max-corpus", "50",
                               "--no-mlflow", "--no-progress", "--out", str(results)], env=job_env, cwd=work)
        assert slurm.wait([job_id], timeout=180) == {job_id: "COMPLETED"}
        assert results.is_file() and json.loads(results.read_text())
