"""Train a small XLM-RoBERTa-style sentencepiece tokenizer, laid out like BAAI/bge-m3's directory.

The command line over framework.starting.tokenizer (the id layout is documented there).

    python tools/train_tokenizer.py data/multilingual_sample.txt --out-dir /tmp/tok --vocab-size 3000
"""
from __future__ import annotations

import argparse
import logging

from framework.errors import exit_on_user_error
from framework.starting.tokenizer import train_tokenizer

PROG = "train_tokenizer.py"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text_files", nargs="+", help="UTF-8 text files, one sentence per line")
    parser.add_argument("--out-dir", required=True, help="directory to write the tokenizer into")
    parser.add_argument("--vocab-size", type=int, default=3000, help="sentencepiece vocabulary size")
    parser.add_argument("--seed", type=int, default=0, help="sentencepiece random seed")
    parser.add_argument("--model-max-length", type=int, default=8192, help="tokenizer_config model_max_length")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the builder's progress lines
    with exit_on_user_error(PROG):
        train_tokenizer(args.text_files, args.out_dir, args.vocab_size, args.seed, args.model_max_length)


if __name__ == "__main__":
    main()
