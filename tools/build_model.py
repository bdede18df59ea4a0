"""Write a randomly initialised XLM-RoBERTa encoder in Hugging Face format, with its tokenizer beside it.

The command line over framework.starting.random_model (model sizes and the layout are documented there).

    python tools/build_model.py --tokenizer-dir /tmp/tok --out-dir /tmp/tiny --size tiny
"""
from __future__ import annotations

import argparse

from framework.errors import run_tool
from framework.starting.random_model import SIZES, build_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer-dir", required=True, help="directory made by tools/train_tokenizer.py")
    parser.add_argument("--out-dir", required=True, help="directory to write the model into")
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES), help="named model shape")
    parser.add_argument("--max-positions", type=int, default=None, help="longest input in tokens")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")


def main(argv: list[str] | None = None) -> None:
    run_tool("build_model.py", __doc__, add_arguments, lambda args: build_model(
        args.tokenizer_dir, args.out_dir, args.size, args.max_positions, args.seed), argv)


if __name__ == "__main__":
    main()
