"""Batch arithmetic, derived once: per-rank micro-batches, accumulation, global batch, stage length.

A stage's `buckets.total_batch` is the paper's Table 9: queries per optimizer step over all ranks. So

    micro batch per rank (bucket b) = total_batch[b] / (world_size x accumulation)

and the global batch = micro x accumulation x world_size holds exactly for every bucket (a table
that does not divide raises, naming the bucket). With `tokens_per_rank` the micro-batch is the budget
over the bucket's edge and the global batch follows from it. DeepSpeed gets the numbers of the first
(shortest) bucket; it uses them only for its own bookkeeping, since batches come from our stream.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from framework.data.buckets import BucketConfig
from framework.train.config import StageConfig
from framework.train.tasks import task_class


@dataclass(frozen=True)
class BatchPlan:
    """What one stage's steps look like at a given world size."""

    micro_per_rank: dict[int, int]
    """Bucket index -> sequences (queries) per rank per micro-batch."""
    accumulation: int
    """Micro-batches per optimizer step."""
    world_size: int
    """Data-parallel ranks."""
    steps: int
    """Optimizer steps of the stage."""

    @property
    def reference_micro(self) -> int:
        """Micro-batch of the shortest bucket (what DeepSpeed's config records)."""
        return self.micro_per_rank[min(self.micro_per_rank)]

    @property
    def global_batch(self) -> int:
        return self.reference_micro * self.accumulation * self.world_size

    def global_batch_of(self, bucket: int) -> int:
        return self.micro_per_rank[bucket] * self.accumulation * self.world_size


def samples_per_bucket(manifest, sources: list[str] | tuple[str, ...] = ()) -> dict[int, int]:
    """Bucket index -> samples of a manifest's shards (of `sources`, or all)."""
    counts: Counter = Counter()
    for shard in manifest.shards:
        if shard.num_samples and (not sources or shard.source in sources):
            counts[shard.bucket] += shard.num_samples
    return dict(counts)


def plan_batches(stage: StageConfig, world_size: int, manifest_edges: tuple[int, ...] | None,
                 populated: Mapping[int, int] | None = None) -> BatchPlan:
    """The stage's batch plan at `world_size` ranks; ValueError naming the field when it cannot work.
    `populated` (bucket index -> samples the stage's shards hold) lets it refuse buckets it gives no size."""
    try:
        buckets: BucketConfig = stage.data.buckets.bucket_config(manifest_edges)
    except ValueError as err:
        raise ValueError(f"stages.{stage.name}.data.buckets: {err}") from err
    try:
        micro = buckets.per_rank(world_size * stage.accumulation)
    except ValueError as err:
        raise ValueError(f"stages.{stage.name}.data.buckets: {err} (the divisor is world size {world_size} "
                         f"x accumulation {stage.accumulation})") from err
    # Buckets that start above the truncation length cannot hold a sample: leave them out of the plan.
    longest = max(stage.data.query_max_length, stage.data.passage_max_length)
    micro = {i: n for i, n in micro.items() if i == 0 or buckets.edges[i - 1] < longest}
    if populated:
        _check_sizes(stage, buckets, micro, populated)
    task_class(stage.kind).check_plan(stage, micro, world_size)
    plan = BatchPlan(micro, stage.accumulation, world_size, steps=1)
    if stage.steps is not None:
        steps = stage.steps
    else:
        steps = stage.samples // plan.global_batch
        if steps < 1:
            raise ValueError(f"stages.{stage.name}.samples={stage.samples} is less than one global batch "
                             f"({plan.global_batch}); raise samples or give steps")
    return BatchPlan(micro, stage.accumulation, world_size, steps)


def _check_sizes(stage: StageConfig, buckets: BucketConfig, micro: dict[int, int],
                 populated: Mapping[int, int]) -> None:
    """Every bucket the shards fill needs a batch size; name the field and the smallest value that works."""
    where = f"stages.{stage.name}.data"
    longest = max(stage.data.query_max_length, stage.data.passage_max_length)
    missing = sorted(b for b, n in populated.items() if n and b not in micro and b < len(buckets.edges))
    too_long = [b for b in missing if b > 0 and buckets.edges[b - 1] >= longest]
    unsized = [b for b in missing if b not in too_long]
    if unsized:  # only a token budget leaves buckets without a size (a total_batch table sizes every edge)
        edge = buckets.edges[unsized[-1]]
        raise ValueError(f"{where}.buckets.tokens_per_rank={buckets.tokens_per_rank} is below the length bucket "
                         f"edge {edge} that the shards fill ({sum(populated[b] for b in unsized)} samples in "
                         f"buckets up to {edge} tokens get no batch); use at least tokens_per_rank: {edge}")
    if too_long:
        raise ValueError(f"the shards hold {sum(populated[b] for b in too_long)} samples in length buckets above "
                         f"{buckets.edges[too_long[0] - 1]} tokens, but {where} truncates at {longest}; re-shard "
                         f"with tools/make_shards.py --max-length {longest}, or raise {where}.passage_max_length")
