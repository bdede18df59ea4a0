"""The batch-size probe: its CPU memory meter, its extrapolation, its table, and real probes of the tiny
model through a real DeepSpeed engine in this process (world of one, gloo), against a small budget."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading

import pytest
import torch
import yaml

from framework.__main__ import main
from framework.data.manifest import Manifest
from framework.parallel import detect_env, init_distributed, is_initialized, shutdown
from framework.train.batching import plan_batches
from framework.train.config import load_run_config
from framework.train.probe import BucketProbe, BudgetTooSmall, Prober, Trial, extrapolate
from framework.train.probe_batches import Shape
from framework.train.probe_memory import GB, CpuMeter
from framework.train.probe_run import ProbeOptions, add_arguments, probe_stage, probed_edges
from framework.train.probe_run import run as run_probe
from framework.train.probe_table import ProbeResult, table_yaml
from tests.train_scenarios import REPO_ROOT

MB = 1 << 20
EDGES = [32, 64, 128, 256]


def _run_raw(tmp_path, model_dir, ds_config, **stage) -> dict:
    """A contrastive stage with every head, self-distillation and split-batch, on explicit bucket edges. The
    probe reads no shard, but the stage kind reads its manifest's prompts: a manifest without shards."""
    manifest = Manifest(shards=(), length_edges=tuple(EDGES)).save(tmp_path / "no-shards.json")
    base = {"name": "unified", "steps": 10, "accumulation": 1,
            "data": {"manifest": str(manifest), "group_size": 2, "query_max_length": 32,
                     "passage_max_length": 64, "buckets": {"edges": EDGES, "total_batch": {256: 8}}},
            "loss": {"preset": "reference", "use_self_distill": True}, "split_batch": {"sub_batch": 8}}
    base.update(stage)
    return {"name": "probe", "output_dir": str(tmp_path / "run"), "model": {"path": str(model_dir)},
            "engine": {"deepspeed_config": str(ds_config)}, "tracking": {"enabled": False}, "stages": [base]}


@pytest.fixture(scope="module")
def ds_config(tmp_path_factory):
    """ZeRO-2 with small gradient buckets (the shipped 5e8-element buckets alone are 4 GB allocated)."""
    path = tmp_path_factory.mktemp("ds") / "zero2_small.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                                                      "reduce_bucket_size": 1_000_000,
                                                      "allgather_bucket_size": 1_000_000},
                                "steps_per_print": 10**9}))
    return path


@pytest.fixture(scope="module")
def process_group():
    """A gloo group of one in this process (what deepspeed.initialize needs); the variables it exports are
    restored afterwards."""
    if is_initialized():
        pytest.skip("a process group already exists in this test process")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            patch.setenv(name, "")
            patch.delenv(name)
        init_distributed(detect_env({}), backend="gloo", timeout_s=60)
        try:
            yield
        finally:
            shutdown()


# ---- the meter, the extrapolation, the table (no engine) --------------------------------------------
def test_cpu_meter_counts_live_storages_once_and_frees_on_any_thread():
    meter = CpuMeter()
    base = meter.live_bytes
    kept = torch.empty(2 * MB, dtype=torch.uint8)
    meter.rescan()  # made outside a session: the next session's walk finds it
    with meter.session() as peak:
        a = torch.empty(MB, dtype=torch.uint8)
        b = torch.empty(3 * MB, dtype=torch.uint8)
        view = b[MB:] + 0  # a view of b (counted once) and a new 2 MB result
        del a, view
        box = [torch.empty(2 * MB, dtype=torch.uint8)]
        freeing = threading.Thread(target=box.clear)  # the last reference goes on another thread
        freeing.start()
        freeing.join()
        c = torch.empty(3 * MB, dtype=torch.uint8)
    # 2 + 1 + 3 + 2 (view + 0) = 8 at the most; then 5 + 2 (box), 5 again, 5 + 3 (c) = 8; a lost free: 10.
    assert peak.bytes - base == 8 * MB
    assert meter.live_bytes - base == (2 + 3 + 3) * MB
    del kept, b, c


def test_extrapolation_follows_the_parabola_and_never_runs_before_a_measure():
    assert extrapolate([], 8, 100) is None
    peak = {b: 100 + 10 * b + 2 * b * b for b in (1, 2, 4)}
    trials = [Trial(batch=b, peak_bytes=p, fits=True) for b, p in peak.items()]
    assert extrapolate(trials, 16, 100) == 100 + 10 * 16 + 2 * 256
    assert extrapolate(trials[:1], 3, 100) == 100 + 12 * 3  # one size: the line through the memory held before
    # Extrapolated and out-of-memory trials are no measurements.
    assert extrapolate(trials + [Trial(batch=8, peak_bytes=10**12, fits=False, extrapolated=True),
                                 Trial(batch=6, peak_bytes=0, fits=False, out_of_memory=True)],
                       16, 100) == 100 + 10 * 16 + 2 * 256


def test_probed_edges_ladder_all_and_named(tmp_path, tiny_model_dir, ds_config):
    stage = load_run_config(None, data=_run_raw(tmp_path, tiny_model_dir, ds_config)).stages[0]
    edges = tuple(EDGES)
    assert probed_edges(stage, edges, "ladder") == [32, 64]  # 64 covers the truncation, then halving
    assert probed_edges(stage, edges, "all") == [32, 64]
    assert probed_edges(stage, edges, "64") == [64]
    with pytest.raises(ValueError, match=r"--edges: \[256\] are not bucket edges .* use some of \[32, 64\]"):
        probed_edges(stage, edges, "64,256")


def test_table_is_table_9_form_and_parses_back_into_the_run_config(tmp_path, tiny_model_dir, ds_config):
    chosen = {32: 12, 64: 5}
    buckets = tuple(BucketProbe(shape=Shape(edge=e, query_length=min(e, 32), passage_length=e, group_size=2,
                                            bucket=EDGES.index(e)),
                                batch=b, trials=(Trial(batch=b, peak_bytes=GB // 10, fits=True),), capped=False,
                                seconds=1.0, step_seconds=0.5, tokens=1000) for e, b in chosen.items())
    result = ProbeResult(stage="unified", config="run.yaml", world_size=4, processes=1, accumulation=2, device="cpu",
                         budget_bytes=GB, margin=0.1, edges=tuple(EDGES), buckets=buckets, seconds=9.0)
    table = yaml.safe_load(table_yaml(result))["total_batch"]
    assert table == {32: 12 * 4 * 2, 64: 5 * 4 * 2, 256: 5 * 4 * 2}
    raw = _run_raw(tmp_path, tiny_model_dir, ds_config, accumulation=2)
    raw["stages"][0]["data"]["buckets"]["total_batch"] = table
    stage = load_run_config(None, data=raw).stages[0]
    plan = plan_batches(stage, 4, None)
    assert {EDGES[i]: n for i, n in plan.micro_per_rank.items()} == {32: 12, 64: 5}  # 128, 256: above truncation
    # The token budget keeps every bucket within its probed size (and the 64 bucket non-empty).
    assert result.tokens_per_rank() == 5 * 64
    assert all(result.tokens_per_rank() // e <= chosen[e] for e in chosen)


def test_unknown_stage_names_the_stages_and_the_flag(tmp_path, tiny_model_dir, ds_config):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_run_raw(tmp_path, tiny_model_dir, ds_config)))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match=r"has no stage 'unifed'; pass --stage with one of \['unified'\]"):
        run_probe(parser.parse_args(["--config", str(config), "--stage", "unifed"]))
    with pytest.raises(ValueError, match=r"--margin 1.5: use a share in \[0, 1\)"):
        ProbeOptions(stage="unified", margin=1.5)


def test_the_command_line_has_the_subcommand(capsys):
    with pytest.raises(SystemExit) as done:
        main(["probe-batch", "--help"])
    assert done.value.code == 0 and "--memory-gb" in capsys.readouterr().out


def test_a_budget_above_the_free_memory_is_refused(tmp_path, tiny_model_dir, ds_config):
    run = load_run_config(None, data=_run_raw(tmp_path, tiny_model_dir, ds_config))
    with pytest.raises(ValueError, match=r"--memory-gb 100000.0 is more than this rank can have .* or less"):
        probe_stage(run, ProbeOptions(stage="unified", memory_gb=1e5))


# ---- real probes: the tiny model through DeepSpeed ZeRO-2 in this process ---------------------------------
def _assert_chosen_fits_and_one_more_does_not(run, result: ProbeResult) -> None:
    """Measured again by the same meter on a fresh engine: each chosen size fits, one more does not."""
    prober = Prober(run, 0, CpuMeter(), result.usable_bytes)
    try:
        params = sum(p.numel() * p.element_size() for p in prober.built.task.objective.parameters())
        prober.warm_up(result.buckets[0].shape)
        for probe in result.buckets:
            fits, over = prober.step(probe.shape, probe.batch), prober.step(probe.shape, probe.batch + 1)
            assert fits.fits and fits.peak_bytes <= result.usable_bytes < over.peak_bytes and not over.fits
            assert fits.peak_bytes == probe.chosen.peak_bytes  # deterministic: same ids, same storages
            assert fits.peak_bytes > 4 * params  # parameters, gradients and AdamW's two moments are counted
    finally:
        prober.close()


@pytest.mark.slow
def test_probe_picks_the_largest_batch_that_fits(tmp_path, tiny_model_dir, ds_config, process_group, capsys):
    run = load_run_config(None, data=_run_raw(tmp_path, tiny_model_dir, ds_config))
    options = ProbeOptions(stage="unified", memory_gb=0.05, world_size=2)
    result = probe_stage(run, options, "run.yaml")
    out = capsys.readouterr().out
    assert "not in the measure; run under torchrun --nproc_per_node 2" in out  # one process for a table of 2
    assert [b.shape.edge for b in result.buckets] == [32, 64]
    assert all(not b.capped and b.batch > 1 and b.tokens_per_second > 0 for b in result.buckets)
    sizes = {b.shape.edge: b.batch for b in result.buckets}
    assert sizes[32] > sizes[64]  # shorter texts, more of them
    assert f"edge 64 (queries 32, passages 64 tokens, group 2): tried 1 ok" in out
    _assert_chosen_fits_and_one_more_does_not(run, result)
    # The table parses back into the run config and gives these sizes at world size 2.
    raw = _run_raw(tmp_path, tiny_model_dir, ds_config)
    raw["stages"][0]["data"]["buckets"]["total_batch"] = yaml.safe_load(table_yaml(result))["total_batch"]
    plan = plan_batches(load_run_config(None, data=raw).stages[0], 2, None)
    assert {EDGES[i]: n for i, n in plan.micro_per_rank.items()} == sizes


@pytest.mark.slow
def test_a_budget_below_one_sample_names_the_edge_and_the_fixes(tmp_path, tiny_model_dir, ds_config, process_group):
    run = load_run_config(None, data=_run_raw(tmp_path, tiny_model_dir, ds_config))
    with pytest.raises(BudgetTooSmall, match=r"stages\.unified: one sample per rank at bucket edge 64 \(queries 32, "
                                             r"passages 64 tokens, group size 2\) needs .* GB at its peak, more than "
                                             r"the usable .* Raise --memory-gb"):
        probe_stage(run, ProbeOptions(stage="unified", memory_gb=0.001, edges="64"))


@pytest.mark.slow
def test_probe_of_a_retromae_stage_measures_document_batches(tmp_path, tiny_model_dir, ds_config, process_group):
    raw = _run_raw(tmp_path, tiny_model_dir, ds_config, name="retromae", kind="retromae", loss={},
                   split_batch={}, retromae={"max_length": 64})
    run = load_run_config(None, data=raw)
    result = probe_stage(run, ProbeOptions(stage="retromae", memory_gb=0.05, edges="64"), "run.yaml")
    (probe,) = result.buckets
    assert probe.shape.passage_length == 64 and probe.batch > 1 and not probe.capped
    assert probe.tokens == probe.batch * 64  # documents only, every one at the bucket's full length
    _assert_chosen_fits_and_one_more_does_not(run, result)


@pytest.mark.slow
@pytest.mark.distributed
def test_probe_under_torchrun_measures_on_every_rank_and_rank_0_writes_the_table(tmp_path, tiny_model_dir, ds_config):
    config, out = tmp_path / "run.yaml", tmp_path / "table.yaml"
    config.write_text(yaml.safe_dump(_run_raw(tmp_path, tiny_model_dir, ds_config)))
    from framework.parallel import free_port

    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), "-m", "framework", "probe-batch", "--config", str(config), "--stage",
                           "unified", "--memory-gb", "0.05", "--edges", "32", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "not in the measure" not in done.stdout  # the gather and ZeRO run over the 2 ranks themselves
    assert done.stdout.splitlines().count("total_batch:") == 1 and "2 process(es)" in done.stdout  # rank 0 prints, once
    line = next(line for line in done.stdout.splitlines() if line.startswith("[probe unified] edge 32"))
    per_rank = int(line.split(" -> ")[1].split()[0])
    assert per_rank > 1
    table = yaml.safe_load(out.read_text())["total_batch"]
    assert table == {32: 2 * per_rank, 256: 2 * per_rank}  # x 2 ranks x 1 accumulation; 256: the last edge
