"""Loader throughput of one worker: pre-tokenised shards vs raw-text shards vs plain tar iteration.

Builds the same synthetic fine-tuning rows (1 query, 1 positive, 7 negatives of about `--words` words)
into two shard sets with framework/data/prepare (one with `.tok` ids, one without), then times, in one
process and side by side: plain tar iteration over the shards (the ceiling: read + group members), and
the full stream (plan, read, decode, validate, tokenise or decode ids, sample groups, collate) with
num_workers=0, i.e. the work one DataLoader worker does. Then the arithmetic of how many workers a GPU
needs at the paper's batch sizes.

    python -m bench.loader_throughput [--rows 4000] [--words 120] [--repeats 3]    (from the repository root)
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from transformers import AutoTokenizer

from framework.data.prepare import ShardConfig, make_shards
from framework.data.reader import iter_samples
from framework.data.stream import PairStream, StreamConfig
from framework.resources import text_sample
from framework.starting import train_tokenizer


def synthetic_rows(num: int, words: int, seed: int) -> list[dict]:
    vocab = text_sample().read_text(encoding="utf-8").split()
    rng = random.Random(seed)

    def text(n):
        return " ".join(rng.choice(vocab) for _ in range(n))
    return [{"query": text(12), "pos": [text(words)], "neg": [text(words) for _ in range(7)]} for _ in range(num)]


def time_plain(paths: list[str]) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for path in paths:
        for _ in iter_samples(path):
            n += 1
    return n, time.perf_counter() - start


def time_stream(manifest: Path, tok) -> tuple[int, float]:
    cfg = StreamConfig.of({b: 32 for b in range(200)}, group_size=8, num_workers=0)
    stream = PairStream.from_manifest(manifest, cfg, tok, 0, 1)
    start, n = time.perf_counter(), 0
    for batch in stream:
        n += batch.q_ids_QL.shape[0]
    return n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--words", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loader-bench-"))
    tok_dir = train_tokenizer([text_sample()], work / "tok", vocab_size=3000)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    src = work / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in synthetic_rows(args.rows, args.words, 0)) + "\n")
    sets = {}
    for name, pre in (("pretokenized", True), ("raw", False)):
        make_shards([src], ShardConfig(out_dir=work / name, tokenizer=str(tok_dir), pretokenize=pre,
                                       shard_size=500, progress_seconds=3600))
        sets[name] = work / name / "manifest.json"
    best = {}
    for _ in range(args.repeats):  # interleaved so that machine noise hits every variant alike
        for name, manifest in sets.items():
            paths = sorted(str(p) for p in manifest.parent.glob("*.tar"))
            for kind, fn in (("plain tar", lambda: time_plain(paths)), ("stream", lambda: time_stream(manifest, tok))):
                n, secs = fn()
                best[(name, kind)] = max(best.get((name, kind), 0.0), n / secs)
    print(f"{args.rows} rows x (1 query + 8 passages of ~{args.words} words); best of {args.repeats}, samples/s, one process")
    for name in sets:
        ceiling, stream = best[(name, "plain tar")], best[(name, "stream")]
        print(f"  {name:<13} plain tar {ceiling:9.0f}   stream {stream:8.0f}   stream/ceiling {stream / ceiling:.2f}")
    workers_per_gpu(best[("pretokenized", "stream")], best[("raw", "stream")])


def workers_per_gpu(pre: float, raw: float) -> None:
    """Samples/s a GPU consumes at the paper's batch sizes, from FLOPs (assumptions printed)."""
    params = 303e6  # XLM-R-large without its 256M-parameter embedding table: the matmul work per token
    peak, mfu = 312e12, 0.4  # A100/A800 bf16 dense peak, an assumed 40% utilisation
    cases = {"fine-tuning, 0-500 bucket (1 q + 8 p)": 9 * 500, "unsupervised, 0-500 bucket (1 q + 1 p)": 2 * 500}
    print(f"Workers per GPU (XLM-R-large ~{params / 1e6:.0f}M matmul params, 6 FLOPs/param/token with "
          f"activation recompute adding ~1/3 more, {peak / 1e12:.0f} TFLOP/s x {mfu:.0%}):")
    for case, tokens in cases.items():
        flops = 8 * params * tokens  # 6 for forward+backward, +2 for the recomputed forward
        per_gpu = peak * mfu / flops
        print(f"  {case}: {tokens} tokens/sample -> {per_gpu:.0f} samples/s/GPU -> "
              f"{per_gpu / pre:.2f} pre-tokenised workers, {per_gpu / raw:.2f} raw-text workers")


if __name__ == "__main__":
    main()
