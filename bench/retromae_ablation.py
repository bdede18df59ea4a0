"""RetroMAE ablation (the direction of the paper's Table 6): fine-tuning alone vs RetroMAE, then the same fine-tuning.

    python -m bench.retromae_ablation [--seeds 0 1 2] [--retromae-steps 30] [--finetune-steps 10] [--nproc 1]
                                      [--max-queries 60] [--out DIR]

Shared by every seed: a sentencepiece tokenizer, pair shards of the DDTP train split and text shards of its
documents (every distinct synopsis and long description of data/ddtp/train, one document each; no dev or test
text), all truncated to 256 tokens. Per seed s, from one tiny random XLM-R initialised with seed s:

    A  fine-tune only:         warmup (hard negatives, all heads) -> unified (self-distillation)
    B  RetroMAE + fine-tune:   retromae (--retromae-steps on the text shards) -> the same two stages

The fine-tuning stages are configs/demo.yaml's warmup and unified, each --finetune-steps long. B runs them as
a second `python -m framework train` from the RetroMAE export, with the very config A runs (run seed s, same
stage indices), so data order, groups, dropout and the fresh heads are the same in both arms: only the
encoder they start from differs. Both final exports are evaluated on the DDTP test split (--max-queries per
direction); BM25 depends on the tokenizer alone and is evaluated once.

Printed: nDCG@10 and Recall@100 (x100) of dense, sparse, multi-vector and all, as A and B means +- std over
seeds, the paired differences B - A (mean +- std and per seed) and |mean| / standard error; then the
throughput of the RetroMAE stage over that of the warmup stage (median tokens/s of logged windows, the first
window of each stage skipped), both on documents of at most 256 tokens with the same process count. On the
tiny model (hidden 32, 8k vocabulary) RetroMAE's two vocabulary projections cost more than its encoder, so
this ratio does not carry over to XLM-R large.

Everything goes under --out (default: a new temp folder): per seed the runs' configs, logs, metrics.jsonl,
exports and results.json, and summary.json with the figures. Rerunning with the same --out and options skips
the runs and evaluations already done.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from framework.config import read_yaml
from framework.resources import ddtp_dir, demo_config
from framework.starting import build_model, pair_texts, train_tokenizer, write_tokenizer_text

REPO_ROOT = Path(__file__).resolve().parents[1]
DDTP_TRAIN = ddtp_dir() / "train"
DEMO_CONFIG = demo_config()
FINETUNE_STAGES = ("warmup", "unified")
MODES = ("dense", "sparse", "colbert", "all")
METRICS = {"ndcg_at_10": "nDCG@10", "recall_at_100": "R@100"}
MODE_LABELS = {"dense": "Dense", "sparse": "Sparse", "colbert": "Multi-vec", "all": "All", "bm25": "BM25"}
MAX_LENGTH = 256
# A random tiny encoder needs a far higher rate than the paper's 7e-5 for XLM-R large: at 2e-3 both RetroMAE
# losses fall from ln(vocab) ~ 9.0 to ~8.2 in 30 steps, at 5e-4 they hardly move.
RETROMAE_LR = 2e-3
STARTED = time.monotonic()


def say(text: str) -> None:
    minutes = (time.monotonic() - STARTED) / 60
    print(f"[ablation {minutes:5.1f} min] {text}", flush=True)


# ---------------------------------------------------------------------------------------------- shared data


def train_documents() -> list[str]:
    """Distinct synopses and long descriptions of the DDTP train split, in file order."""
    return pair_texts(DDTP_TRAIN, distinct=True)


def prepare_data(data_dir: Path) -> tuple[Path, Path, Path]:
    """(tokenizer, pair manifest, text manifest), built once for all seeds."""
    from framework.data.prepare import ShardConfig, make_shards

    tokenizer, pairs, text = data_dir / "tokenizer", data_dir / "pairs", data_dir / "text"
    if (text / "manifest.json").is_file():
        return tokenizer, pairs / "manifest.json", text / "manifest.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    documents = train_documents()
    corpus = data_dir / "documents.jsonl"
    # JSONL keeps a description's line breaks inside one document (a .txt input is one document per line).
    corpus.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in documents),
                      encoding="utf-8")
    tokenizer_text = write_tokenizer_text(data_dir / "tokenizer-text.txt", documents)
    say(f"tokenizer, then shards: {len(documents)} train documents for RetroMAE, DDTP train pairs for fine-tuning")
    train_tokenizer([tokenizer_text], tokenizer, vocab_size=8000, seed=0)
    common = dict(tokenizer=str(tokenizer), pretokenize=True, max_length=MAX_LENGTH)
    make_shards([DDTP_TRAIN], ShardConfig(out_dir=pairs, **common))
    make_shards([corpus], ShardConfig(out_dir=text, kind="text", **common))
    return tokenizer, pairs / "manifest.json", text / "manifest.json"


# -------------------------------------------------------------------------------------------- run configs


def base_config(out_dir: Path, model_dir: Path, seed: int, log_every: int) -> dict:
    demo = read_yaml(DEMO_CONFIG)
    return {"name": out_dir.name, "output_dir": str(out_dir), "seed": seed, "model": {"path": str(model_dir)},
            "engine": demo["engine"], "tracking": {"enabled": False, "log_every": log_every},
            # Only the stage-end checkpoints: the runs are minutes long and never resumed.
            "checkpoint": {"every_steps": 0, "keep_last": 1}}


def finetune_config(out_dir: Path, model_dir: Path, manifest: Path, seed: int, steps: int, log_every: int) -> dict:
    """configs/demo.yaml's warmup and unified stages, `steps` each, on the pair shards."""
    stages = {s["name"]: s for s in read_yaml(DEMO_CONFIG)["stages"]}
    picked = [dict(stages[name], steps=steps, data=dict(stages[name]["data"], manifest=str(manifest)))
              for name in FINETUNE_STAGES]
    return dict(base_config(out_dir, model_dir, seed, log_every), stages=picked)


def retromae_config(out_dir: Path, model_dir: Path, manifest: Path, seed: int, steps: int, log_every: int) -> dict:
    """One RetroMAE stage on the text shards, at the fine-tuning stages' truncation length."""
    warmup = next(s for s in read_yaml(DEMO_CONFIG)["stages"] if s["name"] == FINETUNE_STAGES[0])["data"]
    # The warmup stage's token budget per rank. Its micro-batches also carry group_size passages per query,
    # so they hold ~4x the tokens of a RetroMAE one; on the tiny CPU model tokens/s hardly depends on that
    # (a 4x larger RetroMAE budget measured the same ~1,000 tokens/s) and the smaller one keeps steps short.
    tokens = warmup["buckets"]["tokens_per_rank"]
    stage = {"name": "retromae", "kind": "retromae", "steps": steps,
             "retromae": {"max_length": MAX_LENGTH, "seed": seed},
             "data": {"manifest": str(manifest), "mix_sources": True, "passage_max_length": MAX_LENGTH,
                      "num_workers": warmup.get("num_workers", 0), "shuffle_window": warmup["shuffle_window"],
                      "buckets": {"tokens_per_rank": tokens}},
             "optim": {"lr": RETROMAE_LR, "warmup_ratio": 0.1}}
    return dict(base_config(out_dir, model_dir, seed, log_every), stages=[stage])


def train(config: dict, nproc: int) -> Path:
    """Run `python -m framework train` on `config`; returns the last stage's export."""
    out_dir = Path(config["output_dir"])
    export = out_dir / "exports" / config["stages"][-1]["name"]
    if (export / "config.json").is_file():
        say(f"  {out_dir.name}: already trained, reusing {export}")
        return export
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", MLFLOW_DISABLE_TELEMETRY="true",
               OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // nproc)))
    launcher = [sys.executable]
    if nproc > 1:
        from framework.parallel import free_port

        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port())]
    cmd = [*launcher, "-m", "framework", "train", "--config", str(path)]
    began = time.monotonic()
    progress = tuple(f"[{stage['name']}] step" for stage in config["stages"])
    with (out_dir / "train.log").open("w", encoding="utf-8") as log, \
            subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, errors="replace") as proc:
        for line in proc.stdout:
            log.write(line)
            if line.startswith(progress):  # the trainer's own progress lines; the rest stays in the log
                print(f"    {line.rstrip()}", flush=True)
    if proc.returncode != 0:
        tail = (out_dir / "train.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"{tail}\ntraining failed (exit {proc.returncode}); log {out_dir / 'train.log'}; "
                         f"command: {' '.join(cmd)}")
    say(f"  {out_dir.name}: trained in {(time.monotonic() - began) / 60:.1f} min")
    return export


# ------------------------------------------------------------------------------------------- evaluation


def evaluate_export(export: Path, modes: tuple[str, ...], max_queries: int, out: Path) -> dict:
    """{mode: {metric: value}} on the DDTP test split (macro average over directions)."""
    if not out.is_file():
        from framework.evaluate import BenchmarkConfig, EvalConfig, evaluate

        config = EvalConfig(modes=modes, progress=False, benchmark=BenchmarkConfig(max_queries=max_queries))
        began = time.monotonic()
        evaluate(export, "ddtp", config, out=out)
        say(f"  evaluated {export} in {(time.monotonic() - began) / 60:.1f} min")
    overall = json.loads(out.read_text(encoding="utf-8"))["overall"]
    return {mode: {metric: overall[mode][metric] for metric in METRICS} for mode in modes}


def median_tokens_per_s(metrics_files: list[Path], stage: str) -> tuple[float, int]:
    """Median tokens/s over `stage`'s logged windows in the files, each run's first window skipped."""
    rates = []
    for path in metrics_files:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        windows = sorted((r["step"], r["tokens_per_s"]) for r in rows if r.get("stage") == stage
                         and "tokens_per_s" in r)
        rates += [rate for _, rate in windows[1:]]
    if not rates:
        raise ValueError(f"no logged windows of stage {stage!r} after the first in {metrics_files}; run more "
                         "steps than tracking.log_every")
    return statistics.median(rates), len(rates)


# -------------------------------------------------------------------------------------------- the report


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def comparison_rows(a: list[dict], b: list[dict]) -> tuple[list[list[str]], list[str]]:
    """Table rows (x100) and the labels of the differences beyond 2 standard errors."""
    rows, significant = [], []
    for mode in MODES:
        for metric, label in METRICS.items():
            va, vb = [100 * r[mode][metric] for r in a], [100 * r[mode][metric] for r in b]
            diffs = [y - x for x, y in zip(va, vb)]
            (ma, sa), (mb, sb), (md, sd) = mean_std(va), mean_std(vb), mean_std(diffs)
            se = sd / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
            ratio = abs(md) / se if se > 0 else float("inf") if md else 0.0
            flag = " *" if ratio > 2 else ""  # nan (one seed) compares False: no claim without a spread
            if flag:
                significant.append(f"{MODE_LABELS[mode]} {label} ({md:+.2f})")
            rows.append([f"{MODE_LABELS[mode]} {label}", f"{ma:.2f} ± {sa:.2f}", f"{mb:.2f} ± {sb:.2f}",
                         f"{md:+.2f} ± {sd:.2f}", " ".join(f"{d:+.2f}" for d in diffs), f"{ratio:.1f}{flag}"])
    return rows, significant


def markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                           for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def report(args, a: list[dict], b: list[dict], bm25: dict, speed: dict) -> str:
    n = len(args.seeds)
    rows, significant = comparison_rows(a, b)
    header = ["mode / metric (x100)", "A fine-tune", "B RetroMAE + fine-tune", "B - A", f"B - A per seed {args.seeds}",
              "|B-A|/SE"]
    bm25_line = "  ".join(f"{label} {100 * bm25[metric]:.2f}" for metric, label in METRICS.items())
    t_crit = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78}.get(n)
    lines = [f"DDTP test split, at most {args.max_queries} queries per direction, macro average over directions; "
             f"{n} seed(s) {args.seeds}; mean ± sample std over seeds",
             f"A: {len(FINETUNE_STAGES)} fine-tuning stages x {args.finetune_steps} steps; "
             f"B: {args.retromae_steps} RetroMAE steps, then the same stages and seeds; {args.nproc} process(es)",
             "", markdown(header, rows), "(B - A > 0: the RetroMAE arm retrieves better)", "",
             f"BM25 (tokenizer only, once): {bm25_line}", "",
             "Beyond 2 standard errors of the paired difference (*): " + (", ".join(significant) or "none"),
             f"(SE = std of the per-seed differences / sqrt({n})"
             + (f"; with {n} seeds a two-sided 95 % paired t-test needs |B-A|/SE > {t_crit})" if t_crit else ")"),
             ""]
    r, c = speed["retromae"], speed["warmup"]
    lines += [f"Throughput at max length {MAX_LENGTH}, {args.nproc} process(es), median of logged windows "
              "(first window of each run skipped):",
              f"  retromae stage      {r[0]:>10,.0f} tokens/s  ({r[1]} windows)",
              f"  warmup (contrastive) {c[0]:>9,.0f} tokens/s  ({c[1]} windows, both arms)",
              f"  retromae / contrastive = {r[0] / c[0]:.2f}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- driver


def run_seed(args, seed: int, tokenizer: Path, pairs: Path, text: Path) -> tuple[dict, dict, Path]:
    """(A results, B results, A's final export) of one seed."""
    root = args.out / f"seed{seed}"
    init = root / "init"
    if not (init / "config.json").is_file():
        build_model(tokenizer, init, size="tiny", seed=seed)
    log_every = args.log_every
    say(f"seed {seed}: A = fine-tune only ({len(FINETUNE_STAGES)} x {args.finetune_steps} steps)")
    export_a = train(finetune_config(root / "finetune", init, pairs, seed, args.finetune_steps, log_every),
                     args.nproc)
    say(f"seed {seed}: B = RetroMAE ({args.retromae_steps} steps), then the same fine-tuning")
    adapted = train(retromae_config(root / "retromae", init, text, seed, args.retromae_steps, log_every), args.nproc)
    export_b = train(finetune_config(root / "retromae-finetune", adapted, pairs, seed, args.finetune_steps,
                                     log_every), args.nproc)
    say(f"seed {seed}: evaluating both on the DDTP test split")
    result_a = evaluate_export(export_a, MODES, args.max_queries, root / "finetune" / "results.json")
    result_b = evaluate_export(export_b, MODES, args.max_queries, root / "retromae-finetune" / "results.json")
    return result_a, result_b, export_a


def check_out_dir(args) -> None:
    """Refuse to reuse an --out made with other options (its runs would be skipped as done)."""
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    path = args.out / "options.json"
    if path.is_file() and json.loads(path.read_text()) != options:
        raise SystemExit(f"{args.out} holds runs made with other options ({path}); pass a new --out")
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(options, indent=1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a new temp folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model init and run seeds")
    parser.add_argument("--retromae-steps", type=int, default=30, help="steps of the RetroMAE stage (arm B)")
    parser.add_argument("--finetune-steps", type=int, default=10, help="steps of each fine-tuning stage")
    parser.add_argument("--nproc", type=int, default=1, choices=(1, 2), help="training processes")
    parser.add_argument("--max-queries", type=int, default=60, help="test queries per DDTP direction")
    parser.add_argument("--log-every", type=int, default=5, help="steps per logged window (throughput samples)")
    args = parser.parse_args(argv)
    if min(args.retromae_steps, args.finetune_steps) < 2 * args.log_every:
        parser.error(f"--retromae-steps and --finetune-steps must be at least 2 x --log-every ({args.log_every}): "
                     "the throughput skips each run's first logged window")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds} repeats a seed")
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="retromae-ablation-"))).resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_out_dir(args)
    say(f"working in {args.out}")
    tokenizer, pairs, text = prepare_data(args.out / "data")
    a, b, exports = [], [], []
    for seed in args.seeds:
        result_a, result_b, export_a = run_seed(args, seed, tokenizer, pairs, text)
        a.append(result_a)
        b.append(result_b)
        exports.append(export_a)
    bm25 = evaluate_export(exports[0], ("bm25",), args.max_queries, args.out / "bm25.json")["bm25"]
    seeds = [args.out / f"seed{s}" for s in args.seeds]
    speed = {"retromae": median_tokens_per_s([s / "retromae" / "metrics.jsonl" for s in seeds], "retromae"),
             "warmup": median_tokens_per_s([s / arm / "metrics.jsonl" for s in seeds
                                            for arm in ("finetune", "retromae-finetune")], "warmup")}
    (args.out / "summary.json").write_text(json.dumps({"seeds": args.seeds, "A": a, "B": b, "bm25": bm25,
                                                       "tokens_per_s": speed}, indent=1))
    say(f"done; runs and summary.json in {args.out}\n")
    print(report(args, a, b, bm25, speed), flush=True)


if __name__ == "__main__":
    main()
