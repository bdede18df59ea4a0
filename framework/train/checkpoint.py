"""Checkpoints of a run: DeepSpeed states plus what exact resume needs, written so that a crash
mid-write never becomes the checkpoint a resume picks, and a complete one is never written again.

    <output_dir>/checkpoints/<stage>/<tag>/      DeepSpeed model/optimizer states (+ client state:
                                                 stage, steps, data position), rng-rank<r>.pt, COMPLETE
    <output_dir>/checkpoints/<stage>/<tag>.partial/  a checkpoint being written (every rank writes here)
    <output_dir>/checkpoints/latest.json         {"stage", "tag"}: replaced atomically after the rename
    <output_dir>/exports/<stage>/                BGE-M3 directory written at the stage end
    <output_dir>/exports/<stage>.done.json       written last: the stage is finished

A save writes `<tag>.partial/`, fsyncs every file, writes COMPLETE (with each file's size) and renames the
folder to `<tag>`: a kill at any moment leaves either the old state or the new checkpoint, never a
damaged folder under a complete name. A save of a tag that is already complete is skipped (a resume at a
stage's last step saves that step again). `latest()` checks the sizes COMPLETE recorded (and that zip
files end with their directory) and falls back to the stage's previous good checkpoint, with a warning.
DeepSpeed's own `latest` file is not used (save_latest=False). Older tags of a stage are removed once a
newer one is complete, keeping `keep_last`. File loads never unpickle code (checkpoint_io.py).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from framework.parallel import all_gather_object, barrier, broadcast_object, is_main, rank
from framework.train.checkpoint_io import (UnreadableCheckpoint, UnsafeCheckpoint, WriteFailure,
                                           describe_write_failure, fsync_dir, install, load_rng_state, save_tensors,
                                           write_durably)
from framework.train.reshape import (WorldChange, drop_universal_copy, repair_zero3_load, reseed, universal_copy,
                                     weights_only_loads)

log = logging.getLogger(__name__)
COMPLETE = "COMPLETE"
PARTIAL = ".partial"
RNG_FORMAT = 2


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, quota, I/O error); the previous one stays latest."""


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

    # ---- finding --------------------------------------------------------------------------------------
    def latest(self) -> ResumePoint | None:
        """The newest intact complete checkpoint (falling back within latest.json's stage), or None."""
        pointer = self.root / "latest.json"
        if not pointer.is_file():
            return None
        info = json.loads(pointer.read_text())
        named = self.stage_dir(info["stage"]) / info["tag"]
        problem = damage(named)
        if problem is None:
            return ResumePoint(info["stage"], info["tag"], named)
        for older in reversed(self._complete_tags(info["stage"])):
            if older.name < named.name and damage(older) is None:
                log.warning("checkpoint %s is damaged: %s. Resuming from the previous good checkpoint %s "
                            "instead (its later steps are trained again)", named, problem, older)
                return ResumePoint(info["stage"], older.name, older)
        stage = info["stage"]
        raise ValueError(f"{pointer} names {named}, which is damaged: {problem}; stage {stage} has no earlier intact "
                         f"checkpoint. Restore {named} from a copy, or delete {self.stage_dir(stage)} and {pointer} "
                         f"to start stage {stage} over")

    def previous_good(self, point: ResumePoint) -> Path | None:
        """The newest intact checkpoint of the point's stage older than it."""
        older = [p for p in self._complete_tags(point.stage) if p.name < point.tag and damage(p) is None]
        return older[-1] if older else None

    def _complete_tags(self, stage: str) -> list[Path]:
        folder = self.stage_dir(stage)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.endswith(PARTIAL)
                      and (p / COMPLETE).is_file())

    # ---- saving ---------------------------------------------------------------------------------------
    def save(self, engine, stage: str, tag: str, client_state: dict) -> Path:
        """Write a checkpoint on every rank; it becomes `latest` only once all ranks are done. A complete
        checkpoint that latest.json names already is kept as it is (the same step holds the same states)."""
        final = self.stage_dir(stage) / tag
        partial = final.with_name(tag + PARTIAL)
        if broadcast_object(is_main() and self._is_latest(stage, tag) and damage(final) is None):
            if is_main():
                log.info("checkpoint %s is complete already; not writing it again", final)
            return final
        if is_main():
            shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while writing it
            partial.parent.mkdir(parents=True, exist_ok=True)
        barrier()
        writer = install(engine)
        writer.failures.clear()
        engine.save_checkpoint(str(partial.parent), tag=partial.name, client_state=client_state, save_latest=False)
        if not writer.failures:
            rng_file = partial / f"rng-rank{rank()}.pt"
            try:
                save_tensors(rng_state(), rng_file)
            except OSError as err:
                writer.failures.append(WriteFailure(str(rng_file), err))
        self._raise_failures([f.message() for f in writer.failures], final, partial)
        error = None
        if is_main():
            try:
                self._commit(partial, final, client_state.get("progress", {}))
            except OSError as err:
                error = describe_write_failure(partial / COMPLETE, err)
        self._raise_failures([error] if error else [], final, partial)
        return final

    def _is_latest(self, stage: str, tag: str) -> bool:
        pointer = self.root / "latest.json"
        return pointer.is_file() and json.loads(pointer.read_text()) == {"stage": stage, "tag": tag}

    def _raise_failures(self, mine: list[str], final: Path, partial: Path) -> None:
        """Collective: when any rank failed, every rank raises the first failure's message."""
        failures = [m for ms in all_gather_object(mine) for m in ms]
        if not failures:
            return
        if is_main():
            shutil.rmtree(partial, ignore_errors=True)
        barrier()
        try:
            current = self.latest() if is_main() else None
        except ValueError:
            current = None
        fallback = f"the run can resume from {current.path}" if current else "no earlier checkpoint to resume from"
        raise CheckpointWriteError(f"{failures[0]}. Checkpoint {final} was not written ({fallback}); free space "
                                   "or lower checkpoint.keep_last, then resume")

    def _commit(self, partial: Path, final: Path, progress: dict) -> None:
        """Rank 0, after every rank wrote its files: COMPLETE with the sizes, rename, latest, prune."""
        files = {p.relative_to(partial).as_posix(): p.stat().st_size for p in sorted(partial.rglob("*")) if p.is_file()}
        marker = json.dumps({"progress": progress, "files": files}, indent=1).encode()
        write_durably(partial / COMPLETE, lambda handle: handle.write(marker))
        if final.exists():  # an unfinished or damaged folder of this tag (not a good one: that was skipped)
            shutil.rmtree(final)
        os.rename(partial, final)
        fsync_dir(final.parent)
        _atomic_write(self.root / "latest.json", json.dumps({"stage": final.parent.name, "tag": final.name}))
        self._prune(final.parent.name, keep=final.name)

    def _prune(self, stage: str, keep: str) -> None:
        for leftover in self.stage_dir(stage).glob("*" + PARTIAL):
            shutil.rmtree(leftover, ignore_errors=True)
        tags = self._complete_tags(stage)
        for old in tags[:-self.keep_last]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)

    # ---- loading --------------------------------------------------------------------------------------
    def load(self, engine, point: ResumePoint, change: WorldChange | None = None, rng_parts: tuple = ()) -> dict:
        """Restore engine, optimizer and schedule states and this rank's RNG; returns the client state.
        Nothing is unpickled beyond tensors, plain values and DeepSpeed's own data classes. With `change`
        (other ranks wrote it: framework/train/reshape.py) partitioned states load from a universal copy
        and the RNG is seeded from `rng_parts` and this rank."""
        install(engine)
        rng_file = point.path / f"rng-rank{rank()}.pt"
        universal = change is not None and engine.zero_optimization_stage() > 0
        source = universal_copy(point.path) if universal else point.path
        try:
            with weights_only_loads() if universal else contextlib.nullcontext():
                loaded, client_state = engine.load_checkpoint(str(source.parent), tag=source.name,
                                                              load_optimizer_states=True,
                                                              load_lr_scheduler_states=True)
            if loaded is None:
                raise UnreadableCheckpoint(f"DeepSpeed could not load {source}")
            if universal:
                repair_zero3_load(engine, source)
            if change is not None:
                reseed(*rng_parts, rank())
            elif not rng_file.is_file():
                raise ValueError(f"{rng_file} is missing: the checkpoint was written by fewer ranks; resume with "
                                 "the same number of ranks it was written with")
            else:
                set_rng_state(load_rng_state(rng_file))
        except (UnsafeCheckpoint, UnreadableCheckpoint) as err:
            previous = self.previous_good(point)
            hint = (f"the previous good checkpoint is {previous}: delete {point.path} to resume from it" if previous
                    else f"stage {point.stage} has no earlier checkpoint: delete {point.path} to start it over")
            raise ValueError(f"{err}; {hint}") from None
        finally:
            if universal:
                drop_universal_copy(point.path)
        return client_state or {}


def damage(tag_dir: Path) -> str | None:
    """What is wrong with a checkpoint folder (None: complete and intact by the cheap checks)."""
    marker = tag_dir / COMPLETE
    if not marker.is_file():
        return f"{tag_dir} has no {COMPLETE} marker (it was being written when the run stopped)"
    try:
        recorded = json.loads(marker.read_text()).get("files") or {}
    except (ValueError, AttributeError):
        recorded = {}  # COMPLETE of an older version: the progress only
    for name, size in recorded.items():
        path = tag_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} is {path.stat().st_size} bytes, COMPLETE recorded {size}"
    for path in sorted(tag_dir.glob("*.pt")):
        if path.stat().st_size == 0:
            return f"{path} is 0 bytes"
        with open(path, "rb") as handle:
            zipped = handle.read(2) == b"PK"
        if zipped and not zipfile.is_zipfile(path):
            return f"{path} is truncated (its zip directory is missing)"
    return None


def rng_state() -> dict:
    """This process's RNG states as tensors and plain values (loadable with weights_only=True)."""
    version, internal, gauss_next = random.getstate()
    algorithm, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"format": RNG_FORMAT,
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next},
             "numpy": {"algorithm": algorithm, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned (or the tuples of the format before it)."""
    if state.get("format") == RNG_FORMAT:
        python, numpy = state["python"], state["numpy"]
        random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
        np.random.set_state((numpy["algorithm"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                             numpy["has_gauss"], numpy["cached_gaussian"]))
    else:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, torch.Tensor):
            torch.cuda.set_rng_state(cuda)
        elif len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
