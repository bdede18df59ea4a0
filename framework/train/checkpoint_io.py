"""Reading and writing checkpoint files: no pickle runs code on load, and a failed write says why.

Loading. `torch.load(weights_only=True)` unpickles only tensors, plain containers and an allowlist of
classes, so a pickle planted in a copied run directory cannot run code. DeepSpeed reads its own files with
`weights_only=False` through the engine's checkpoint engine (`engine.checkpoint_engine.load`, used for the
model-state and ZeRO optimizer-state files); `SafeCheckpointEngine` wraps it so that those loads use
weights_only=True too, with DeepSpeed's three data classes that appear in its files allowlisted
(DEEPSPEED_GLOBALS: measured with torch.serialization.get_unsafe_globals_in_checkpoint on ZeRO 0-3, fp32
and bf16 checkpoints). A file that needs anything else is refused with the global's name.

Writing. torch's C++ file writer reports a full disk as "unexpected pos N vs M" or "basic_ios::clear";
writing through a Python file object keeps the OSError and its errno. Each file is fsynced so that a
rename of the finished folder (checkpoint.py) never publishes data still in the page cache. A failed write
is recorded, not raised, so every rank still reaches DeepSpeed's barriers; the caller raises on all ranks.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

# An RNG file of the format before tensors (numpy's state as an ndarray): these numpy names rebuild an
# array from bytes and a dtype, nothing else.
_OLD_RNG_GLOBALS = ("numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType")
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class UnsafeCheckpoint(ValueError):
    """A checkpoint file holds a pickled global outside the allowlist; it was not unpickled."""


class UnreadableCheckpoint(ValueError):
    """A checkpoint file is empty, truncated or garbled."""


def deepspeed_globals() -> list:
    """The classes DeepSpeed pickles into its own checkpoint files (plain data holders)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | os.PathLike, map_location=None, allow: list | None = None) -> Any:
    """torch.load with weights_only=True (plus `allow`). UnsafeCheckpoint names the file and the refused
    global; UnreadableCheckpoint names a damaged file."""
    # Only what is not allowed yet: leaving the context removes its globals, also from an enclosing one
    # (framework/train/reshape.py's weights_only_loads around DeepSpeed's universal loads).
    already = torch.serialization.get_safe_globals()
    try:
        with torch.serialization.safe_globals([g for g in allow or [] if g not in already]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise UnreadableCheckpoint(f"cannot read {path}: it is not a valid torch file (damaged)") from None
        raise UnsafeCheckpoint(f"{path}: refused to unpickle {found.group(1)} (checkpoints load with "
                               "weights_only=True, so a pickle cannot run code); the file was not written by this "
                               "framework's DeepSpeed run, or was altered: do not resume from it") from None
    except (EOFError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "the file ends early"
        raise UnreadableCheckpoint(f"cannot read {path}: {type(err).__name__}: {first[:200]} (the file is empty, "
                                   "truncated or damaged)") from None


def load_rng_state(path: str | os.PathLike) -> dict:
    """A rank's RNG file: the tensor format, or the earlier one with numpy arrays (still loaded safely)."""
    import numpy as np

    allow = []
    for name in _OLD_RNG_GLOBALS:
        module, _, attr = name.rpartition(".")
        try:
            holder = np if module == "numpy" else __import__(module, fromlist=[attr])
            allow.append(getattr(holder, attr))
        except (ImportError, AttributeError):  # numpy < 2 spells _core as core: the new format needs none
            continue
    return safe_load(path, allow=allow)


@dataclass(frozen=True)
class WriteFailure:
    """A file this rank could not write."""

    path: str
    error: BaseException

    def message(self) -> str:
        return describe_write_failure(self.path, self.error)


def write_durably(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Open `path`, let `write` fill it, flush and fsync; OSError (with its errno) on failure."""
    with open(path, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def save_tensors(obj: Any, path: str | os.PathLike, zipfile: bool = True) -> None:
    write_durably(path, lambda handle: torch.save(obj, handle, _use_new_zipfile_serialization=zipfile))


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SafeCheckpointEngine:
    """Wraps a DeepSpeed checkpoint engine: loads with weights_only=True, records failed writes.

    Saves of DeepSpeed's default TorchCheckpointEngine go through a Python file object (errno kept) and
    are fsynced; other engines (fast/decoupled writers) keep their own save, with failures recorded.
    Every other attribute is the wrapped engine's.
    """

    def __init__(self, inner):
        self.inner = inner
        self.failures: list[WriteFailure] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def load(self, path: str, map_location=None):
        return safe_load(path, map_location, deepspeed_globals())

    def save(self, state_dict, path: str):
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

        if self.failures:  # the disk is full or failing: later files of this checkpoint would fail too
            return
        try:
            if type(self.inner) is TorchCheckpointEngine:
                save_tensors(state_dict, path, self.inner.zipfile_serialization)
            else:
                self.inner.save(state_dict, path)
        except (OSError, RuntimeError) as err:
            self.failures.append(WriteFailure(str(path), err))
            Path(path).unlink(missing_ok=True)  # give back the space the partial file holds


def install(engine) -> SafeCheckpointEngine:
    """Put a SafeCheckpointEngine in front of `engine`'s checkpoint engine (once); returns it."""
    current = engine.checkpoint_engine
    if not isinstance(current, SafeCheckpointEngine):
        current = engine.checkpoint_engine = SafeCheckpointEngine(current)
    return current


def describe_write_failure(path: str | os.PathLike, error: BaseException) -> str:
    """'no space left on DEVICE (mounted at M) ...' for a full disk or quota, else the error itself."""
    device, mount = mount_of(path)
    free = _free_bytes(path)
    short_write = isinstance(error, RuntimeError) and re.search(r"unexpected pos|basic_ios|write", str(error))
    full = getattr(error, "errno", None) in NO_SPACE or (short_write and free is not None and free < 64 << 20)
    space = "" if free is None else f" ({free / 2**20:.0f} MiB free)"
    if full:
        quota = " or a disk quota is exhausted" if getattr(error, "errno", None) == errno.EDQUOT else ""
        return f"no space left on {device} (mounted at {mount}){space}{quota} while writing {path}"
    return f"writing {path} on {device} (mounted at {mount}){space} failed: {type(error).__name__}: {error}"


def mount_of(path: str | os.PathLike) -> tuple[str, str]:
    """(device, mount point) of the filesystem holding `path` (the longest mount point above it)."""
    import psutil

    real = os.path.realpath(path)
    best = ("?", "/")
    for part in psutil.disk_partitions(all=True):
        point = part.mountpoint.rstrip("/") or "/"
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[1]):
            best = (part.device, part.mountpoint)
    return best


def _free_bytes(path: str | os.PathLike) -> int | None:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None
