"""Training: config validation, batch arithmetic, split-batch, placeholder masking, and real DeepSpeed
runs (one process and two gloo processes) for resume, ZeRO stages, MLflow and the ZeRO-3 export.

The DeepSpeed runs go through tests/train_scenarios.py so that one process start-up serves several
runs; they use real shards of the shipped DDTP sample, the tiny random model and a real sqlite MLflow store.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from framework.config import from_dict
from framework.data.batch import Batch
from framework.loss import LossConfig
from framework.model import load_m3
from framework.train.batching import plan_batches
from framework.train.config import EngineConfig, OptimConfig, RunConfig, load_run_config
from framework.train.engine import freeze, resolve_ds_config, size_buckets
from framework.train.objective import M3Objective
from tests.train_scenarios import REPO_ROOT, losses, run_config

DDTP = REPO_ROOT / "data" / "ddtp" / "train"


@pytest.fixture(scope="module")
def shards(tokenizer_dir: Path, tmp_path_factory) -> Path:
    """Pre-tokenised shards of four DDTP directions (320 pairs with 7 hard negatives each)."""
    from tools.make_shards import main as make_shards

    out = tmp_path_factory.mktemp("shards")
    make_shards([str(DDTP / f"{d}.jsonl.gz") for d in ("de", "fr", "en", "de-en")] +
                ["--out", str(out), "--tokenizer", str(tokenizer_dir), "--pretokenize", "--max-length", "128",
                 "--progress-seconds", "1000"])
    return out / "manifest.json"


def _env() -> dict:
    return dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")


def _drive(specs: list[dict], tmp_path: Path, nproc: int = 1, timeout: int = 600) -> str:
    spec = tmp_path / f"spec-{time.monotonic_ns()}.json"
    spec.write_text(json.dumps(specs))
    script = str(REPO_ROOT / "tests" / "train_scenarios.py")
    from framework.parallel import free_port

    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(free_port()),
            script, str(spec)] if nproc > 1 else [sys.executable, script, str(spec)])
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout


# ---- config and arithmetic (no engine) ---------------------------------------------------------------
def _raw(tmp_path: Path, **stage) -> dict:
    base = {"name": "s", "steps": 3, "data": {"manifest": "m.json", "buckets": {"total_batch": {8192: 8}}}}
    base.update(stage)
    return {"output_dir": str(tmp_path), "model": {"path": "m"}, "stages": [base]}


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"stages\.0\.data: unknown field\(s\) \['group_sise'\]"):
        from_dict(RunConfig, _raw(tmp_path, data={"manifest": "m", "group_sise": 2}))
    with pytest.raises(ValueError, match="exactly one of steps or samples"):
        from_dict(RunConfig, _raw(tmp_path, samples=100))
    with pytest.raises(ValueError, match="loss.use_colbert is on but model.colbert is false"):
        from_dict(RunConfig, dict(_raw(tmp_path), model={"path": "m", "colbert": False}))
    with pytest.raises(ValueError, match=r"stages\.0\.optim\.lr: expected float"):
        from_dict(RunConfig, _raw(tmp_path, optim={"lr": "fast"}))
    raw = _raw(tmp_path)
    raw["stages"].append(dict(raw["stages"][0]))
    with pytest.raises(ValueError, match="used twice"):
        from_dict(RunConfig, raw)


def test_overrides_by_stage_name_and_yaml_values(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(_raw(tmp_path)))  # JSON is YAML
    cfg = load_run_config(path, ["stages.s.optim.lr=2e-5", "stages.s.freeze=['^encoder\\.embeddings']",
                                 "checkpoint.keep_last=5"])
    assert cfg.stages[0].optim.lr == 2e-5 and cfg.checkpoint.keep_last == 5
    assert cfg.stages[0].freeze == ["^encoder\\.embeddings"]
    with pytest.raises(ValueError, match="no list item named 'nope'"):
        load_run_config(path, ["stages.nope.steps=1"])


def test_batch_plan_and_deepspeed_injection(tmp_path):
    stage = from_dict(RunConfig, _raw(tmp_path, accumulation=2, data={
        "manifest": "m", "buckets": {"edges": [500, 1000], "total_batch": {500: 64, 1000: 16}}})).stages[0]
    plan = plan_batches(stage, world_size=4, manifest_edges=(500, 1000))
    assert plan.micro_per_rank == {0: 8, 1: 2}                     # 64 / (4 ranks x 2 accumulation)
    assert plan.global_batch == 64 and plan.global_batch_of(1) == 16
    ds = resolve_ds_config(EngineConfig(deepspeed_config=str(REPO_ROOT / "ds_configs/zero3.json"), zero_stage=1),
                           plan, OptimConfig(grad_clip=0.5), "fp32")
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == \
        (64, 8, 2)
    assert ds["zero_optimization"]["stage"] == 1 and ds["gradient_clipping"] == 0.5 and not ds["bf16"]["enabled"]
    with pytest.raises(ValueError, match=r"not divisible by the 24 ranks.*world size 3 x accumulation 8"):
        plan_batches(from_dict(RunConfig, _raw(tmp_path, accumulation=8, data={
            "manifest": "m", "buckets": {"edges": [500], "total_batch": {500: 100}}})).stages[0], 3, (500,))
    with pytest.raises(ValueError, match="differ from the manifest's length edges"):
        plan_batches(stage, 4, (400, 1000))
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}))
    with pytest.raises(ValueError, match="reduce_bucket_size is 'auto'"):
        resolve_ds_config(EngineConfig(deepspeed_config=str(bad)), plan, OptimConfig(), "fp32")
    bad.write_text(json.dumps({"train_batch_size": 32}))
    with pytest.raises(ValueError, match=r"sets \['train_batch_size'\], which the run derives"):
        resolve_ds_config(EngineConfig(deepspeed_config=str(bad)), plan, OptimConfig(), "fp32")


def test_bucket_sizes_come_from_the_model_unless_the_file_writes_them(tmp_path):
    plan = plan_batches(from_dict(RunConfig, _raw(tmp_path, data={"manifest": "m", "buckets": {
        "edges": [500], "total_batch": {500: 8}}})).stages[0], world_size=1, manifest_edges=(500,))

    def buckets(name: str, trainable: int, zero: int | None = None) -> dict:
        ds = resolve_ds_config(EngineConfig(deepspeed_config=str(REPO_ROOT / "ds_configs" / name), zero_stage=zero),
                               plan, OptimConfig(), "fp32")
        return {k: v for k, v in size_buckets(ds, trainable)["zero_optimization"].items() if "bucket" in k}

    # e5-small as the demo trains it (22M trainable): T / 8 rounded to 1024, not DeepSpeed's 5e8 default.
    assert buckets("zero2.json", 22_000_000) == {"reduce_bucket_size": 2_749_440, "allgather_bucket_size": 2_749_440}
    assert buckets("zero3.json", 568_000_000) == {"reduce_bucket_size": 70_999_040,
                                                  "stage3_prefetch_bucket_size": 63_899_136}
    assert buckets("zero1.json", 1_000) == {"reduce_bucket_size": 999_424, "allgather_bucket_size": 999_424}  # floor
    assert buckets("zero2.json", 10 ** 10)["reduce_bucket_size"] == 199_999_488                            # cap
    assert buckets("zero2.json", 22_000_000, zero=0) == {}
    written = tmp_path / "written.json"
    written.write_text(json.dumps({"zero_optimization": {"stage": 2, "reduce_bucket_size": 12345}}))
    assert buckets(str(written), 22_000_000) == {"reduce_bucket_size": 12345, "allgather_bucket_size": 2_749_440}


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_resolve(path):
    """Every shipped config validates and its batch table divides at the GPU count in its name."""
    import re

    from framework.data.buckets import DEFAULT_EDGES

    cfg = load_run_config(path)
    world = int(re.search(r"(\d+)gpu", path.name).group(1)) if "gpu" in path.name else 2
    for stage in cfg.stages:
        plan = plan_batches(stage, world, DEFAULT_EDGES)
        assert plan.steps >= 1
        for edge, total in stage.data.buckets.total_batch.items():  # Table 9 rows come out exactly
            assert plan.global_batch_of(DEFAULT_EDGES.index(edge)) == total, (stage.name, edge)


def test_freeze_by_pattern(tiny_model_dir):
    model, _ = load_m3(tiny_model_dir)
    frozen = freeze(model, [r"encoder\.embeddings\.position_embeddings"])
    assert frozen == ["encoder.embeddings.position_embeddings.weight"]
    assert not model.encoder.embeddings.position_embeddings.weight.requires_grad
    assert model.colbert_linear.weight.requires_grad
    with pytest.raises(ValueError, match="matches no parameter"):
        freeze(model, ["no_such_layer"])
    with pytest.raises(ValueError, match="freeze every parameter"):
        freeze(model, ["."])


def test_tokens_per_rank_below_the_shards_bucket_names_the_field_and_the_smallest_value(tmp_path, shards):
    """Checked when the plan is derived (before the engine is built), not by the stream steps later."""
    from framework.data.manifest import load_manifest
    from framework.train.batching import samples_per_bucket

    manifest = load_manifest(shards)
    populated = samples_per_bucket(manifest)
    assert populated == {13: 2, 14: 318} and samples_per_bucket(manifest, ["fr"]) == {13: 2, 14: 78}
    stage = from_dict(RunConfig, _raw(tmp_path, data={"manifest": "m", "passage_max_length": 128,
                                                      "buckets": {"tokens_per_rank": 128}})).stages[0]
    with pytest.raises(ValueError, match=r"stages\.s\.data\.buckets\.tokens_per_rank=128 is below the length bucket "
                                         r"edge 136 that the shards fill \(318 samples .*use at least tokens_per_rank: 136"):
        plan_batches(stage, 2, manifest.length_edges, populated)
    ok = dataclasses.replace(stage, data=dataclasses.replace(stage.data, buckets=dataclasses.replace(
        stage.data.buckets, tokens_per_rank=136)))
    assert plan_batches(ok, 2, manifest.length_edges, populated).micro_per_rank[14] == 1
    short = dataclasses.replace(ok, data=dataclasses.replace(ok.data, passage_max_length=64, query_max_length=64))
    with pytest.raises(ValueError, match=r"320 samples in length buckets above 112 tokens, but stages\.s\.data "
                                         r"truncates at 64; re-shard with tools/make_shards.py --max-length 64"):
        plan_batches(short, 2, manifest.length_edges, populated)


def test_lr_groups_give_matched_parameters_their_own_rate(tiny_model_dir):
    """optim.lr_groups: the first matching pattern sets a trained parameter's peak rate (frozen ones are in
    no group), decay/no-decay stays split; after one AdamW step (|update| = lr with Adam's bias correction)
    the heads moved 100x the encoder's step; a pattern matching only frozen parameters is refused."""
    from framework.config import from_dict
    from framework.model import load_m3
    from framework.train.engine import adamw, freeze, logged_lrs, lr_factor, param_groups
    from framework.train.meter import progress_line

    model, _ = load_m3(tiny_model_dir)
    freeze(model, [r"^encoder\.embeddings\."])
    cfg = from_dict(OptimConfig, {"lr": 1e-5, "weight_decay": 0.0, "lr_groups": [
        {"pattern": r"^sparse_linear\.", "lr": 1e-3}, {"pattern": r"_linear\.", "lr": 1e-4}]})
    groups = param_groups(model, cfg)
    named = {id(p): n for n, p in model.named_parameters()}
    by_name = {named[id(p)]: (g["name"], g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by_name["sparse_linear.weight"] == ("lr_groups[0]", 1e-3, 0.0)
    assert by_name["colbert_linear.bias"][:2] == ("lr_groups[1]", 1e-4)
    assert by_name["encoder.encoder.layer.0.attention.self.query.weight"][:2] == ("base", 1e-5)
    assert not any(n.startswith("encoder.embeddings.") for n in by_name)
    assert len(by_name) == sum(p.requires_grad for p in model.parameters())
    assert [g["name"] for g in groups] == ["base", "base", "lr_groups[0]", "lr_groups[0]", "lr_groups[1]",
                                           "lr_groups[1]"]

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = adamw(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor("constant", 0, 10))
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.ones_like(param)
    optimizer.step()
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()}
    assert moved["sparse_linear.weight"] == pytest.approx(1e-3, rel=1e-3)
    assert moved["colbert_linear.weight"] == pytest.approx(1e-4, rel=1e-3)
    assert moved["encoder.encoder.layer.0.output.dense.weight"] == pytest.approx(1e-5, rel=1e-3)
    assert moved["encoder.embeddings.word_embeddings.weight"] == 0
    assert logged_lrs(cfg, scheduler) == pytest.approx({"lr": 1e-5, "lr_group_0": 1e-3, "lr_group_1": 1e-4})
    assert " lr=1.00e-05/1.00e-03/1.00e-04 | " in progress_line("u", 1, 2, logged_lrs(cfg, scheduler), 1.0, 1)

    frozen_only = from_dict(OptimConfig, {"lr_groups": [{"pattern": r"word_embeddings", "lr": 1e-3}]})
    with pytest.raises(ValueError, match=r"optim\.lr_groups\[0\]\.pattern 'word_embeddings' matches no trained"):
        param_groups(model, frozen_only)
    with pytest.raises(ValueError, match=r"optim\.lr_groups\[0\]\.pattern '\(' is not a regex"):
        from_dict(OptimConfig, {"lr_groups": [{"pattern": "(", "lr": 1e-3}]})


def test_update_gate_withholds_an_update_and_nothing_else():
    """Inside `withheld`, AdamW's step changes no parameter and no moment; LambdaLR's wrapper still reaches
    the gate; the optimizer keeps its type (DeepSpeed's ZeRO accepts only the classes it lists)."""
    from framework.train.engine import UpdateGate, adamw, lr_factor

    torch.manual_seed(0)
    module = torch.nn.Linear(4, 2)
    optimizer = adamw(module, OptimConfig(lr=0.1, warmup_steps=0))
    gate = UpdateGate(optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor("linear", 0, 10))
    assert type(optimizer) is torch.optim.AdamW

    def step(hold: bool) -> None:
        module.weight.grad = torch.ones_like(module.weight)
        module.bias.grad = torch.ones_like(module.bias)
        with gate.withheld(hold):
            optimizer.step()
        scheduler.step()

    step(False)
    before = ({k: v.clone() for k, v in module.state_dict().items()},
              {k: v.clone() for k, v in optimizer.state[module.weight].items()})
    step(True)
    assert all(torch.equal(v, before[0][k]) for k, v in module.state_dict().items())
    assert all(torch.equal(v, before[1][k]) for k, v in optimizer.state[module.weight].items())
    assert gate.num_withheld == 1 and scheduler.last_epoch == 2 and not gate.holding
    step(False)
    assert not torch.equal(module.weight, before[0]["weight"]) and int(optimizer.state[module.weight]["step"]) == 2


def test_step_feed_flags_steps_with_an_empty_micro_batch_and_resumes_at_the_step_drawn_ahead(
        tmp_path, tokenizer_dir, shards):
    """The real stream (one process): over damaged shards the steps holding a batch with 0 queries are the ones
    the feed marks not runnable; a feed restored from the state saved after a step draws the same next step as
    the feed that went on (on intact shards: over a damaged one the stream's own resume position is off, as
    issue 16 reports, which the stream has to fix)."""
    from transformers import AutoTokenizer

    from framework.data.batch import TrainBatch
    from framework.data.stream import PairStream, ResumableLoader, StreamConfig
    from framework.train.steps import StepFeed

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = StreamConfig.of({13: 8, 14: 7}, group_size=2, query_max_length=64, passage_max_length=128,
                          mix_sources=True, shuffle_window=16)

    def feed(manifest: Path) -> StepFeed:
        loader = ResumableLoader(lambda state: PairStream.from_manifest(manifest, cfg, tokenizer, 0, 1, state),
                                 generator=torch.Generator().manual_seed(0))
        return StepFeed(loader, accumulation=2, total_steps=26)

    def run(manifest: Path) -> tuple[list[dict], list]:
        """Position saved after each step (0: the start) and each step's PlannedStep."""
        each, states, steps = feed(manifest), [], []
        planned = each.first(0)
        for step in range(1, 27):
            states.append(each.state_dict())
            steps.append(planned)
            planned = each.settle(step, torch.ones(2, dtype=torch.bool)).next_step
        assert planned is None
        return states, steps

    _, steps = run(_damaged_shards(shards, tmp_path))
    assert all(isinstance(b, TrainBatch) for p in steps for b in p.batches)
    empty = [i for i, p in enumerate(steps, 1) if any(b.num_samples == 0 for b in p.batches)]
    assert empty and [i for i, p in enumerate(steps, 1) if not p.runnable] == empty
    assert max(empty) <= 23 and all(b.bucket == 14 and b.source == "*" for p in steps for b in p.batches)
    states, steps = run(shards)
    assert all(p.runnable for p in steps) and states[0] == {"epoch": 0, "batches": 0, "world_size": 1, "num_workers": 1,
                                                           "layouts": []}
    for step in (1, 13, 22, 23, 25):                   # 45 batches an epoch: step 23 spans two epochs
        other = feed(shards)
        other.load_state_dict(states[step])
        again = other.first(step)
        assert [b.keys for b in again.batches] == [b.keys for b in steps[step].batches], step


def test_meter_counts_computed_positions_skips_and_bad_records(tokenizer_dir):
    """Padding efficiency uses the encoder's computed positions when the objective reports them; a skipped
    step counts its samples and keeps its records; the console lines name both."""
    from framework.data.batch import Batch
    from framework.train.meter import Meter, loss_lines
    from framework.train.objective import ForwardReport

    batch = Batch.of(torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long),
                     torch.ones(4, 16, dtype=torch.long), torch.ones(4, 16, dtype=torch.long), group_size=2,
                     stream=("de", 3))
    batch.q_mask_QL[:, 6:] = 0                              # 12 + 64 = 76 real tokens of 80 padded
    batch = Batch.of(batch.q_ids_QL, batch.q_mask_QL, batch.p_ids_PL, batch.p_mask_PL, 2, stream=("de", 3))
    batch.stats = {"truncated": 3, "missing_samples": 5}
    empty = Batch.of(*(torch.ones(0, 8, dtype=torch.long),) * 2, *(torch.ones(0, 8, dtype=torch.long),) * 2, 2)
    meter = Meter()
    meter.add(batch, {"loss": torch.tensor(2.0)})
    meter.add(batch, {"loss": torch.tensor(4.0)}, ForwardReport(computed_positions=76, attention_positions=78))
    window = meter.collect()
    assert window.metrics["loss"] == 3.0 and window.metrics["bucket"] == 3
    assert window.metrics["padding_efficiency"] == pytest.approx(152 / (80 + 76))
    assert window.metrics["attention_efficiency"] == pytest.approx(152 / (80 + 78))
    assert window.bad_records == {"missing_samples": 10} and window.metrics["records_truncated"] == 6
    meter.skip([batch, empty], "empty")
    window = meter.collect()
    assert window.metrics["skipped_steps"] == 1 and window.skipped_samples == 2 and "loss" not in window.metrics
    assert window.metrics["records_missing_samples"] == 15   # records count from the stage's start
    lines = loss_lines("warmup", 20, 10, window)
    assert lines == ["[warmup] steps 11-20: skipped 1 optimizer step(s) (1 for an empty micro-batch on some "
                     "rank); 2 samples not trained on",
                     "[warmup] steps 11-20: bad records missing_samples=5 (counted, not trained on)"]


# ---- objective: split-batch and placeholder passages ------------------------------------------------
def _batch(tokenizer, num_q: int, group: int, seed: int = 0, passage_valid_P=None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    q = torch.randint(5, vocab, (num_q, 12), generator=g)
    p = torch.randint(5, vocab, (num_q * group, 20), generator=g)
    q[:, 0] = p[:, 0] = tokenizer.cls_token_id
    q_mask, p_mask = torch.ones_like(q), torch.ones_like(p)
    p_mask[::3, 15:] = 0                                    # some padding, so sub-batches differ in length
    return Batch.of(q, q_mask, p, p_mask, group, passage_valid_P=passage_valid_P)


def test_split_batch_equals_whole_batch(tiny_model_dir):
    """Same loss and gradients with sub-batches of 3 under checkpointing (dropout off: with dropout the
    masks are drawn per sub-batch, so they differ from the whole batch's as with any other layout)."""
    results = []
    for sub_batch in (None, 3):
        torch.manual_seed(0)
        model, tok = load_m3(tiny_model_dir)
        objective = M3Objective(model, LossConfig.preset("reference"), sub_batch=sub_batch).eval()
        torch.manual_seed(1)
        terms = objective(batch=_batch(tok, 4, 2), step=0).terms
        terms["loss"].backward()
        results.append((terms["loss"].detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                 if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


def test_placeholder_passages_get_no_probability(tiny_model_dir):
    """A query without negatives trains on in-batch negatives only: its placeholder columns vanish."""
    torch.manual_seed(0)
    model, tok = load_m3(tiny_model_dir)
    model.eval()
    valid = torch.ones(6, dtype=torch.bool)
    valid[3] = False                                       # query 1's negative is a placeholder
    batch = _batch(tok, 3, 2, passage_valid_P=valid)
    cfg = LossConfig.preset("reference", use_sparse=False, use_colbert=False)
    loss = M3Objective(model, cfg)(batch=batch, step=0).terms["loss"]
    with torch.no_grad():
        scores_QP = model(batch.q_ids_QL, batch.q_mask_QL).dense_BD @ \
            model(batch.p_ids_PL, batch.p_mask_PL).dense_BD.T / cfg.temperature
    kept = valid.nonzero().squeeze(1)
    expected = F.cross_entropy(scores_QP[:, kept], torch.tensor([0, 2, 3]))  # columns 0, 2, 4 among kept
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


# ---- real DeepSpeed runs --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_shards(tokenizer_dir: Path, tmp_path_factory) -> Path:
    """Pre-tokenised document shards of the shipped multilingual sample (RetroMAE stage)."""
    from tools.make_shards import main as make_shards

    out = tmp_path_factory.mktemp("text_shards")
    make_shards([str(REPO_ROOT / "data" / "multilingual_sample.txt"), "--kind", "text", "--out", str(out),
                 "--tokenizer", str(tokenizer_dir), "--pretokenize", "--max-length", "128",
                 "--progress-seconds", "1000"])
    return out / "manifest.json"


def _kill_at_checkpoint(config: dict, tmp_path: Path, stage: str, sig: int = signal.SIGKILL) -> str:
    """Start a run, send `sig` as soon as `stage` has a complete checkpoint; returns the tag it stopped at.
    SIGUSR1 is SLURM's preemption notice: the run must checkpoint at the next step and exit 75."""
    name = Path(config["output_dir"]).name
    spec, log_path = tmp_path / f"{name}.json", tmp_path / f"{name}.log"
    spec.write_text(json.dumps([config]))
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "tests" / "train_scenarios.py"), str(spec)],
                                env=_env(), stdout=log_file, stderr=subprocess.STDOUT)
    latest = Path(config["output_dir"]) / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if latest.exists() and json.loads(latest.read_text())["stage"] == stage:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    code = proc.wait(timeout=300)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 75), (code, log_path.read_text()[-4000:])
    point = json.loads(latest.read_text())
    assert point["stage"] == stage, f"the run ended before {stage} wrote a checkpoint"
    return point["tag"]


@pytest.mark.distributed
def test_curriculum_kill_and_resume_continues_identically(tmp_path, tiny_model_dir, shards, text_shards):
    """RetroMAE then contrastive, stopped in each stage (SIGKILL in RetroMAE, SLURM's SIGUSR1 preemption
    notice in the contrastive stage) and resumed: every logged loss equals the uninterrupted run's. The contrastive stage (encoder frozen) keeps exactly the encoder the
    RetroMAE stage exported. A NaN loss stops a run naming the step and the last good checkpoint, or is
    skipped (and counted) with on_nonfinite=skip."""
    steps = 4
    retromae = {"name": "retromae", "kind": "retromae", "steps": steps, "retromae": {"max_length": 128},
                "data": {"manifest": str(text_shards), "passage_max_length": 128, "mix_sources": True,
                         "buckets": {"tokens_per_rank": 1024}, "num_workers": 0, "shuffle_window": 16},
                "optim": {"lr": 1e-3, "warmup_steps": 0}}
    warmup = run_config(tmp_path, tiny_model_dir, shards)["stages"][0]
    # The FLOPS regulariser's warm-up runs on the micro-step, so the resumed runs must match it too.
    warmup.update(steps=steps, freeze=[r"^model\.encoder\."],
                  loss={"flops_query_weight": 1e-2, "flops_passage_weight": 1e-2, "flops_warmup_steps": steps})
    stages = [retromae, warmup]
    whole = run_config(tmp_path / "whole", tiny_model_dir, shards, stages=stages)
    nan_stage = dict(warmup, name="exploding", freeze=[], optim={"lr": 1e30, "warmup_steps": 0, "grad_clip": 0.0})
    exploding = run_config(tmp_path / "nan", tiny_model_dir, shards, stages=[nan_stage])
    skipping = run_config(tmp_path / "skip", tiny_model_dir, shards, stages=[dict(nan_stage, on_nonfinite="skip")])
    # Each killed run waits at its stage's step 3 for the signal, so the kill lands after the step-2
    # checkpoint and before the stage's last step however loaded the machine is.
    killed = {stage: run_config(tmp_path / f"killed-{stage}", tiny_model_dir, shards, stages=stages,
                                _observe={"hold_at": [stage, 3]})
              for stage in ("retromae", "warmup")}
    tags = {"retromae": _kill_at_checkpoint(killed["retromae"], tmp_path, "retromae"),
            "warmup": _kill_at_checkpoint(killed["warmup"], tmp_path, "warmup", signal.SIGUSR1)}
    assert tags == {"retromae": "step00000002", "warmup": "step00000003"}, tags
    resumes = [{k: v for k, v in cfg.items() if k != "_observe"} for cfg in killed.values()]
    _drive([whole, exploding, skipping, *resumes], tmp_path)
    expected = losses(tmp_path / "whole")
    assert sorted(expected) == sorted((s, i) for s in ("retromae", "warmup") for i in range(1, steps + 1))
    assert len(set(expected.values())) > 4
    _check_sparse_health(tmp_path / "whole", "warmup", steps)
    for stage in killed:
        resumed = losses(tmp_path / f"killed-{stage}")
        assert resumed.keys() == expected.keys()
        for key in expected:
            assert resumed[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), (stage, key)
    adapted, _ = load_m3(tmp_path / "whole" / "exports" / "retromae")
    final, _ = load_m3(tmp_path / "whole" / "exports" / "warmup")
    start, _ = load_m3(tiny_model_dir)
    final_state, start_state = final.encoder.state_dict(), start.encoder.state_dict()
    changed = [k for k, v in adapted.encoder.state_dict().items() if not torch.equal(v, start_state[k])]
    assert len(changed) > 10, "RetroMAE did not change the encoder"
    for key, value in adapted.encoder.state_dict().items():
        assert torch.equal(final_state[key], value), key
    error = (tmp_path / "nan" / "error.txt").read_text()
    assert "NonFiniteLoss: non-finite loss at stage exploding, optimizer step" in error
    assert "Last good checkpoint" in error and "on_nonfinite=skip" in error
    assert not (tmp_path / "skip" / "error.txt").exists()
    skipped = losses(tmp_path / "skip", "skipped_steps")
    assert sum(skipped.values()) > 0 and (tmp_path / "skip" / "exports" / "exploding.done.json").exists()


def _check_sparse_health(output_dir: Path, stage: str, steps: int) -> None:
    """Every log step of a contrastive stage carries the sparse head's health; the FLOPS term warms up."""
    for side in ("query", "passage"):
        nonzero = losses(output_dir, f"sparse_{side}_nonzero")
        assert sorted(nonzero) == [(stage, i) for i in range(1, steps + 1)]
        assert all(v > 0 for v in nonzero.values()), nonzero
        shares = losses(output_dir, f"sparse_{side}_all_zero")
        assert all(0 <= v <= 1 for v in shares.values()) and len(shares) == steps
        assert all(v > 0 for v in losses(output_dir, f"sparse_{side}_flops").values())
        assert all(v > 0 for v in losses(output_dir, f"sparse_{side}_weight").values())
    flops = losses(output_dir, "flops_loss")
    # One micro-batch per step: lambda_t = lambda (t / T)^2 is 0 at the first micro-step, then grows.
    assert flops[(stage, 1)] == 0 and 0 < flops[(stage, 2)] < flops[(stage, 3)] < flops[(stage, 4)], flops


@pytest.mark.distributed
def test_two_ranks_zero_stages_mlflow_and_zero3_export(tmp_path, tiny_model_dir, shards):
    """One 2-process gloo launch: ZeRO 0 (all-rows gather), 2 and 3 (local-rows gather) give the same
    losses; a two-stage ZeRO-3 run is tracked in
    MLflow (parent + nested runs, metrics, artifacts) and its export equals the ZeRO-0 one and loads in
    FlagEmbedding with equal outputs."""
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stage = run_config(tmp_path, tiny_model_dir, shards)["stages"][0]
    # Matryoshka prefixes go through both gather layouts (truncated after the gather): equal losses too.
    stage.update(steps=3, loss={"matryoshka_dims": [32, 16, 8]})
    # The heads at their own rate (optim.lr_groups: more AdamW groups) in every ZeRO stage: equal losses too.
    second = dict(stage, name="unified", loss={"preset": "reference", "self_distill_start_step": 1,
                                               "matryoshka_dims": [32, 8], "matryoshka_weights": [1.0, 0.5]},
                  optim=dict(stage["optim"], lr_groups=[{"pattern": r"^model\.(sparse|colbert)_linear\.",
                                                         "lr": 10 * stage["optim"]["lr"]}]),
                  evaluate={"benchmark": "ddtp-dev", "tasks": ["de", "de-en"], "max_queries": 8})
    # ZeRO-0 scores all rows on every rank (the reference's way, gradient rescaled); ZeRO-2/3 use local
    # rows with the passages' gradient all-reduced: the same gradients, so the same losses.
    all_rows = [dict(s, gather={"dense": True, "scores": "all_rows"}) for s in (stage, second)]
    specs = [run_config(tmp_path / f"zero{z}", tiny_model_dir, shards, stages=all_rows if z == 0 else [stage, second],
                        zero_stage=z, tracking_uri=mlflow_uri if z == 3 else None, name=f"zero{z}")
             for z in (0, 2, 3)]
    _drive(specs, tmp_path, nproc=2)
    for name in ("loss", "dense_8_loss"):
        base = losses(tmp_path / "zero0", name)
        assert len(base) == 6 and len(set(base.values())) > 1
        for z in (2, 3):
            other = losses(tmp_path / f"zero{z}", name)
            assert other.keys() == base.keys()
            for key in base:
                assert other[key] == pytest.approx(base[key], rel=1e-4, abs=1e-5), (z, name, key)
    _check_mlflow(mlflow_uri)
    results = json.loads((tmp_path / "zero3" / "evaluations" / "unified.json").read_text())
    assert set(results["per_task"]) == {"de", "de-en"} and 0 <= results["overall"]["dense"]["ndcg_at_10"] <= 1
    _check_exports(tmp_path / "zero0" / "exports" / "unified", tmp_path / "zero3" / "exports" / "unified")


def _check_mlflow(uri: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("m3-embedding").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["world_size"] == "2"
    assert parents[0].data.tags["git_commit"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert set(children) == {"warmup", "unified"}
    unified = children["unified"]
    evaluations = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == unified.info.run_id]
    assert len(evaluations) == 1 and "dense_ndcg_at_10" in evaluations[0].data.metrics
    assert unified.data.tags["zero_stage"] == "3" and unified.data.params["derived.global_batch"]
    for name in ("loss", "dense_loss", "kd_loss", "lr", "tokens_per_s", "samples_per_s", "padding_efficiency",
                 "bucket", "grad_norm", "dense_8_loss", "sparse_query_nonzero", "sparse_passage_all_zero",
                 "sparse_passage_flops", "sparse_query_weight"):
        assert name in unified.data.metrics, name
    assert len(client.get_metric_history(unified.info.run_id, "loss")) == 3
    lrs = [(m.step, m.value) for m in client.get_metric_history(unified.info.run_id, "lr")]
    head_lrs = dict((m.step, m.value) for m in client.get_metric_history(unified.info.run_id, "lr_group_0"))
    assert len(lrs) == 3 and all(head_lrs[step] == pytest.approx(10 * lr) for step, lr in lrs), (lrs, head_lrs)
    artifacts = {a.path for a in client.list_artifacts(unified.info.run_id)}
    assert {"config", "model"} <= artifacts
    model_files = {Path(a.path).name for a in client.list_artifacts(unified.info.run_id, "model")}
    assert {"colbert_linear.pt", "sparse_linear.pt", "config.json"} <= model_files
    assert any(a.path.endswith("config.yaml") for a in client.list_artifacts(parents[0].info.run_id, "config"))


def _check_exports(zero0_dir: Path, zero3_dir: Path) -> None:
    from FlagEmbedding import BGEM3FlagModel

    from framework.inference import M3Embedder

    texts = ["Debian package manager", "Paketverwaltung für Debian", "x"]
    ours0 = M3Embedder.from_pretrained(zero0_dir).encode(texts, colbert=True)
    ours3 = M3Embedder.from_pretrained(zero3_dir).encode(texts, colbert=True)
    flag = BGEM3FlagModel(str(zero3_dir), use_fp16=False, devices="cpu").encode(
        texts, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    # Six AdamW steps after gradients reduced in another order (ZeRO-3 vs plain data parallel): float drift.
    torch.testing.assert_close(torch.tensor(ours3["dense_vecs"]), torch.tensor(ours0["dense_vecs"]),
                               rtol=1e-3, atol=3e-4)
    torch.testing.assert_close(torch.tensor(flag["dense_vecs"]), torch.tensor(ours3["dense_vecs"]),
                               rtol=1e-5, atol=1e-5)
    for a, b in zip(flag["colbert_vecs"], ours3["colbert_vecs"]):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-5)
    for a, b in zip(flag["lexical_weights"], ours3["lexical_weights"]):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


# ---- a stream that runs short: empty micro-batches (issue 16, failure 1) ----------------------------------
def _damaged_shards(manifest: Path, tmp_path: Path) -> Path:
    """A copy of the shards whose `de` shard lost its second half (zeroed in place, so a size check at open
    still passes): the rank reading it runs out of samples before the epoch's plan ends, and its stream
    yields batches with 0 queries while the other rank's batches are full."""
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(manifest.parent, out)
    tar = next(out.glob("de.b14.*.tar"))
    size = tar.stat().st_size
    with tar.open("r+b") as handle:
        handle.seek(size // 2)
        handle.write(b"\0" * (size - size // 2))
    return out / manifest.name


@pytest.mark.distributed
def test_empty_micro_batches_are_skipped_together_on_every_rank(tmp_path, tiny_model_dir, shards):
    """Two ranks, one of which runs dry: every rank skips the steps that hold an empty micro-batch (one
    agreement per optimizer step), the stage finishes, the skipped steps and lost samples are counted in the
    metrics and named on the console, and the bad records are printed at the log step where they occur."""
    damaged = _damaged_shards(shards, tmp_path)
    cfg = run_config(tmp_path / "short", tiny_model_dir, damaged)
    cfg["stages"][0].update(steps=24)
    cfg["tracking"]["log_every"] = 4
    out = _drive([cfg], tmp_path, nproc=2, timeout=300)
    assert not (tmp_path / "short" / "error.txt").exists(), (tmp_path / "short" / "error.txt").read_text()
    assert (tmp_path / "short" / "exports" / "warmup.done.json").exists()
    skipped = losses(tmp_path / "short", "skipped_steps")
    lost = losses(tmp_path / "short", "skipped_samples")
    assert sum(skipped.values()) >= 1 and sum(lost.values()) >= 1
    logged = losses(tmp_path / "short")
    assert sorted(logged) == [("warmup", s) for s in range(4, 25, 4)]
    assert all(v == v for v in logged.values())                       # no NaN from an empty batch
    assert "empty micro-batch" in out and "samples not trained on" in out
    assert "bad records" in out and "missing_samples" in out


def _final_checkpoint(output_dir: Path, stage: str) -> dict:
    """DeepSpeed's own record of the last checkpoint (trusted test output: a full pickle load)."""
    tag = json.loads((output_dir / "checkpoints" / "latest.json").read_text())["tag"]
    return torch.load(output_dir / "checkpoints" / stage / tag / "mp_rank_00_model_states.pt", weights_only=False,
                      map_location="cpu")


@pytest.mark.distributed
def test_skipped_steps_keep_accumulation_schedule_and_resume_aligned(tmp_path, tiny_model_dir, shards):
    """Accumulation 2, on_nonfinite=skip, a NaN loss injected at the boundary micro-batch of step 2 and at the
    first micro-batch of step 5 (train_scenarios' _poison): both steps are skipped whole; DeepSpeed still sees
    every micro-batch (its accumulation boundary stays on the trainer's steps), the schedule follows the
    trainer's step count, AdamW applied exactly the other updates, and a run killed at a checkpoint resumes
    to the same losses. ZeRO-0 withholds the update through the trainer's gate; at ZeRO-2 DeepSpeed skips the
    update itself on the NaN gradients, and the trainer steps the schedule it left behind."""
    from framework.train.engine import lr_factor

    steps, poison = 6, {"micro_steps": [3, 8], "rank": None}

    def config(name: str, zero: int) -> dict:
        cfg = run_config(tmp_path / name, tiny_model_dir, shards, zero_stage=zero)
        cfg["stages"][0].update(steps=steps, accumulation=2, on_nonfinite="skip")
        return dict(cfg, _poison=poison)

    killed = config("killed", 0)
    tag = _kill_at_checkpoint(dict(killed), tmp_path, "warmup")
    assert tag != f"step{steps:08d}", f"killed too late to test anything: {tag}"
    _drive([config("zero0", 0), config("zero2", 2), killed], tmp_path)
    for name in ("zero0", "zero2", "killed"):
        assert not (tmp_path / name / "error.txt").exists(), (tmp_path / name / "error.txt").read_text()
        skipped = losses(tmp_path / name, "skipped_steps")
        assert [s for (_, s), n in sorted(skipped.items()) if n] == [2, 5], (name, skipped)
        lrs = losses(tmp_path / name, "lr")
        factor = lr_factor("linear", 1, steps)
        assert sorted(lrs) == [("warmup", s) for s in range(1, steps + 1)]
        for (_, s), lr in lrs.items():                     # after step s the schedule has taken s steps
            assert lr == pytest.approx(5e-4 * factor(s), rel=1e-9), (name, s)
        ds = _final_checkpoint(tmp_path / name, "warmup")
        assert ds["global_steps"] == steps and ds["lr_scheduler"]["last_epoch"] == steps, name
        assert ds["steps"] == {"step": steps, "skipped": {"nonfinite": 2}}, name
    adam = _final_checkpoint(tmp_path / "zero0", "warmup")["optimizer"]["state"]
    assert {int(s["step"]) for s in adam.values()} == {steps - 2}   # the two skipped updates never happened
    expected, resumed = losses(tmp_path / "zero0"), losses(tmp_path / "killed")
    assert sorted(expected) == [("warmup", s) for s in (1, 3, 4, 6)]  # skipped steps log no loss
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert resumed[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
    zero2 = losses(tmp_path / "zero2")
    for key in expected:                                    # ZeRO-2 skipped the same steps, same losses
        assert zero2[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-5), key
