"""`python -m framework probe-batch --config RUN.yaml --stage NAME`: the batch-size probe of one stage.

Runs as one process or under torchrun (every rank measures; a size fits only where it fits on all).
Prints a line per bucket and the `total_batch` table; --out writes the table as YAML. See probe.py for
how it measures and searches, docs/batch-probe.md for how to read the result.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

from framework.data.manifest import load_manifest
from framework.parallel import all_gather_object, detect_env, init_distributed, is_main, shutdown, world_size
from framework.train.config import RunConfig, StageConfig, load_run_config
from framework.train.probe import Prober, search
from framework.train.probe_batches import Shape
from framework.train.probe_memory import GB, make_meter
from framework.train.probe_table import ProbeResult, bucket_line, table_yaml


@dataclass(frozen=True)
class ProbeOptions:
    """What to probe and against which budget."""

    stage: str
    """Name of the stage (stages[i].name)."""
    memory_gb: float | None = None
    """Memory per rank in GiB; None: the GPU's memory, or on CPU the free RAM shared by the local ranks."""
    margin: float = 0.1
    """Share of the budget kept free (allocator fragmentation, memory outside torch)."""
    world_size: int | None = None
    """Ranks the table is for; None: the processes running."""
    edges: str = "ladder"
    """'ladder' (the edge covering the truncation length, then halving), 'all', or a comma list of edges."""
    max_batch: int = 4096
    """Largest per-rank batch tried."""
    seed: int = 0
    """Seed of the synthetic token ids."""

    def __post_init__(self) -> None:
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise ValueError(f"--memory-gb {self.memory_gb}: give the memory per rank in GiB, e.g. 80")
        if not 0 <= self.margin < 1:
            raise ValueError(f"--margin {self.margin}: use a share in [0, 1), e.g. 0.1")
        if (self.world_size or 1) < 1 or self.max_batch < 1:
            raise ValueError("--world-size and --max-batch must be >= 1")


def stage_index(run: RunConfig, name: str, config: str) -> int:
    names = [s.name for s in run.stages]
    if name not in names:
        raise ValueError(f"{config} has no stage {name!r}; pass --stage with one of {names}")
    return names.index(name)


def stage_edges(stage: StageConfig) -> tuple[int, ...]:
    """Every bucket edge of the stage (the manifest's when its buckets say edges: manifest)."""
    manifest = load_manifest(stage.data.manifest).length_edges if stage.data.buckets.edges == "manifest" else None
    try:
        return stage.data.buckets.bucket_config(manifest).edges
    except ValueError as err:
        raise ValueError(f"stages.{stage.name}.data.buckets: {err}") from err


def probed_edges(stage: StageConfig, edges: tuple[int, ...], choice: str) -> list[int]:
    """The edges to probe, shortest first, none above the edge that covers the truncation length."""
    longest = max(stage.data.query_max_length, stage.data.passage_max_length)
    cover = next((e for e in edges if e >= longest), edges[-1])
    usable = [e for e in edges if e <= cover]
    if choice == "all":
        return usable
    if choice == "ladder":
        chosen, target = set(), cover
        while target >= max(usable[0], 16):
            chosen.add(max(e for e in usable if e <= target))
            target //= 2
        return sorted(chosen)
    try:
        wanted = sorted({int(e) for e in choice.split(",")})
    except ValueError:
        raise ValueError(f"--edges {choice!r}: give 'ladder', 'all' or a comma list such as 128,256,512") from None
    unknown = [e for e in wanted if e not in usable]
    if unknown:
        raise ValueError(f"--edges: {unknown} are not bucket edges of stages.{stage.name} up to its truncation "
                         f"length ({cover}); use some of {list(usable)}")
    return wanted


def probe_stage(run: RunConfig, options: ProbeOptions, config: str = "", local_ranks: int = 1, say=print) -> ProbeResult:
    """Probe stage `options.stage` of `run` on this rank (every rank of the process group calls it); `say`
    prints a line per bucket (rank 0's print, a no-op elsewhere)."""
    began = time.monotonic()
    index = stage_index(run, options.stage, config or "the run config")
    stage = run.stages[index]
    edges = stage_edges(stage)
    chosen = probed_edges(stage, edges, options.edges)
    meter = make_meter()
    budget = _budget(options, meter, local_ranks)
    usable = int(budget * (1 - options.margin))
    world = options.world_size or world_size()
    if world != world_size():
        say(f"[probe {stage.name}] measuring in {world_size()} process(es) for a table at {world} ranks: the gather "
            f"of {world} ranks' passages and ZeRO's partitioning over {world} ranks are not in the measure; run "
            f"under torchrun --nproc_per_node {world} for those")
    shapes = [Shape.at_edge(edges, e, stage.data) for e in chosen]
    prober = Prober(run, index, meter, usable, seed=options.seed)
    try:
        prober.warm_up(shapes[0])
        found, start = [], 1
        for shape in reversed(shapes):  # longest first: its size is where the next, shorter bucket starts
            physical = min(all_gather_object(meter.physical_bytes(local_ranks)))  # every rank decides alike
            probe = prober.timed(search(prober, shape, start, options.max_batch, physical))
            say(bucket_line(stage.name, probe, usable))
            found.append(probe)
            start = probe.batch
    finally:
        prober.close()
    device = "cuda (max_memory_allocated)" if meter.device.type == "cuda" else "cpu (live tensor storage bytes)"
    return ProbeResult(stage=stage.name, config=config, world_size=world, processes=world_size(),
                       accumulation=stage.accumulation, device=device, budget_bytes=budget, margin=options.margin,
                       edges=tuple(edges), buckets=tuple(reversed(found)), seconds=time.monotonic() - began)


def _budget(options: ProbeOptions, meter, local_ranks: int) -> int:
    """Bytes per rank the steps must fit in: --memory-gb, else what the device has (the least on any rank)."""
    physical = min(all_gather_object(meter.physical_bytes(local_ranks)))
    if options.memory_gb is None:
        return physical
    budget = int(options.memory_gb * GB)
    if budget > physical:
        where = "on the GPU" if meter.device.type == "cuda" else "of free RAM"
        raise ValueError(f"--memory-gb {options.memory_gb} is more than this rank can have ({physical / GB:.3g} GB "
                         f"{where}); the probe would be killed by the memory it measures: give --memory-gb "
                         f"{physical / GB:.3g} or less")
    return budget


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="YAML run config (see configs/)")
    parser.add_argument("--stage", required=True, help="name of the stage to probe")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="memory per rank in GiB (default: the GPU's, or the free RAM per local rank on CPU)")
    parser.add_argument("--margin", type=float, default=0.1, help="share of the budget kept free (default 0.1)")
    parser.add_argument("--world-size", type=int, default=None,
                        help="ranks the table is for (default: the processes running)")
    parser.add_argument("--edges", default="ladder",
                        help="'ladder' (default: the edge covering the truncation, then halving), 'all', or 128,256")
    parser.add_argument("--max-batch", type=int, default=4096, help="largest per-rank batch tried")
    parser.add_argument("--out", type=Path, default=None, help="write the total_batch table (YAML) here")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value for the run config")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, list(args.overrides))
    options = ProbeOptions(stage=args.stage, memory_gb=args.memory_gb, margin=args.margin,
                           world_size=args.world_size, edges=args.edges, max_batch=args.max_batch)
    stage_index(cfg, options.stage, str(args.config))  # before any process group: a typo fails at once
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env = init_distributed(detect_env(), cfg.engine.backend)
    main = is_main()
    try:
        result = probe_stage(cfg, options, str(args.config), env.local_world_size or 1,
                             say=print if main else (lambda *_: None))
    finally:
        shutdown()
    if main:
        text = table_yaml(result)
        print(text, end="", flush=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text, encoding="utf-8")
            print(f"table written to {args.out}", flush=True)
    return 0
