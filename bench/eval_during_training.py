"""Evaluation during training: its cost as a share of the stage's training time, at the demo's settings.

    python bench/eval_during_training.py [--out runs/bench-eval] [--stages warmup] [--every 20]
                                         [--max-queries 20] [--nproc 2]

Builds the demo's starting point and shards (framework/demo.py: the tiny random XLM-R, the DDTP sample
pre-tokenised at 256 tokens), then trains the demo curriculum (configs/demo.yaml) in --nproc DeepSpeed
processes with `evaluate: {benchmark: ddtp-dev, max_queries: N, every_steps: E, best_metric: all.ndcg@10}`
on the chosen stages (the others train without evaluation). Both arms are measured in the same run, interleaved:
each stage's done marker records the seconds of its training loop (steps, evaluations, checkpoints) and
of its evaluations during training, so the share is evaluation seconds / training-loop seconds; the
cost per evaluation is also given in optimizer steps (training-loop seconds without the evaluations,
per step). The stage-end evaluation (the export, BM25 included) runs outside the loop and is not counted.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from framework.config import read_yaml
from framework.demo import CONFIG, prepare_shards, starting_point, train, write_run_config


def overrides(stages: list[str], every: int, max_queries: int) -> list[str]:
    names = [stage["name"] for stage in read_yaml(CONFIG)["stages"]]
    unknown = sorted(set(stages) - set(names))
    if unknown:
        raise SystemExit(f"--stages {unknown}: the demo's stages are {names}")
    evaluate = (f"{{benchmark: ddtp-dev, max_queries: {max_queries}, every_steps: {every}, "
                "best_metric: all.ndcg@10}")
    return [f"stages.{name}.evaluate={evaluate}" for name in stages]


def report(run_dir: Path, stages: list[str]) -> None:
    print("| stage | steps | evaluations | evaluation s | training-loop s | share | one evaluation, in steps |")
    print("|---|---|---|---|---|---|---|")
    for name in stages:
        done = json.loads((run_dir / "exports" / f"{name}.done.json").read_text())
        config = read_yaml(run_dir / "config.yaml")
        steps = next(s["steps"] for s in config["stages"] if s["name"] == name)
        evals, eval_s, train_s = done["evaluations"], done["evaluation_s"], done["train_s"]
        per_step = (train_s - eval_s) / steps
        print(f"| {name} | {steps} | {evals} | {eval_s:.1f} | {train_s:.1f} | {eval_s / train_s:.3f} | "
              f"{eval_s / max(evals, 1) / per_step:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-eval"))
    parser.add_argument("--stages", nargs="+", default=["unsupervised", "warmup", "unified"])
    parser.add_argument("--every", type=int, default=20, help="evaluate.every_steps")
    parser.add_argument("--max-queries", type=int, default=20, help="ddtp-dev queries per direction")
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    out = args.out.resolve() / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    model_dir, _ = starting_point("tiny", out, seed=0)
    manifest = prepare_shards(model_dir, out)
    config = write_run_config(out, model_dir, manifest, f"sqlite:///{out / 'mlflow.db'}",
                              overrides(args.stages, args.every, args.max_queries))
    train(config, args.nproc, verbose=False)
    report(out / "run", args.stages)


if __name__ == "__main__":
    main()
