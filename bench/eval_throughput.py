"""Evaluation throughput: corpus encoding passages/s and search latency per query for every mode.

Runs framework.evaluate on DDTP directions with the tiny random model (built from the repo's tokenizer
sample into a temp folder, as the tests do) or a given --model. Latency is the search time of a mode
over all queries divided by their number, first stages included (dense_sparse = dense + sparse searches +
rescoring), index building excluded and reported apart. On CPU the encoder dominates.

    python bench/eval_throughput.py [--model DIR] [--tasks en,de,de-en,ja] [--max-queries 100] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from framework.evaluate import BenchmarkConfig, EvalConfig, evaluate
from framework.evaluate.config import LABELS
from framework.inference import M3Embedder
from framework.resources import text_sample
from framework.starting import build_model, train_tokenizer


def tiny_model(folder: Path) -> Path:
    """The tests' tiny random XLM-R (hidden 32, 2 layers) with a 3000-piece tokenizer."""
    tokenizer = train_tokenizer([text_sample()], folder / "tokenizer", vocab_size=3000, seed=0)
    return build_model(tokenizer, folder / "model", size="tiny", seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="M3 model directory (default: a tiny random model)")
    parser.add_argument("--benchmark", default="ddtp", help="benchmark name or folder")
    parser.add_argument("--tasks", default="en,de,de-en,ja", help="comma-separated tasks ('' = all)")
    parser.add_argument("--max-queries", type=int, default=100, help="queries per task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mcls", action="store_true", help="also time the MCLS dense mode")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        embedder = M3Embedder.from_pretrained(args.model or tiny_model(Path(tmp)), device="cpu")
        # The first forward pass pays one-off setup (kernels, allocator); keep it out of the figures.
        embedder.encode(["warm-up text"] * args.batch_size, colbert=True, progress=False)
        config = EvalConfig(batch_size=args.batch_size, progress=False, mcls=args.mcls, benchmark=BenchmarkConfig(
            tasks=tuple(t for t in args.tasks.split(",") if t), max_queries=args.max_queries))
        results = evaluate(embedder, args.benchmark, config)
    t = results["timings"]
    print(f"\nmodel {args.model if args.model else 'tiny random (hidden 32, 2 layers)'}, "
          f"{len(results['per_task'])} task(s) of {args.benchmark}, CPU, batch {args.batch_size}")
    print(f"corpus encoding: {t['corpus_texts']} distinct passages in {t['corpus_encode_s']:.2f} s = "
          f"{t['corpus_passages_per_s']:.1f} passages/s")
    print(f"query encoding:  {t['query_texts']} queries in {t['query_encode_s']:.2f} s = "
          f"{t['query_texts'] / t['query_encode_s']:.1f} queries/s")
    if t["encode_s"].get("corpus_mcls"):
        print(f"MCLS corpus encoding: {t['corpus_texts'] / t['encode_s']['corpus_mcls']:.1f} passages/s")
    print("index building (s, all tasks): " + ", ".join(f"{k} {v:.3f}" for k, v in t["index_build_s"].items()))
    print("\nsearch latency per query (ms), first stages included:")
    for mode, ms in t["search_ms_per_query"].items():
        print(f"  {LABELS.get(mode, mode):<14} {ms:8.3f}")


if __name__ == "__main__":
    main()
