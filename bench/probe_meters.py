"""Why probe-batch's CPU meter is the dispatch-mode storage ledger and not torch's profiler: both, side by side.

Two meters of the peak bytes of one training step (the probe's Prober, the tiny model, all heads,
self-distillation, split-batch), each step measured by both at once:

    ledger     framework.train.probe_memory.CpuMeter: live tensor storages (gc walk + TorchDispatchMode +
               a weak reference per storage)
    allocator  torch.profiler with profile_memory=True: every allocation and free of the c10 CPU
               allocator, replayed in time order; counts only what was allocated inside its sessions, so its
               first session covers the engine's construction and the first step

Part 1, ZeRO-0 (no asynchronous communication, everything on one thread): the two agree up to what the
ledger cannot see, kernel-internal scratch; printed as the allocator's peak over the ledger's.
Part 2, ZeRO-2 with overlap_comm (gloo's thread releases gradient buckets): the same step repeated in
fresh processes; the allocator's figures drift by a bucket between runs, the ledger's do not.

Run: python -m bench.probe_meters [--model-dir DIR] [--runs 3]   (about 5 minutes on 2 loaded cores)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ((64, 4), (64, 16), (32, 24))  # (edge, batch) measured by both meters


def allocator_peak(prof, live: int) -> tuple[int, int]:
    """(peak, live after) from a profiler's memory events, starting from `live` bytes."""
    moves = sorted(((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]"), key=lambda move: move[0])
    top = running = live
    for _, size in moves:
        running += size
        top = max(top, running)
    return top, running


def worker(model_dir: str, zero: int, out: str) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from framework.parallel import detect_env, init_distributed
    from framework.train.config import load_run_config
    from framework.train.probe import Prober
    from framework.train.probe_batches import Shape
    from framework.train.probe_memory import CpuMeter

    ds = Path(out).with_suffix(".ds.json")
    ds.write_text(json.dumps({"zero_optimization": {"stage": zero, "overlap_comm": zero == 2,
                                                    "reduce_bucket_size": 1_000_000}, "steps_per_print": 10**9}))
    stage = {"name": "s", "steps": 10, "data": {"manifest": "none.json", "group_size": 2, "query_max_length": 32,
                                                 "passage_max_length": 64,
                                                 "buckets": {"edges": [32, 64], "total_batch": {64: 8}}},
             "loss": {"preset": "reference", "use_self_distill": True}, "split_batch": {"sub_batch": 8}}
    run = load_run_config(None, data={"output_dir": "unused", "model": {"path": model_dir},
                                      "engine": {"deepspeed_config": str(ds)}, "tracking": {"enabled": False},
                                      "stages": [stage]})
    init_distributed(detect_env(), "gloo")
    ledger = CpuMeter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        prober = Prober(run, 0, ledger, usable_bytes=1 << 40)
        prober.warm_up(Shape(edge=32, query_length=32, passage_length=32, group_size=2, bucket=0))
    _, live = allocator_peak(prof, 0)
    rows = []
    for edge, batch in STEPS:  # each step measured by both meters at once
        shape = Shape(edge=edge, query_length=min(edge, 32), passage_length=edge, group_size=2,
                      bucket=[32, 64].index(edge))
        ledger_before, allocator_before = ledger.live_bytes, live
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            by_ledger = prober.step(shape, batch).peak_bytes
        by_allocator, live = allocator_peak(prof, live)
        # Each meter's rise over what it held before the step (their baselines differ: the ledger also
        # holds tensors made at import time, before the allocator's first session).
        rows.append({"edge": edge, "batch": batch, "ledger": by_ledger - ledger_before,
                     "allocator": by_allocator - allocator_before, "ledger_held": ledger_before,
                     "allocator_held": allocator_before})
    Path(out).write_text(json.dumps(rows))
    del torch


def measure(model_dir: str, zero: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rows.json")
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        subprocess.run([sys.executable, "-m", "bench.probe_meters", "--worker", model_dir, str(zero), out], env=env,
                       cwd=REPO, check=True, capture_output=True, text=True)
        return json.loads(Path(out).read_text())


def tiny_model(tmp: Path) -> str:
    """The tests' tiny random XLM-R (hidden 32, 2 layers) with a 3000-piece tokenizer."""
    from framework.resources import text_sample
    from framework.starting import build_model, train_tokenizer

    tokenizer = train_tokenizer([text_sample()], tmp / "tok", vocab_size=3000, seed=0)
    return str(build_model(tokenizer, tmp / "tiny", size="tiny", seed=0))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="HF encoder directory (default: build the tiny model)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per ZeRO stage")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or tiny_model(Path(tmp))
        for zero in (0, 2):
            print(f"ZeRO-{zero}{' with overlap_comm' if zero == 2 else ''}: a step's rise over the memory held "
                  f"before it, MB, {args.runs} fresh runs (held before: ledger / allocator)")
            runs = [measure(model_dir, zero) for _ in range(args.runs)]
            for i, (edge, batch) in enumerate(STEPS):
                ledger = [r[i]["ledger"] / 2**20 for r in runs]
                allocator = [r[i]["allocator"] / 2**20 for r in runs]
                held = " ".join(f"{r[i]['ledger_held'] / 2**20:.3f}/{r[i]['allocator_held'] / 2**20:.3f}" for r in runs)
                print(f"  edge {edge} batch {batch}: ledger {' '.join(f'{x:.3f}' for x in ledger)} | allocator "
                      f"{' '.join(f'{x:.3f}' for x in allocator)} | allocator / ledger "
                      f"{' '.join(f'{a / b:.4f}' for a, b in zip(allocator, ledger))} | held {held}")


if __name__ == "__main__":
    main()
