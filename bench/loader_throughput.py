"""Loader throughput of one worker: pre-tokenised shards vs raw-text shards vs plain tar iteration.

Builds the same synthetic fine-tuning rows (1 query, 1 positive, 7 negatives of about `--words` words)
into two shard sets with framework/data/prepare (one with `.tok` ids, one without), then times, in one
process and side by side (the arms alternate, best of --repeats each):

  plain tar    WebDataset's own tar iteration (tariterators: read + group members into samples, nothing
               decoded): the ceiling, a fixed reference outside this code
  reader       framework/data/reader.py's iteration alone (what the stream reads with)
  stream       the full stream (plan, read, decode, validate, tokenise or decode ids, sample groups,
               collate) with num_workers=0, i.e. the work one DataLoader worker does

--baseline DIR (another checkout of this repository, e.g. `git worktree add /tmp/old main`) also builds
the pre-tokenised set with DIR's tools/make_shards.py and times DIR's stream on it, in a subprocess
between this tree's arms: the before/after of a change, side by side (the baseline row's plain tar and
reader columns read its shards with WebDataset and with this tree's reader). --clock cpu counts the process's
CPU seconds instead of wall seconds: on a shared machine, other processes' load then barely moves the
figures (the loader worker is one single-threaded process). Then the arithmetic of how many workers a
GPU needs at the paper's batch sizes.

    python -m bench.loader_throughput [--rows 4000] [--words 120] [--repeats 3] [--clock wall|cpu]
        [--sets pretokenized,raw] [--baseline DIR]                                   (from the repository root)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import AutoTokenizer
from webdataset.tariterators import group_by_keys, tar_file_expander

from framework.data.prepare import ShardConfig, make_shards
from framework.data.reader import iter_samples
from framework.data.stream import PairStream, StreamConfig
from framework.resources import text_sample
from framework.starting import train_tokenizer

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
BATCH, GROUP = 32, 8
# Run by --baseline in a subprocess in DIR (so DIR's `framework` is the one imported): DIR's stream over
# DIR's shards. It must work with the stream API before and after StreamConfig took the data section.
BASELINE_ARM = """
import json, sys, time
from transformers import AutoTokenizer
from framework.data.stream import PairStream, StreamConfig
manifest, tok, clock = sys.argv[1], AutoTokenizer.from_pretrained(sys.argv[2]), getattr(time, sys.argv[3])
sizes = {b: %d for b in range(200)}
cfg = (StreamConfig.of(sizes, group_size=%d, num_workers=0) if hasattr(StreamConfig, "of")
       else StreamConfig(batch_sizes=sizes, group_size=%d, num_workers=0))
stream = PairStream.from_manifest(manifest, cfg, tok, 0, 1)
start = clock()
n = sum(batch.q_ids_QL.shape[0] for batch in stream)
print(json.dumps([n, clock() - start]))
""" % (BATCH, GROUP, GROUP)


def synthetic_rows(num: int, words: int, seed: int) -> list[dict]:
    vocab = text_sample().read_text(encoding="utf-8").split()
    rng = random.Random(seed)

    def text(n):
        return " ".join(rng.choice(vocab) for _ in range(n))
    return [{"query": text(12), "pos": [text(words)], "neg": [text(words) for _ in range(7)]} for _ in range(num)]


def time_plain(paths: list[str], clock) -> tuple[int, float]:
    """WebDataset's tar iteration: members read and grouped into samples."""
    start, n = clock(), 0
    for path in paths:
        with open(path, "rb") as stream:
            n += sum(1 for _ in group_by_keys(tar_file_expander([{"url": path, "stream": stream}])))
    return n, clock() - start


def time_reader(paths: list[str], clock) -> tuple[int, float]:
    start, n = clock(), 0
    for path in paths:
        for _ in iter_samples(path):
            n += 1
    return n, clock() - start


def time_stream(manifest: Path, tok, clock) -> tuple[int, float]:
    cfg = StreamConfig.of({b: BATCH for b in range(200)}, group_size=GROUP, num_workers=0)
    stream = PairStream.from_manifest(manifest, cfg, tok, 0, 1)
    start, n = clock(), 0
    for batch in stream:
        n += batch.q_ids_QL.shape[0]
    return n, clock() - start


def time_baseline(baseline: Path, manifest: Path, tok_dir: Path, clock: str) -> tuple[int, float]:
    env = dict(os.environ, PYTHONPATH=str(baseline), TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-c", BASELINE_ARM, str(manifest), str(tok_dir), CLOCKS[clock].__name__],
                          env=env, cwd=baseline, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the baseline's stream failed:\n{done.stderr[-3000:]}")
    n, secs = json.loads(done.stdout.strip().splitlines()[-1])
    return n, secs


def baseline_shards(baseline: Path, src: Path, tok_dir: Path, out: Path) -> Path:
    """The pre-tokenised set made by the baseline's own make_shards (its shard format as it was)."""
    env = dict(os.environ, PYTHONPATH=str(baseline))
    subprocess.run([sys.executable, str(baseline / "tools" / "make_shards.py"), str(src), "--out", str(out),
                    "--tokenizer", str(tok_dir), "--pretokenize", "--shard-size", "500", "--progress-seconds",
                    "3600"], env=env, cwd=baseline, check=True, capture_output=True)
    return out / "manifest.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--words", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--sets", default="pretokenized,raw", help="shard sets to time: pretokenized, raw")
    parser.add_argument("--baseline", type=Path, help="another checkout whose stream is timed beside this one")
    args = parser.parse_args()
    clock, names = CLOCKS[args.clock], args.sets.split(",")
    work = Path(tempfile.mkdtemp(prefix="loader-bench-"))
    tok_dir = train_tokenizer([text_sample()], work / "tok", vocab_size=3000)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    src = work / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in synthetic_rows(args.rows, args.words, 0)) + "\n")
    sets = {}
    for name in names:
        make_shards([src], ShardConfig(out_dir=work / name, tokenizer=str(tok_dir), pretokenize=name == "pretokenized",
                                       shard_size=500, progress_seconds=3600))
        sets[name] = work / name / "manifest.json"
    if args.baseline is not None:
        sets["baseline"] = baseline_shards(args.baseline.resolve(), src, tok_dir, work / "baseline")
    best = {}
    for _ in range(args.repeats):  # interleaved so that machine noise hits every variant alike
        for name, manifest in sets.items():
            paths = sorted(str(p) for p in manifest.parent.glob("*.tar"))
            arms = [("plain tar", lambda: time_plain(paths, clock)), ("reader", lambda: time_reader(paths, clock)),
                    ("stream", lambda: time_stream(manifest, tok, clock))]
            if name == "baseline":
                arms.append(("baseline stream", lambda: time_baseline(args.baseline.resolve(), manifest, tok_dir,
                                                                      args.clock)))
            for kind, fn in arms:
                n, secs = fn()
                best[(name, kind)] = max(best.get((name, kind), 0.0), n / secs)
    print(f"{args.rows} rows x (1 query + 8 passages of ~{args.words} words); best of {args.repeats}, samples per "
          f"{args.clock} second, one process")
    for name in sets:
        ceiling, reader, stream = (best[(name, kind)] for kind in ("plain tar", "reader", "stream"))
        label = "baseline's shards" if name == "baseline" else name
        print(f"  {label:<17} plain tar {ceiling:7.0f}   reader {reader:7.0f}   stream {stream:7.0f}   "
              f"stream/ceiling {stream / ceiling:.2f}   stream/reader {stream / reader:.2f}")
    if "baseline" in sets:
        old = best[("baseline", "baseline stream")]
        print(f"  {args.baseline}'s stream on its shards: {old:.0f}   stream/ceiling "
              f"{old / best[('baseline', 'plain tar')]:.2f};   this tree's stream / the baseline's, same shards: "
              f"{best[('baseline', 'stream')] / old:.2f}" + (f", each on its own shards: "
              f"{best[('pretokenized', 'stream')] / old:.2f}" if "pretokenized" in sets else ""))
    if "pretokenized" in sets and "raw" in sets:
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
