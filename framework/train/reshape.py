"""Resuming a stage on another number of ranks than its checkpoint was written by.

What depends on the world size, and what happens to it:

    data position   the epoch's rest re-split for the new ranks (framework/data/resplit.py); the stage's
                    step count and the global batch per bucket stay, so a step still means that many samples
    model and       ZeRO 0: the model-state file holds the whole module and the client optimizer's state,
    optimizer       loaded as is. ZeRO 1-3 partition the optimizer state (and at ZeRO-3 the parameters) by
                    rank, and DeepSpeed refuses to load them on another world size; rank 0 converts the
                    checkpoint to DeepSpeed's universal format (deepspeed.checkpoint.ds_to_universal: one
                    file per parameter and state) under checkpoints/<stage>/universal/, every rank loads its
                    new partition from it (ds config checkpoint.load_universal), and the copy is removed;
                    ZeRO-3's load gives every parameter group the first group's settings, which
                    repair_zero3_load undoes, with a shared step counter
    RNG             per-rank states cannot be carried over to other ranks: each rank's Python, numpy and
                    torch generators are seeded from (run seed, stage, checkpoint tag, rank)

Refused (preflight, before any step): a batch table whose global batch changes with the world size
(`tokens_per_rank` budgets: the step count and the samples per step would change), a table the new world
size does not divide (batching.py says so), and ZeRO offload (untested here: resume on the original world size).
DeepSpeed's universal loaders call torch.load(weights_only=False); `weights_only_loads` forces
weights_only=True around the conversion and the load, as checkpoint_io.py does for the other files.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import shutil
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from framework.data.manifest import load_manifest
from framework.data.plan import derive_seed
from framework.parallel import barrier, broadcast_object, is_main
from framework.train.batching import plan_batches
from framework.train.checkpoint_io import deepspeed_globals, safe_load
from framework.train.config import StageConfig

log = logging.getLogger(__name__)
UNIVERSAL = "universal"


@dataclass(frozen=True)
class WorldChange:
    """A resume on another number of ranks than the checkpoint's."""

    saved: int
    """Ranks that wrote the checkpoint."""
    current: int
    """Ranks of this run."""


def saved_world_size(tag_dir: Path) -> int | None:
    """Ranks that wrote a checkpoint (its rng-rank<r>.pt files); None when it has none."""
    return len(list(Path(tag_dir).glob("rng-rank*.pt"))) or None


def world_change(tag_dir: Path | None, world_size: int) -> WorldChange | None:
    saved = saved_world_size(tag_dir) if tag_dir is not None else None
    return WorldChange(saved, world_size) if saved is not None and saved != world_size else None


def reseed(*parts) -> None:
    """Seed Python's, numpy's and torch's generators (CUDA's too) from a derived seed of `parts`."""
    seed = derive_seed("resume-rng", *parts)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def weights_only_loads():
    """Inside: every torch.load unpickles only tensors, plain values and DeepSpeed's data classes."""
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_globals()):
            yield
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def universal_copy(tag_dir: Path) -> Path:
    """Collective: rank 0 converts the checkpoint to DeepSpeed's universal format; returns its folder
    (checkpoints/<stage>/universal/<tag>), which every rank can load at any world size."""
    out = tag_dir.parent / UNIVERSAL / tag_dir.name
    error = None
    if is_main():
        from deepspeed.checkpoint.ds_to_universal import main as to_universal

        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir(parents=True)
        args = types.SimpleNamespace(input_folder=str(tag_dir), output_folder=str(out), num_extract_workers=1,
                                     num_merge_workers=1, keep_temp_folder=False, strict=True,
                                     inject_missing_state=True)
        chatter = io.StringIO()  # the converter prints its steps and progress bars: kept for an error only
        try:
            with weights_only_loads(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                to_universal(args)
        except Exception as err:  # noqa: BLE001 -- reported on every rank below, with the converter's output
            error = (f"converting {tag_dir} to DeepSpeed's universal format for a resume on another world size "
                     f"failed: {type(err).__name__}: {err}\n{chatter.getvalue()[-2000:]}")
    error = broadcast_object(error)
    if error is not None:
        raise ValueError(error + "\nResume with the number of ranks that wrote the checkpoint")
    return out


def repair_zero3_load(engine, universal_dir: Path) -> None:
    """Undo two slips of ZeRO-3's universal load (DeepSpeed 0.19): it gives every optimizer parameter group
    the first group's settings (the no-decay group would decay), and one `step` tensor to every sub-group's
    state (AdamW increments it in place, once per group and step: the bias correction runs ahead). ZeRO 1-2
    restore both themselves."""
    if engine.zero_optimization_stage() != 3:
        return
    saved = safe_load(universal_dir / "zero" / "optimizer_state.pt", allow=deepspeed_globals())
    base = engine.optimizer.optimizer
    groups = saved.get("param_groups") or []
    if len(groups) != len(base.param_groups):
        raise ValueError(f"{universal_dir}: {len(groups)} saved optimizer parameter groups, the engine has "
                         f"{len(base.param_groups)}; resume with the number of ranks that wrote the checkpoint")
    for group, before in zip(base.param_groups, groups):
        group.update({key: value for key, value in before.items() if key != "params"})
    for state in base.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()


def drop_universal_copy(tag_dir: Path) -> None:
    """Collective: once every rank has loaded it, rank 0 removes the universal copy."""
    barrier()
    if is_main():
        shutil.rmtree(tag_dir.parent / UNIVERSAL, ignore_errors=True)


def unrecorded_worker_change(changes: list, point_path: Path, stage: str) -> list[str]:
    """A data.num_workers change is a re-split only when the checkpoint's data position names its workers
    (checkpoints of before that have no num_workers in their COMPLETE progress): refuse it for older ones."""
    key = f"stages.{stage}.data.num_workers"
    change = next((c for c in changes if c.key == key), None)
    if change is None:
        return []
    try:
        progress = json.loads((point_path / "COMPLETE").read_text()).get("progress") or {}
    except (OSError, ValueError):
        progress = {}
    if "num_workers" in progress:
        return []
    return [f"{change.line()} (checkpoint {point_path.name} was written before its data position named its "
            f"workers: keep data.num_workers={change.before} until stage {stage} ends)"]


def world_change_problems(stage: StageConfig, point_path: Path, change: WorldChange,
                          ds_config: dict | None) -> list[str]:
    """Why the checkpoint cannot continue at change.current ranks (empty: it can)."""
    where = f"checkpoint {point_path} was written by {change.saved} rank(s); this run has {change.current}"
    fix = (f"Resume with {change.saved} ranks, or start stage {stage.name} over in a new output_dir")
    zero = (ds_config or {}).get("zero_optimization", {})
    offload = [k for k in ("offload_optimizer", "offload_param") if (zero.get(k) or {}).get("device", "none") != "none"]
    if offload:
        return [f"{where}, and the engine offloads ({', '.join(offload)}): a resume on another world size is "
                f"supported for ZeRO 0-3 without offload only. {fix}"]
    try:
        edges = load_manifest(stage.data.manifest).length_edges
        before, after = plan_batches(stage, change.saved, edges), plan_batches(stage, change.current, edges)
    except ValueError:
        return []  # the stage check reports what is wrong with the plan at this world size
    old = {b: before.global_batch_of(b) for b in before.micro_per_rank}
    new = {b: after.global_batch_of(b) for b in after.micro_per_rank}
    if old != new or before.steps != after.steps:
        return [f"{where}, and stages.{stage.name}.data.buckets gives another global batch there (sequences per "
                f"optimizer step by bucket: {old} at {change.saved} ranks, {new} at {change.current}; steps "
                f"{before.steps} -> {after.steps}): the stage's steps would mean other samples. {fix} (a "
                "buckets.total_batch table keeps the global batch at any world size that divides it; a "
                "tokens_per_rank budget does not)"]
    return []
