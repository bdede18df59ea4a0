"""Resume on another world size (framework/train/reshape.py, framework/data/resplit.py).

    preflight    allowed at ZeRO 0-3 when the global batch stays (a total_batch table the new world size
                 divides); refused, naming the fix, for a tokens_per_rank budget (its global batch grows with
                 the ranks), a table the new world size does not divide, and ZeRO offload; another
                 data.num_workers is allowed (the same re-split)
    real runs    2 ranks -> 1 and 1 rank -> 2 through the real Trainer, DeepSpeed engine and shards (ZeRO-2
                 and ZeRO-3 through DeepSpeed's universal checkpoint, ZeRO-0 as it is): the stage continues at
                 the checkpoint's step, no sample of the epoch is trained on twice, each rank's batches have the
                 new per-rank size, the ranks' RNG is re-derived (different per rank), and the converted copy is
                 gone afterwards

The sample accounting over layouts is tested on its own, without processes, in tests/test_resplit.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framework.config import from_dict
from framework.train.config import RunConfig
from tests.test_reliability import _make_shards, _point
from tests.train_scenarios import REPO_ROOT, losses, run_config

DDTP = REPO_ROOT / "data" / "ddtp" / "train"
TABLE = {"total_batch": {8192: 8}}  # 8 queries per step over all ranks, every bucket: 1 and 2 ranks divide it


@pytest.fixture(scope="module")
def shards(tokenizer_dir: Path, tmp_path_factory) -> Path:
    """Pre-tokenised shards of two DDTP directions (160 pairs), made with the tiny model's own tokenizer."""
    return _make_shards([DDTP / "de.jsonl.gz", DDTP / "fr.jsonl.gz"], tokenizer_dir, tmp_path_factory.mktemp("shards"))


def _config(out: Path, model: Path, manifest: Path, zero: int = 2, buckets: dict | None = None, **stage) -> dict:
    cfg = run_config(out, model, manifest, zero_stage=zero)
    cfg["stages"][0]["data"]["buckets"] = buckets or TABLE
    cfg["stages"][0].update(stage)
    return cfg


def test_preflight_allows_what_a_resume_on_another_world_size_supports(tmp_path, tiny_model_dir, shards, capsys):
    from framework.train.attempts import record_attempt
    from framework.train.preflight import PreflightError, check_run

    out = tmp_path / "run"
    record_attempt(out, from_dict(RunConfig, _config(out, tiny_model_dir, shards)))
    point = _point(tmp_path, ranks=2)
    for zero in (0, 1, 2, 3):
        check_run(from_dict(RunConfig, _config(out, tiny_model_dir, shards, zero)), done={}, point=point, world=1)
    # Another number of DataLoader workers is the same re-split: allowed, printed as a change, when the
    # checkpoint's position names its workers (COMPLETE's progress); refused for a checkpoint of before.
    workers = from_dict(RunConfig, dict(_config(out, tiny_model_dir, shards), stages=[
        dict(_config(out, tiny_model_dir, shards)["stages"][0],
             data=dict(_config(out, tiny_model_dir, shards)["stages"][0]["data"], num_workers=2))]))
    with pytest.raises(PreflightError, match=r"data.num_workers: 0 -> 2 \(checkpoint step00000002 was written before"):
        check_run(workers, done={}, point=point, world=1)
    progress = {"step": 2, "of": 4, "world_size": 2, "num_workers": 1}
    (point.path / "COMPLETE").write_text(json.dumps({"progress": progress, "files": {}}))
    check_run(workers, done={}, point=point, world=1)
    assert "stages.warmup.data.num_workers: 0 -> 2" in capsys.readouterr().out
    # A table that 3 ranks cannot divide: the batch plan names the divisor.
    with pytest.raises(PreflightError, match=r"the divisor is world size 3"):
        check_run(from_dict(RunConfig, _config(out, tiny_model_dir, shards)), done={}, point=point, world=3)
    # ZeRO offload: not supported on another world size.
    offload = _config(out, tiny_model_dir, shards)
    offload["engine"]["deepspeed_config"] = str(REPO_ROOT / "ds_configs" / "zero3_offload.json")
    with pytest.raises(PreflightError, match=r"written by 2 rank\(s\); this run has 1.*offloads.*Resume with 2 ranks"):
        check_run(from_dict(RunConfig, offload), done={}, point=point, world=1)


def test_preflight_refuses_a_global_batch_that_changes_with_the_world_size(tmp_path, tiny_model_dir, shards):
    from framework.train.attempts import record_attempt
    from framework.train.preflight import PreflightError, check_run

    out = tmp_path / "run"
    budget = _config(out, tiny_model_dir, shards, buckets={"tokens_per_rank": 1024})
    record_attempt(out, from_dict(RunConfig, budget))
    with pytest.raises(PreflightError) as caught:
        check_run(from_dict(RunConfig, budget), done={}, point=_point(tmp_path, ranks=2), world=1)
    message = str(caught.value)
    assert "written by 2 rank(s); this run has 1" in message and "another global batch" in message
    assert "Resume with 2 ranks" in message and "total_batch" in message


# ---- real runs: 2 ranks -> 1, 1 rank -> 2 ---------------------------------------------------------------------
STEPS, STOP = 6, 3


def _env() -> dict:
    return dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")


def _drive(specs: list[dict], tmp_path: Path, nproc: int) -> None:
    from framework.parallel import free_port

    spec = tmp_path / f"spec-{time.monotonic_ns()}.json"
    spec.write_text(json.dumps(specs))
    script = str(REPO_ROOT / "tests" / "train_scenarios.py")
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(free_port()), script, str(spec)] if nproc > 1 else [sys.executable, script, str(spec)])
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def _observed(out: Path, world: int) -> list[list[dict]]:
    """Per rank: the rows train_scenarios' observer wrote, in order."""
    return [[json.loads(line) for line in (out / f"observed-rank{r}.jsonl").read_text().splitlines()]
            for r in range(world)]


def _check_resumed(out: Path, before: int, after: int) -> None:
    """Steps 1..STOP on `before` ranks, STOP+1..STEPS on `after`; no sample trained on twice; the new
    per-rank batch; re-derived seeds; the stage finished and the universal copy is gone."""
    error = out / "error.txt"
    assert not error.exists(), error.read_text()
    assert (out / "exports" / "warmup.done.json").is_file()
    rows = _observed(out, max(before, after))
    first = [[row for row in rank if row["step"] <= STOP] for rank in rows[:before]]
    rest = [[row for row in rank if row["step"] > STOP] for rank in rows[:after]]
    assert all([r["step"] for r in rank] == list(range(1, STOP + 1)) for rank in first)
    assert all([r["step"] for r in rank] == list(range(STOP + 1, STEPS + 1)) for rank in rest)
    keys = [k for part in (first, rest) for rank in part for row in rank for micro in row["keys"] for k in micro]
    assert len(keys) == len(set(keys)), "a sample was trained on twice"
    assert len(keys) == 8 * STEPS                               # every step trained the whole global batch
    assert all(len(micro) == 8 // after for rank in rest for row in rank for micro in row["keys"])
    seeds = [rank[0]["seed"] for rank in rest]
    assert len(set(seeds)) == after and not set(seeds) & {rank[0]["seed"] for rank in first}
    assert sorted(losses(out)) == [("warmup", s) for s in range(1, STEPS + 1)]
    assert not (out / "checkpoints" / "warmup" / "universal").exists()


@pytest.mark.distributed
def test_a_stage_checkpointed_on_two_ranks_resumes_on_one_and_back(tmp_path, tiny_model_dir, shards):
    """2 -> 1 at ZeRO 0, 2 and 3 and 1 -> 2 at ZeRO 0 and 3: each run is stopped by a preemption notice at step 3
    (checkpointed there) and resumed on the other world size. After the resume ZeRO 2 and 3 (loaded from the
    universal copy) give the losses of ZeRO 0 (its whole states loaded as saved): the partitioned optimizer
    states came back on the new ranks."""
    def run(name: str, zero: int, stop: bool) -> dict:
        cfg = _config(tmp_path / name, tiny_model_dir, shards, zero, steps=STEPS)
        return dict(cfg, _observe={"preempt_at": STOP} if stop else {})

    down, up = [("down0", 0), ("down2", 2), ("down3", 3)], [("up0", 0), ("up3", 3)]
    _drive([run(n, z, True) for n, z in down], tmp_path, nproc=2)
    _drive([run(n, z, False) for n, z in down] + [run(n, z, True) for n, z in up], tmp_path, nproc=1)
    _drive([run(n, z, False) for n, z in up], tmp_path, nproc=2)
    for names, before, after in (([n for n, _ in down], 2, 1), ([n for n, _ in up], 1, 2)):
        for name in names:
            _check_resumed(tmp_path / name, before, after)
        base = losses(tmp_path / names[0])
        for name in names[1:]:
            other = losses(tmp_path / name)
            for key in base:
                assert other[key] == pytest.approx(base[key], rel=1e-4, abs=1e-5), (name, key)


class Planted:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_universal_loads_unpickle_no_code_and_keep_deepspeed_classes(tmp_path):
    """DeepSpeed's universal loaders call torch.load(weights_only=False): inside weights_only_loads a planted
    pickle is refused (it never runs), DeepSpeed's data classes still load, also after a nested safe_load."""
    import torch
    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    from framework.train.checkpoint_io import safe_load
    from framework.train.reshape import weights_only_loads

    marker, planted, scaler = tmp_path / "pwned", tmp_path / "planted.pt", tmp_path / "scaler.pt"
    torch.save({"x": Planted(marker)}, planted)
    torch.save({"scaler": LossScaler(1.0)}, scaler)
    with weights_only_loads():
        with pytest.raises(Exception, match="Weights only load failed"):
            torch.load(planted, weights_only=False)
        assert isinstance(safe_load(scaler, allow=[LossScaler])["scaler"], LossScaler)
        assert isinstance(torch.load(scaler, weights_only=False)["scaler"], LossScaler)  # still allowed here
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
