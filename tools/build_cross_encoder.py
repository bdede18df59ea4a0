"""Write a randomly initialised one-logit XLM-R cross-encoder (bge-reranker-v2-m3's layout), offline.

The command line over framework.starting.cross_encoder (for tests and benchmarks of the teacher scorers).

    python tools/build_cross_encoder.py --tokenizer-dir /tmp/tok --out-dir /tmp/tiny-reranker --size tiny
"""
from __future__ import annotations

import argparse

from framework.errors import run_tool
from framework.starting.cross_encoder import build_cross_encoder
from framework.starting.random_model import SIZES

__all__ = ["build_cross_encoder", "main"]  # the tests import the builder from here too


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer-dir", required=True, help="directory made by tools/train_tokenizer.py")
    parser.add_argument("--out-dir", required=True, help="directory to write the model into")
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES), help="named model shape")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")


def run(args: argparse.Namespace) -> None:
    print(f"cross-encoder ready in {build_cross_encoder(args.tokenizer_dir, args.out_dir, args.size, args.seed)}")


def main(argv: list[str] | None = None) -> None:
    run_tool("build_cross_encoder.py", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
