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
    # Another number of DataLoader workers is the same re-split: allowed, printed as a change.
    workers = _config(out, tiny_model_dir, shards)
    workers["stages"][0]["data"]["num_workers"] = 2
    check_run(from_dict(RunConfig, workers), done={}, point=point, world=1)
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
