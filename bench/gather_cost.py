"""Cost of the cross-rank embedding gather: measured at 2 gloo ranks here, and the bytes at paper scale.

Measured: per-call wall time of framework.parallel.gather_with_grad (shape exchange + data all_gather)
for a dense (B=64, D=1024) and a multi-vector (B=64, L=256, C=1024) fp32 tensor, and of a (1, 1) tensor
(the fixed latency of the two collectives), on 2 local gloo processes (loopback; on CPU the figures are
memory-copy bound and say little about NCCL over InfiniBand).

Arithmetic: what one optimizer step's dense gather moves at 96 ranks with XLM-R-large (D=1024) and the
paper's global batch sizes (Table 9; group size 8 = 1 positive + 7 negatives in fine-tuning, in-batch
negatives only in the unsupervised stage), in both gather modes (framework/parallel/gather.py), and the
score matrix each rank then holds.

    python bench/gather_cost.py [--repeats 20]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.multiprocessing as mp

from framework.data.buckets import PAPER_FINETUNE, PAPER_UNSUPERVISED
from framework.parallel import DistEnv, barrier, free_port, gather, gather_with_grad, init_distributed, shutdown

WORLD = 2
SHAPES = {"dense (64, 1024)": (64, 1024), "colbert (64, 256, 1024)": (64, 256, 1024)}
TARGET_RANKS = 96
DENSE_DIM, GROUP_SIZE = 1024, 8
MB = 1e6


def _timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: first use of a size allocates and connects
    times = []
    for _ in range(repeats):
        barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _worker(rank: int, port: int, repeats: int) -> None:
    torch.set_num_threads(1)
    init_distributed(DistEnv(rank=rank, world_size=WORLD, local_rank=rank, local_world_size=WORLD,
                             master_addr="127.0.0.1", master_port=port, launcher="env"), backend="gloo")
    try:
        tiny = _timed(lambda: gather(torch.zeros(1, 1)), repeats)
        if rank == 0:
            print(f"  {'(1, 1): fixed latency':<24} {'':16}  median {statistics.median(tiny) * 1e3:8.2f} ms")
        for name, shape in SHAPES.items():
            x = torch.randn(shape, requires_grad=True)
            times = _timed(lambda: gather_with_grad(x), repeats)
            if rank == 0:
                mb = x.numel() * x.element_size() / MB
                print(f"  {name:<24} {mb:7.2f} MB/rank  median {statistics.median(times) * 1e3:8.2f} ms "
                      f"(min {min(times) * 1e3:7.2f}, max {max(times) * 1e3:7.2f}); "
                      f"{WORLD * mb / statistics.median(times) / 1e3:.2f} GB/s of gathered output")
    finally:
        shutdown()


def paper_scale() -> None:
    print(f"\nDense gather per optimizer step at {TARGET_RANKS} ranks, D={DENSE_DIM}, the paper's global batch "
          f"(Table 9) spread over {TARGET_RANKS} ranks; bf16 embeddings, fp32 scores:")
    stages = (("fine-tuning", PAPER_FINETUNE, GROUP_SIZE), ("unsupervised", PAPER_UNSUPERVISED, 1))
    size = 2  # bf16
    for stage, table, group in stages:
        for edge in (min(table), max(table)):
            queries = table[edge] // TARGET_RANKS
            passages = queries * group
            num_r, num_s = queries * TARGET_RANKS, passages * TARGET_RANKS
            others = TARGET_RANKS - 1
            # all_rows: queries and passages gathered, every rank holds the R x S scores.
            all_in = others * (queries + passages) * DENSE_DIM * size
            # local_rows: passages gathered, their gradient all-reduced in backward (ring: ~2x the data).
            local_in = others * passages * DENSE_DIM * size
            reduce = 2 * num_s * DENSE_DIM * size
            print(f"  {stage:<12} len<={edge:<5} {queries:3d} q + {passages:3d} p per rank:\n"
                  f"    all_rows   receives {all_in / MB:8.1f} MB per rank; scores {num_r} x {num_s} = "
                  f"{num_r * num_s * 4 / MB:9.1f} MB per rank\n"
                  f"    local_rows receives {local_in / MB:8.1f} MB + all-reduces {reduce / MB:7.1f} MB per rank; "
                  f"scores {queries} x {num_s} = {queries * num_s * 4 / MB:7.1f} MB per rank")
    queries, tokens = PAPER_FINETUNE[500] // TARGET_RANKS, 500
    per_rank = queries * (1 + GROUP_SIZE) * tokens * DENSE_DIM * size
    print(f"  for contrast, gathering colbert vectors (bf16, L={tokens}) in fine-tuning: {per_rank / 1e9:.2f} "
          f"GB per rank, {TARGET_RANKS * per_rank / 1e9:.0f} GB gathered on every rank: multi-vector and "
          "sparse scores stay local at that scale.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"Measured on {WORLD} local gloo processes, {torch.get_num_threads()} CPU threads available, "
          f"{args.repeats} calls each:")
    mp.spawn(_worker, args=(free_port(), args.repeats), nprocs=WORLD, join=True)
    paper_scale()


if __name__ == "__main__":
    main()
