"""Padding efficiency: real tokens / token positions the encoder computes on, on real and synthetic batches.

Real batches (the figure the trainer logs): every stage of the demo curriculum (configs/demo.yaml) on
the DDTP sample's shards, the batches one rank of the demo's 2-process run draws (bench/ddtp_batches.py:
the trainer's batch plan and stream), with the stage's own group size and with group size 8. Per stage:

    padded     real tokens / padded positions of the batch (what a padded encoder computes on: every query
               padded to the longest query, every passage to the longest of the Q x G passages)
    unpadded   real tokens / sum of M3Output.computed_positions over the encoder calls of the batch
               (queries and passages): the contract's definition, from the model's own outputs
    attention  real tokens / sum of M3Output.attention_positions (the padding attention's layout keeps)

The unpadded figures come from M3Model forwards on the batches; positions depend only on the masks, so
the forward runs a 1-layer, hidden-32 random copy of the start's encoder (same family and tokenizer).

Synthetic lengths (the older table): log-normal lengths, clipped to [20, 8192] tokens, like the
long-tailed mix of the paper's Figure 4; each sample is one text padded to its batch's longest (a
multiple of 8, as framework/data/collate.py pads); batch sizes follow the paper's Table 9 over 8 ranks;
bucketed batches are drawn within a bucket in random order, as the stream does.

    python -m bench.padding_efficiency [--start tiny|e5-small] [--work /tmp/m3-bench-ddtp]
        [--synthetic-samples 200000] [--seed 0] [--no-real] [--no-synthetic]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from bench.ddtp_batches import demo_run_config, prepare, stage, stage_batches
from framework.data.buckets import DEFAULT_EDGES, PAPER_EDGES, PAPER_FINETUNE, BucketConfig, bucket_of
from framework.model import M3Model, ModelConfig, special_token_ids

STAGES = ("unsupervised", "warmup", "unified")


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


def synthetic_table(num: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=np.log(300), sigma=1.2, size=num), 20, 8192).astype(np.int64)
    print(f"\nSynthetic: {num:,} log-normal lengths (median 300, sigma 1.2) clipped to [20, 8192]; "
          f"mean {lengths.mean():.0f}, p99 {np.percentile(lengths, 99):.0f}; one text per sample, padded")
    print(f"  random batches of {1152 // 8} (0-500 size per rank): {efficiency_random(lengths, 1152 // 8, rng):.3f}")
    print(f"  bucketed, paper's edges {PAPER_EDGES}: {efficiency_bucketed(lengths, PAPER_EDGES, rng):.3f}")
    print(f"  bucketed, default edges ({len(DEFAULT_EDGES)} geometric x1.1 edges incl. the paper's): "
          f"{efficiency_bucketed(lengths, DEFAULT_EDGES, rng):.3f}")


def small_copy(model_dir: Path) -> tuple[M3Model, object]:
    """A 1-layer, hidden-32 random encoder of the start's family, with the start's tokenizer."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    config.update({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64})
    torch.manual_seed(0)
    encoder = AutoModel.from_config(config, add_pooling_layer=False)
    return M3Model(encoder, special_token_ids(tok), ModelConfig()).eval(), tok


@torch.no_grad()
def stage_efficiency(model: M3Model, batches) -> dict[str, float]:
    real = padded_positions = computed = attention = 0
    for batch in batches:
        q = model(batch.q_ids_QL, batch.q_mask_QL)
        p = model(batch.p_ids_PL, batch.p_mask_PL)
        real += batch.num_tokens
        padded_positions += batch.num_padded_tokens
        computed += q.computed_positions + p.computed_positions
        attention += q.attention_positions + p.attention_positions
    return {"padded": real / padded_positions, "unpadded": real / computed, "attention": real / attention}


def real_table(start: str, work: Path) -> None:
    model_dir, manifest = prepare(start, work)
    model, tok = small_copy(model_dir)
    run = demo_run_config(start, model_dir, manifest)
    print(f"\nReal batches: the demo's curriculum on the DDTP sample ({start} tokenizer, max 256 tokens), "
          f"rank 0 of 2, one epoch per stage")
    print(f"  {'stage':<13} {'group':>5} {'batches':>7} {'padded':>7} {'unpadded':>9} {'attention':>10}")
    for index, name in enumerate(STAGES):
        own = stage(run, name).data.group_size
        for group in sorted({own, 8}):
            st = stage(run, name, group)
            batches = list(stage_batches(st, tok, seed=run.seed + 1000 * index))
            eff = stage_efficiency(model, batches)
            print(f"  {name:<13} {group:>5} {len(batches):>7} {eff['padded']:7.3f} {eff['unpadded']:9.3f} "
                  f"{eff['attention']:10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", choices=("tiny", "e5-small", "both"), default="tiny")
    parser.add_argument("--work", type=Path, default=Path("/tmp/m3-bench-ddtp"),
                        help="starting points and shards are built here once (about 2 minutes)")
    parser.add_argument("--synthetic-samples", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--no-synthetic", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.no_real:
        for start in (("tiny", "e5-small") if args.start == "both" else (args.start,)):
            real_table(start, args.work)
    if not args.no_synthetic:
        synthetic_table(args.synthetic_samples, args.seed)


if __name__ == "__main__":
    main()
