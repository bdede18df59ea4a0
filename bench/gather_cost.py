"""Cost of the cross-rank embedding gather: measured at 2 gloo ranks here, and the bytes at paper scale.

Measured: per-call wall time of framework.parallel.gather_with_grad (shape exchange + data all_gather)
for a dense (B=64, D=1024) and a multi-vector (B=64, L=256, C=1024) fp32 tensor, and of a (1, 1) tensor
(the fixed latency of the two collectives), on 2 local gloo processes (loopback; on CPU the figures are
memory-copy bound and say little about NCCL over InfiniBand). Backward sends nothing (see gather.py).

Arithmetic: what one training step's dense gather moves at 96 ranks with XLM-R-large (D=1024), at the
paper's per-GPU batch sizes (Table 9 total batch / GPUs of that stage, appendix B.1; group size 8 =
1 positive + 7 negatives in fine-tuning, in-batch negatives only in the unsupervised stage), and the
size of the (R, S) score matrix every rank then holds.

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
# Paper appendix B.1: fine-tuning on 24 A800 GPUs, unsupervised pre-training on 96.
FINETUNE_GPUS, UNSUPERVISED_GPUS, TARGET_RANKS = 24, 96, 96
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
    print(f"\nDense gather per step at {TARGET_RANKS} ranks, D={DENSE_DIM} "
          "(per-rank batch = Table 9 total batch / GPUs of that stage):")
    stages = (("fine-tuning", PAPER_FINETUNE, FINETUNE_GPUS, GROUP_SIZE),
              ("unsupervised", PAPER_UNSUPERVISED, UNSUPERVISED_GPUS, 1))
    for stage, table, gpus, group in stages:
        for edge in (min(table), max(table)):
            queries = table[edge] // gpus
            texts = queries * (1 + group)  # queries + their passages
            num_r, num_s = queries * TARGET_RANKS, queries * group * TARGET_RANKS
            for dtype, size in (("fp32", 4), ("bf16", 2)):
                sent = texts * DENSE_DIM * size
                print(f"  {stage:<12} len<={edge:<5} {queries:3d} q + {queries * group:3d} p/rank {dtype}: sends "
                      f"{sent / MB:7.2f} MB, receives {(TARGET_RANKS - 1) * sent / MB:8.1f} MB per rank "
                      f"(ring), {TARGET_RANKS * (TARGET_RANKS - 1) * sent / 1e9:6.1f} GB over all ranks; "
                      f"scores_RS {num_r} x {num_s} fp32 = {num_r * num_s * 4 / MB:8.1f} MB per rank")
    queries, tokens, colbert_bytes = PAPER_FINETUNE[500] // FINETUNE_GPUS, 500, 2
    per_rank = queries * (1 + GROUP_SIZE) * tokens * DENSE_DIM * colbert_bytes
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
