"""Train a small XLM-RoBERTa-style sentencepiece tokenizer, laid out like BAAI/bge-m3's directory.

The command line over framework.starting.tokenizer (the id layout is documented there).

    python tools/train_tokenizer.py data/multilingual_sample.txt --out-dir /tmp/tok --vocab-size 3000
"""
from __future__ import annotations

import argparse

from framework.errors import run_tool
from framework.starting.tokenizer import train_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text_files", nargs="+", help="UTF-8 text files, one sentence per line")
    parser.add_argument("--out-dir", required=True, help="directory to write the tokenizer into")
    parser.add_argument("--vocab-size", type=int, default=3000, help="sentencepiece vocabulary size")
    parser.add_argument("--seed", type=int, default=0, help="sentencepiece random seed")
    parser.add_argument("--model-max-length", type=int, default=8192, help="tokenizer_config model_max_length")


def main(argv: list[str] | None = None) -> None:
    run_tool("train_tokenizer.py", __doc__, add_arguments, lambda args: train_tokenizer(
        args.text_files, args.out_dir, args.vocab_size, args.seed, args.model_max_length), argv)


if __name__ == "__main__":
    main()
