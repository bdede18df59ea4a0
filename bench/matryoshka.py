"""Matryoshka dense: how much nDCG@10 a truncated dense vector loses, trained with and without loss.matryoshka_dims.

    python bench/matryoshka.py [--seeds 0 1 2] [--steps 60] [--dims 32 16 8 4] [--max-queries 20] [--out DIR]

Shared by every seed: a sentencepiece tokenizer and pair shards of the DDTP train split (256 tokens). Per
seed s, one tiny random XLM-R (hidden 32) initialised with seed s, trained twice with the same run seed,
data order and init, differing only in the dense loss:

    A  plain:      one dense InfoNCE at the full width
    B  Matryoshka: loss.matryoshka_dims = --dims (weights 1), an InfoNCE at each renormalised prefix

The stages are configs/demo.yaml's unsupervised (in-batch negatives) and warmup (hard negatives), --steps
each, dense head only (the sparse and multi-vector heads have no say in a dense prefix's quality; leaving
them out keeps each run about a minute). Both exports are evaluated on the DDTP dev split (--max-queries per
direction, macro average over directions) in dense mode at each width with `dense_dim` (truncate and
renormalise at inference, as `evaluate --dense-dim` does).

Printed, x100: nDCG@10 at each width for A and B (mean +- sample std over seeds), the paired difference
B - A per seed, its mean +- standard error (std of the differences / sqrt(seeds)); then the drop from the
full width to each prefix, A's drop - B's drop (> 0: Matryoshka loses less), per seed and mean +- SE. On
the tiny model the smallest default width, 4 of 32, plays the part of 128 of bge-m3's 1024.

The runs train in this one process, one after the other (tracking off). Everything goes under --out
(default: a new temp folder): per seed and arm the run config, metrics.jsonl, the export and one
results-d<N>.json per width; summary.json holds the figures. Rerunning with the same --out reuses what is done.
Keep OMP_NUM_THREADS=1 on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

from framework.config import read_yaml
from framework.resources import ddtp_dir, demo_config
from framework.starting import build_model, pair_texts, train_tokenizer, write_tokenizer_text

DDTP = ddtp_dir()
DEMO_CONFIG = demo_config()
STAGES = ("unsupervised", "warmup")
ARMS = {"A": "plain", "B": "matryoshka"}
MAX_LENGTH = 256
STARTED = time.monotonic()


def say(text: str) -> None:
    print(f"[matryoshka {(time.monotonic() - STARTED) / 60:5.1f} min] {text}", flush=True)


def prepare_data(data_dir: Path) -> tuple[Path, Path]:
    """(tokenizer, pair manifest), built once for every seed."""
    # The demo's recipe (framework/demo.py): the sample text plus the DDTP train queries and passages.
    from framework.data.prepare import ShardConfig, make_shards

    tokenizer, pairs = data_dir / "tokenizer", data_dir / "pairs"
    if (pairs / "manifest.json").is_file():
        return tokenizer, pairs / "manifest.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    text = write_tokenizer_text(data_dir / "tokenizer-text.txt", pair_texts(DDTP / "train"))
    train_tokenizer([text], tokenizer, vocab_size=8000, seed=0)
    make_shards([DDTP / "train"], ShardConfig(out_dir=pairs, tokenizer=str(tokenizer), pretokenize=True,
                                              max_length=MAX_LENGTH, progress_seconds=1000))
    return tokenizer, pairs / "manifest.json"


def run_config(out_dir: Path, model_dir: Path, manifest: Path, seed: int, steps: int, dims: list[int] | None) -> dict:
    """configs/demo.yaml's first two stages, dense head only, `steps` each; Matryoshka dims when given."""
    demo = read_yaml(DEMO_CONFIG)
    stages = []
    for stage in (s for s in demo["stages"] if s["name"] in STAGES):
        loss = dict(stage["loss"], use_sparse=False, use_colbert=False, use_self_distill=False)
        if dims:
            loss["matryoshka_dims"] = list(dims)
        stages.append(dict(stage, steps=steps, loss=loss, data=dict(stage["data"], manifest=str(manifest))))
    return {"name": out_dir.name, "output_dir": str(out_dir), "seed": seed, "model": {"path": str(model_dir)},
            "engine": demo["engine"], "tracking": {"enabled": False, "log_every": max(1, steps // 2)},
            "checkpoint": {"every_steps": 0, "keep_last": 1}, "stages": stages}


def train(raw: dict) -> Path:
    """Train one run in this process; returns its final export (reused when it exists)."""
    from framework.config import from_dict
    from framework.tracking import make_tracker
    from framework.train.config import RunConfig
    from framework.train.trainer import Trainer

    out_dir = Path(raw["output_dir"])
    export = out_dir / "exports" / raw["stages"][-1]["name"]
    if (export / "config.json").is_file():
        return export
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run.json").write_text(json.dumps(raw, indent=1))
    cfg = from_dict(RunConfig, raw)
    tracker = make_tracker(False, True, None, "matryoshka", out_dir)
    began = time.monotonic()
    try:
        result = Trainer(cfg, tracker).train()
    finally:
        tracker.close()
    say(f"  {out_dir.parent.name}/{out_dir.name}: trained in {(time.monotonic() - began) / 60:.1f} min")
    return Path(result)


def ndcg_at_dims(export: Path, dims: list[int], max_queries: int, out_dir: Path) -> dict[int, float]:
    """{width: nDCG@10} of the dense mode on DDTP dev, the vectors truncated to each width."""
    from framework.evaluate import BenchmarkConfig, EvalConfig, evaluate
    from framework.inference import M3Embedder

    embedder, scores = None, {}
    for dim in dims:
        path = out_dir / f"results-d{dim}.json"
        if not path.is_file():
            embedder = embedder or M3Embedder.from_pretrained(export)
            config = EvalConfig(modes=("dense",), dense_dim=dim, progress=False,
                                benchmark=BenchmarkConfig(max_queries=max_queries))
            evaluate(embedder, "ddtp-dev", config, out=path)
        scores[dim] = json.loads(path.read_text(encoding="utf-8"))["overall"]["dense"]["ndcg_at_10"]
    return scores


def mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return statistics.fmean(values), se


def report(args, results: dict[str, list[dict[int, float]]]) -> tuple[str, dict]:
    full, dims = args.dims[0], args.dims
    a, b = results["A"], results["B"]
    lines = [f"DDTP dev, dense nDCG@10 x100, at most {args.max_queries} queries per direction; {len(args.seeds)} seeds "
             f"{args.seeds}; stages {'+'.join(STAGES)} x {args.steps} steps; B: matryoshka_dims={dims}", "",
             "| width | A plain (mean ± std) | B Matryoshka | B - A per seed | B - A (mean ± SE) |",
             "|------:|---------------------:|-------------:|:---------------|------------------:|"]
    summary: dict = {"seeds": args.seeds, "dims": dims, "A": a, "B": b, "ndcg_diff": {}, "drop_diff": {}}
    for dim in dims:
        va, vb = [100 * r[dim] for r in a], [100 * r[dim] for r in b]
        diffs = [y - x for x, y in zip(va, vb)]
        (md, se) = mean_se(diffs)
        summary["ndcg_diff"][dim] = {"per_seed": diffs, "mean": md, "se": se}
        lines.append(f"| {dim} | {statistics.fmean(va):.2f} ± {_std(va):.2f} | {statistics.fmean(vb):.2f} ± "
                     f"{_std(vb):.2f} | {' '.join(f'{d:+.2f}' for d in diffs)} | {md:+.2f} ± {se:.2f} |")
    lines += ["", f"Drop from the full width {full} (x100): A's drop - B's drop, > 0 = Matryoshka loses less",
              "| width | A drop | B drop | A - B per seed | A - B (mean ± SE) | mean/SE |",
              "|------:|-------:|-------:|:---------------|------------------:|--------:|"]
    for dim in dims[1:]:
        drop_a = [100 * (r[full] - r[dim]) for r in a]
        drop_b = [100 * (r[full] - r[dim]) for r in b]
        diffs = [x - y for x, y in zip(drop_a, drop_b)]
        md, se = mean_se(diffs)
        summary["drop_diff"][dim] = {"per_seed": diffs, "mean": md, "se": se}
        ratio = md / se if se > 0 else float("nan")
        lines.append(f"| {dim} | {statistics.fmean(drop_a):.2f} | {statistics.fmean(drop_b):.2f} | "
                     f"{' '.join(f'{d:+.2f}' for d in diffs)} | {md:+.2f} ± {se:.2f} | {ratio:.1f} |")
    t_crit = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78}.get(len(args.seeds))
    if t_crit:
        lines.append(f"(a two-sided 95 % paired t-test with {len(args.seeds)} seeds needs |mean/SE| > {t_crit})")
    return "\n".join(lines), summary


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a new temp folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model init and run seeds")
    parser.add_argument("--steps", type=int, default=60, help="steps of each of the two stages")
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 16, 8, 4],
                        help="Matryoshka widths, the full width first (the tiny model's is 32)")
    parser.add_argument("--max-queries", type=int, default=20, help="dev queries per DDTP direction")
    args = parser.parse_args(argv)
    if args.dims != sorted(set(args.dims), reverse=True):
        parser.error(f"--dims {args.dims}: give distinct widths from the full one down, e.g. 32 16 8 4")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds} repeats a seed")
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="matryoshka-"))).resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from framework.parallel import detect_env, init_distributed, shutdown

    say(f"working in {args.out}")
    tokenizer, manifest = prepare_data(args.out / "data")
    init_distributed(detect_env())
    results: dict[str, list[dict[int, float]]] = {arm: [] for arm in ARMS}
    try:
        for seed in args.seeds:
            init = args.out / f"seed{seed}" / "init"
            if not (init / "config.json").is_file():
                build_model(tokenizer, init, size="tiny", seed=seed)
            for arm, name in ARMS.items():  # the arms alternate within each seed
                run_dir = args.out / f"seed{seed}" / name
                export = train(run_config(run_dir, init, manifest, seed, args.steps, args.dims if arm == "B" else None))
                results[arm].append(ndcg_at_dims(export, args.dims, args.max_queries, run_dir))
            say(f"seed {seed}: A {results['A'][-1]}  B {results['B'][-1]}")
    finally:
        shutdown()
    text, summary = report(args, results)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n" + text, flush=True)


if __name__ == "__main__":
    main()
