"""Padding efficiency (real tokens / padded tokens) of length-bucketed vs random batching.

Lengths are log-normal, clipped to [20, 8192] tokens, like the long-tailed mix of the paper's Figure 4.
Batches pad to their own longest sample rounded up to a multiple of 8 (as framework/data/collate.py
does); batch sizes follow the paper's fine-tuning table (Table 9) per length range, divided over 8 ranks.
Bucketed batches are drawn within a bucket in random order (as the stream does: no sorting).

    python bench/padding_efficiency.py [--samples 200000] [--seed 0]
"""
from __future__ import annotations

import argparse

import numpy as np

from framework.data.buckets import DEFAULT_EDGES, PAPER_EDGES, PAPER_FINETUNE, BucketConfig, bucket_of


def padded(lengths: np.ndarray) -> int:
    return int(-(-lengths.max() // 8) * 8 * len(lengths))


def efficiency_random(lengths: np.ndarray, batch: int, rng) -> float:
    order = rng.permutation(len(lengths))
    total = sum(padded(lengths[order[i:i + batch]]) for i in range(0, len(order), batch))
    return lengths.sum() / total


def efficiency_bucketed(lengths: np.ndarray, edges: tuple[int, ...], rng, world: int = 8) -> float:
    sizes = BucketConfig(edges=edges, total_batch={e: PAPER_FINETUNE[e] for e in PAPER_EDGES if e in edges}
                         ).per_rank(world)
    buckets = np.array([bucket_of(int(n), edges) for n in lengths])
    total = 0
    for b in np.unique(buckets):
        members = rng.permutation(lengths[buckets == b])
        size = sizes[int(b)]
        total += sum(padded(members[i:i + size]) for i in range(0, len(members), size))
    return lengths.sum() / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    lengths = np.clip(rng.lognormal(mean=np.log(300), sigma=1.2, size=args.samples), 20, 8192).astype(np.int64)
    print(f"{args.samples:,} log-normal lengths (median 300, sigma 1.2) clipped to [20, 8192]; "
          f"mean {lengths.mean():.0f}, p99 {np.percentile(lengths, 99):.0f}")
    print(f"  random batches of {1152 // 8} (0-500 size per rank): {efficiency_random(lengths, 1152 // 8, rng):.3f}")
    print(f"  bucketed, paper's edges {PAPER_EDGES}: {efficiency_bucketed(lengths, PAPER_EDGES, rng):.3f}")
    print(f"  bucketed, default edges ({len(DEFAULT_EDGES)} geometric x1.1 edges incl. the paper's): "
          f"{efficiency_bucketed(lengths, DEFAULT_EDGES, rng):.3f}")


if __name__ == "__main__":
    main()
