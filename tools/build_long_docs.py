"""Build the DDTP long-document task: each test synopsis must find its description hidden in 1-4k tokens.

    python tools/build_long_docs.py --ddtp /data/ddtp-full --tokenizer MODEL_DIR --out /data/ddtp-long
    python -m framework evaluate --model MODEL_DIR --benchmark /data/ddtp-long --mcls --modes dense

Per language (a task, one BEIR folder OUT/<lang>/): the first --queries test packages in the shipped
sample's md5 order (tools/ddtp/sample.py), each a query (its synopsis) whose one relevant document is
its long description placed at a random depth among long descriptions of the dev split (no package,
synopsis or description is shared between dev and test). framework/evaluate/long_docs.py documents the
construction; lengths are counted with --tokenizer (the model's, so that "4k tokens" means what the
encoder reads). A synopsis or description that repeats within a language's chosen packages is skipped
(counted), so every query has exactly one relevant document.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (python tools/build_long_docs.py): make `tools` importable from the repo root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework.evaluate.beir import read_jsonl  # noqa: E402
from framework.evaluate.long_docs import LongDocConfig, Needle, build_long_docs, write_beir_task  # noqa: E402
from tools.ddtp.sample import sample_order  # noqa: E402

DEFAULT_LANGUAGES = ("en", "de", "ru", "ja")


def read_direction(path: Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"{path} is missing; build the corpus with tools/build_ddtp.py --out DIR (or pick "
                         "languages it has)")
    return [row for _, row in read_jsonl(path)]


def choose_needles(rows: list[dict], lang: str, count: int) -> tuple[list[Needle], int]:
    """(the first `count` usable packages in sample order, how many were skipped as repeats)."""
    seen_queries, seen_texts, needles, skipped = set(), set(), [], 0
    for row in sorted(rows, key=lambda r: sample_order(r["md5"])):
        if len(needles) == count:
            break
        text = row["pos"][0]
        if row["query"] in seen_queries or text in seen_texts:
            skipped += 1
            continue
        seen_queries.add(row["query"])
        seen_texts.add(text)
        needles.append(Needle("q" + row["md5"], row["query"], text, lang))
    return needles, skipped


def build(ddtp: Path, tokenizer_dir: Path, out: Path, languages: tuple[str, ...], queries: int,
          config: LongDocConfig) -> dict:
    """Write OUT/<lang>/ for every language; returns the stats written to OUT/stats.json."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def count_tokens(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]

    stats: dict = {"config": config.__dict__, "queries_per_language": queries, "tokenizer": str(tokenizer_dir),
                   "languages": {}}
    for lang in languages:
        needles, skipped = choose_needles(read_direction(ddtp / "test" / f"{lang}.jsonl.gz"), lang, queries)
        fillers = list(dict.fromkeys(r["pos"][0] for r in read_direction(ddtp / "dev" / f"{lang}.jsonl.gz")))
        docs = build_long_docs(needles, fillers, count_tokens, config)
        write_beir_task(out / lang, needles, docs)
        tokens = sorted(d.tokens for d in docs)
        stats["languages"][lang] = {"queries": len(needles), "skipped_repeats": skipped, "fillers": len(fillers),
                                    "tokens_min": tokens[0], "tokens_median": tokens[len(tokens) // 2],
                                    "tokens_max": tokens[-1],
                                    "needle_offset_median": sorted(d.needle_offset for d in docs)[len(docs) // 2]}
        print(f"{lang}: {stats['languages'][lang]}", flush=True)
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    return stats


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddtp", type=Path, required=True, help="a full tools/build_ddtp.py build (test/, dev/)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="model or tokenizer directory")
    parser.add_argument("--out", type=Path, required=True, help="output folder (one BEIR folder per language)")
    parser.add_argument("--languages", default=",".join(DEFAULT_LANGUAGES), help="comma-separated DDTP languages")
    parser.add_argument("--queries", type=int, default=50, help="queries (= long documents) per language")
    parser.add_argument("--min-tokens", type=int, default=1024, help="shortest target document length")
    parser.add_argument("--max-tokens", type=int, default=4096, help="longest document")
    parser.add_argument("--min-depth", type=float, default=0.25, help="lowest needle depth (fraction)")
    parser.add_argument("--max-depth", type=float, default=0.9, help="highest needle depth (fraction)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws")
    args = parser.parse_args(argv)
    if args.queries < 1:
        parser.error("--queries must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = LongDocConfig(min_tokens=args.min_tokens, max_tokens=args.max_tokens, min_depth=args.min_depth,
                           max_depth=args.max_depth, seed=args.seed)
    languages = tuple(x.strip() for x in args.languages.split(",") if x.strip())
    began = time.monotonic()
    build(args.ddtp, args.tokenizer, args.out, languages, args.queries, config)
    print(f"wrote {args.out} in {time.monotonic() - began:.0f}s", flush=True)


if __name__ == "__main__":
    main()
