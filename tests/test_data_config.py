"""The data config: one definition for the run config and the stream, its checks, and `edges: manifest`."""
from __future__ import annotations

import pytest

from framework.config import from_dict
from framework.data.buckets import DEFAULT_EDGES
from framework.train.batching import plan_batches
from framework.train.config import RunConfig


def _stage(tmp_path, **data) -> RunConfig:
    raw = {"name": "s", "steps": 3, "data": {"manifest": "m.json", **data}}
    return from_dict(RunConfig, {"output_dir": str(tmp_path), "model": {"path": "m"}, "stages": [raw]}).stages[0]


def test_the_run_config_and_the_stream_read_one_data_class():
    from framework.data import config as data_config
    from framework.train import config as run_config

    assert run_config.DataConfig is data_config.DataConfig and run_config.BucketSection is data_config.BucketSection
    assert data_config.StreamConfig.__dataclass_fields__["data"].type in ("DataConfig", data_config.DataConfig)


def test_manifest_edges_are_checked_against_the_manifests_real_edges(tmp_path):
    """Failed before: `edges: manifest` was checked against the paper's edges when the config loaded, so
    a table keyed by the edges the shards really have (DEFAULT_EDGES' 16 ... 8192) was refused."""
    stage = _stage(tmp_path, buckets={"edges": "manifest", "total_batch": {16: 64, 8192: 8}})
    plan = plan_batches(stage, world_size=2, manifest_edges=DEFAULT_EDGES)
    assert plan.micro_per_rank[0] == 32 and plan.micro_per_rank[len(DEFAULT_EDGES) - 1] == 4
    with pytest.raises(ValueError, match=r"buckets\.total_batch has edges \[16\] that are not among the "
                                         r"manifest's length edges \[32, 64, 8192\]"):
        plan_batches(stage, 2, (32, 64, 8192))
    with pytest.raises(ValueError, match="no length edges"):
        plan_batches(stage, 2, None)


@pytest.mark.parametrize("data, pattern", [
    ({"group_size": 0}, r"data\.group_size=0"),
    ({"shuffle_window": 0}, r"data\.shuffle_window=0"),
    ({"max_bad_fraction": 2.0}, r"data\.max_bad_fraction=2\.0"),
    ({"query_max_length": 1}, r"data\.query_max_length=1"),
    ({"source_weights": {"a": 0.5}, "mix_sources": True}, r"data\.mix_sources=false"),
    ({"source_weights": {"a": 1.5}}, r"data\.source_weights must be in \(0, 1\]"),
    ({"buckets": {"total_batch": {8192: 8}, "tokens_per_rank": 4096}}, "exactly one of total_batch"),
    ({"buckets": {"edges": "paper", "total_batch": {16: 8}}}, r"edges \[16\] that are not among buckets\.edges"),
])
def test_data_errors_name_the_field(tmp_path, data, pattern):
    with pytest.raises(ValueError, match=pattern):
        _stage(tmp_path, **data)
