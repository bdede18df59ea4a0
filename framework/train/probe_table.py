"""What the batch-size probe found, as a `total_batch` table in the paper's Table 9 form (YAML).

total = per-rank batch x world size x accumulation, per probed bucket edge. A bucket between probed edges
takes the size of the next larger edge listed (framework/data/buckets.py), which is safe: its texts are
shorter. The stage's last edge is always listed (every bucket needs a size, even those above the
truncation length, which hold no sample).
"""
from __future__ import annotations

from dataclasses import dataclass

from framework.train.probe import BucketProbe
from framework.train.probe_memory import GB


@dataclass(frozen=True)
class ProbeResult:
    """A probed stage: its buckets and what the sizes were measured against."""

    stage: str
    """The stage's name."""
    config: str
    """The run config the stage came from."""
    world_size: int
    """Ranks the table is for."""
    processes: int
    """Ranks that measured (1 unless run under torchrun)."""
    accumulation: int
    """The stage's micro-batches per optimizer step."""
    device: str
    """What was measured, e.g. 'cpu (c10 allocator)'."""
    budget_bytes: int
    """Memory per rank the sizes had to fit in."""
    margin: float
    """Share of the budget held back."""
    edges: tuple[int, ...]
    """Every bucket edge of the stage."""
    buckets: tuple[BucketProbe, ...]
    """The probed edges, shortest first."""
    seconds: float
    """Wall time of the whole probe (model build included)."""

    @property
    def usable_bytes(self) -> int:
        return int(self.budget_bytes * (1 - self.margin))

    def total_batch(self) -> dict[int, int]:
        """Edge -> queries per optimizer step over all ranks (what stages.NAME.data.buckets.total_batch takes)."""
        table = {b.shape.edge: b.batch * self.world_size * self.accumulation for b in self.buckets}
        longest = self.buckets[-1]
        if self.edges[-1] > longest.shape.edge:
            table[self.edges[-1]] = table[longest.shape.edge]
        return table

    def tokens_per_rank(self) -> int | None:
        """The largest token budget whose batch (budget // edge) stays within the probed size in every bucket
        up to the longest probed edge; None when it would leave that bucket without a sample."""
        sizes = {b.shape.edge: b.batch for b in self.buckets}
        probed = sorted(sizes)
        budget = min(sizes[next(p for p in probed if p >= edge)] * edge for edge in self.edges if edge <= probed[-1])
        return budget if budget >= probed[-1] else None

    def override(self) -> str:
        """The same table as dotted overrides for `python -m framework train`."""
        table = ", ".join(f"{edge}: {total}" for edge, total in self.total_batch().items())
        key = f"stages.{self.stage}.data.buckets"
        return f"'{key}.total_batch={{{table}}}' {key}.tokens_per_rank=null"


def table_yaml(result: ProbeResult) -> str:
    """The YAML file: a `total_batch` mapping with one comment per edge, and how to use it."""
    name, world, acc = result.stage, result.world_size, result.accumulation
    lines = [f"# probe-batch: stage {name} of {result.config}, on {result.device}, {result.processes} process(es)",
             f"# budget {result.budget_bytes / GB:.3g} GB per rank, margin {result.margin:.0%}: usable "
             f"{result.usable_bytes / GB:.3g} GB; probe wall time {result.seconds:.0f} s",
             f"# total = per-rank batch x {world} ranks x {acc} accumulation (Table 9's form); a bucket between two "
             "edges takes the size of the next larger edge listed",
             f"# use: put total_batch under stages.{name}.data.buckets (in place of total_batch or tokens_per_rank "
             "there), or pass", f"#   {result.override()}", "total_batch:"]
    totals, by_edge = result.total_batch(), {b.shape.edge: b for b in result.buckets}
    for edge, total in totals.items():
        probe = by_edge.get(edge)
        if probe is None:
            note = (f"no sample is longer than {result.buckets[-1].shape.edge} tokens (the truncation); listed so "
                    "that every bucket has a size")
        else:
            chosen = probe.chosen
            note = (f"{probe.batch} x {world} x {acc}; peak {chosen.peak_bytes / GB:.3g} GB; "
                    f"{probe.tokens_per_second:,.0f} tokens/s per rank" + ("; capped by --max-batch" if probe.capped
                                                                          else ""))
        lines.append(f"  {edge}: {total}  # {note}")
    tokens = result.tokens_per_rank()
    lines.append(f"# or, instead of total_batch: tokens_per_rank: {tokens} (per-rank batch = {tokens} // edge)"
                 if tokens else "# no single tokens_per_rank fits every bucket (cost is not proportional to length "
                                "here); use total_batch")
    return "\n".join(lines) + "\n"


def bucket_line(stage: str, probe: BucketProbe, usable_bytes: int) -> str:
    """The progress line of one probed bucket."""
    shape, chosen = probe.shape, probe.chosen
    tried = ", ".join(t.label for t in probe.trials)
    return (f"[probe {stage}] edge {shape.edge} (queries {shape.query_length}, passages {shape.passage_length} "
            f"tokens, group {shape.group_size}): tried {tried} (GB) -> {probe.batch} per rank"
            f"{' (--max-batch)' if probe.capped else ''}, peak {chosen.peak_bytes / GB:.3g} of "
            f"{usable_bytes / GB:.3g} GB usable, {probe.step_seconds:.3g} s per optimizer step, "
            f"{probe.tokens_per_second:,.0f} tokens/s per rank; {probe.seconds:.0f} s")
