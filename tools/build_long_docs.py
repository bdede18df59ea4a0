"""Build the DDTP long-document task: each test synopsis must find its description hidden in 1-4k tokens.

The command line over framework.evaluate.long_docs.build_ddtp_task (which documents the construction).

    python tools/build_long_docs.py --ddtp /data/ddtp-full --tokenizer MODEL_DIR --out /data/ddtp-long
    python -m framework evaluate --model MODEL_DIR --benchmark /data/ddtp-long --mcls --modes dense

Per language one BEIR folder OUT/<lang>/: the first --queries test packages in the sample order, each a
query (its synopsis) whose one relevant document is its long description placed at a random depth among
long descriptions of the dev split (no package, synopsis or description is shared between dev and
test). Lengths are counted with --tokenizer (the model's, so that "4k tokens" means what the encoder
reads); a model with 512 positions reads them only after tools/extend_positions.py.
"""
from __future__ import annotations

import argparse

from framework.errors import run_tool
from framework.evaluate.long_docs import LongDocConfig, build_ddtp_task

DEFAULT_LANGUAGES = "en,de,ru,ja"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ddtp", required=True, help="a full tools/build_ddtp.py build (its test/ and dev/ rows)")
    parser.add_argument("--tokenizer", required=True, help="model or tokenizer directory (counts the tokens)")
    parser.add_argument("--out", required=True, help="output folder (one BEIR folder per language)")
    parser.add_argument("--languages", default=DEFAULT_LANGUAGES, help="comma-separated DDTP languages")
    parser.add_argument("--queries", type=int, default=50, help="queries (= long documents) per language")
    parser.add_argument("--min-tokens", type=int, default=1024, help="shortest target document length")
    parser.add_argument("--max-tokens", type=int, default=4096, help="longest document")
    parser.add_argument("--min-depth", type=float, default=0.25, help="lowest needle depth (fraction of the length)")
    parser.add_argument("--max-depth", type=float, default=0.9, help="highest needle depth (fraction of the length)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws")


def run(args: argparse.Namespace) -> None:
    if args.queries < 1:
        raise ValueError(f"--queries {args.queries}: use at least 1")
    config = LongDocConfig(min_tokens=args.min_tokens, max_tokens=args.max_tokens, min_depth=args.min_depth,
                           max_depth=args.max_depth, seed=args.seed)
    languages = [x.strip() for x in args.languages.split(",") if x.strip()]
    build_ddtp_task(args.ddtp, args.tokenizer, args.out, languages, args.queries, config)
    print(f"wrote {args.out}", flush=True)


def main(argv: list[str] | None = None) -> None:
    run_tool("build_long_docs.py", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    main()
