"""Batch arithmetic, derived once: per-rank micro-batches, accumulation, global batch, stage length.

A stage's `buckets.total_batch` is the paper's Table 9: queries per optimizer step over all ranks. So

    micro batch per rank (bucket b) = total_batch[b] / (world_size x accumulation)

and the global batch = micro x accumulation x world_size holds exactly for every bucket (a table
that does not divide raises, naming the bucket). With `tokens_per_rank` the micro-batch is the budget
over the bucket's edge and the global batch follows from it. DeepSpeed gets the numbers of the first
(shortest) bucket; it uses them only for its own bookkeeping, since batches come from our stream.
"""
from __future__ import annotations

from dataclasses import dataclass

from framework.data.buckets import BucketConfig
from framework.train.config import StageConfig


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


def plan_batches(stage: StageConfig, world_size: int, manifest_edges: tuple[int, ...] | None) -> BatchPlan:
    """The stage's batch plan at `world_size` ranks; ValueError naming the field when it cannot work."""
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
    # Without hard negatives a query's negatives are the other passages its loss sees: this rank's, or
    # every rank's when the dense scores are gathered.
    seen = world_size if stage.gather.dense else 1
    if stage.kind == "contrastive" and stage.data.group_size == 1 and min(micro.values()) * seen < 2:
        raise ValueError(f"stages.{stage.name}: group size 1 with one query per step has no negative at all "
                         "(the loss is 0); raise the batch size or the group size")
    plan = BatchPlan(micro, stage.accumulation, world_size, steps=1)
    if stage.steps is not None:
        steps = stage.steps
    else:
        steps = stage.samples // plan.global_batch
        if steps < 1:
            raise ValueError(f"stages.{stage.name}.samples={stage.samples} is less than one global batch "
                             f"({plan.global_batch}); raise samples or give steps")
    return BatchPlan(micro, stage.accumulation, world_size, steps)
