"""Checkpoints of a run: DeepSpeed states plus what exact resume needs, written so that a crash
mid-write never becomes the checkpoint a resume picks.

    <output_dir>/checkpoints/<stage>/<tag>/      DeepSpeed model/optimizer states (+ client state:
                                                 stage, steps, data position), rng-rank<r>.pt, COMPLETE
    <output_dir>/checkpoints/latest.json         {"stage", "tag"}: replaced atomically after COMPLETE
    <output_dir>/exports/<stage>/                BGE-M3 directory written at the stage end
    <output_dir>/exports/<stage>.done.json       written last: the stage is finished

DeepSpeed's own `latest` file is not used (save_latest=False): it is written before our per-rank files
exist. Older tags of a stage are removed once a newer one is COMPLETE, keeping `keep_last`.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from framework.parallel import barrier, is_main, rank

COMPLETE = "COMPLETE"


@dataclass(frozen=True)
class ResumePoint:
    """A complete checkpoint to continue from."""

    stage: str
    tag: str
    path: Path
    """The tag's directory."""


class Checkpoints:
    """Saving, finding and pruning the checkpoints of one run directory."""

    def __init__(self, output_dir: str | Path, keep_last: int):
        self.root = Path(output_dir) / "checkpoints"
        self.exports = Path(output_dir) / "exports"
        self.keep_last = keep_last

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def export_dir(self, stage: str) -> Path:
        return self.exports / stage

    def stage_done(self, stage: str) -> dict | None:
        marker = self.exports / f"{stage}.done.json"
        return json.loads(marker.read_text()) if marker.is_file() else None

    def mark_stage_done(self, stage: str, info: dict) -> None:
        if is_main():
            _atomic_write(self.exports / f"{stage}.done.json", json.dumps(info, indent=2))
        barrier()

    def latest(self) -> ResumePoint | None:
        """The newest complete checkpoint, or None."""
        pointer = self.root / "latest.json"
        if not pointer.is_file():
            return None
        info = json.loads(pointer.read_text())
        path = self.stage_dir(info["stage"]) / info["tag"]
        if not (path / COMPLETE).is_file():
            raise ValueError(f"{pointer} names {path}, which is not a complete checkpoint; "
                             "delete latest.json to start the stage over, or restore the directory")
        return ResumePoint(info["stage"], info["tag"], path)

    def save(self, engine, stage: str, tag: str, client_state: dict) -> Path:
        """Write a checkpoint on every rank; it becomes `latest` only once all ranks are done."""
        path = self.stage_dir(stage) / tag
        engine.save_checkpoint(str(self.stage_dir(stage)), tag=tag, client_state=client_state, save_latest=False)
        torch.save(rng_state(), path / f"rng-rank{rank()}.pt")
        barrier()
        if is_main():
            (path / COMPLETE).write_text(json.dumps(client_state.get("progress", {})))
            _atomic_write(self.root / "latest.json", json.dumps({"stage": stage, "tag": tag}))
            self._prune(stage, keep=tag)
        barrier()
        return path

    def load(self, engine, point: ResumePoint) -> dict:
        """Restore engine, optimizer and schedule states and this rank's RNG; returns the client state."""
        loaded, client_state = engine.load_checkpoint(str(self.stage_dir(point.stage)), tag=point.tag,
                                                      load_optimizer_states=True, load_lr_scheduler_states=True)
        if loaded is None:
            raise ValueError(f"DeepSpeed could not load {point.path}; the checkpoint is unreadable")
        rng_file = point.path / f"rng-rank{rank()}.pt"
        if not rng_file.is_file():
            raise ValueError(f"{rng_file} is missing: the checkpoint was written by fewer ranks; resume with "
                             "the same number of ranks it was written with")
        set_rng_state(torch.load(rng_file, weights_only=False))
        return client_state or {}

    def _prune(self, stage: str, keep: str) -> None:
        tags = sorted(p for p in self.stage_dir(stage).iterdir() if p.is_dir() and (p / COMPLETE).is_file())
        for old in tags[:-self.keep_last]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
