"""One run per output directory: `<output_dir>/run.lock`, held by rank 0 for the whole run.

Two runs on one directory would log every step twice into one metrics file, write and prune the same
checkpoints, or resume from each other's live checkpoint. The lock file names its holder (pid, host, the
process's start time, the SLURM job); it is created atomically (a hard link of a finished file, which
NFS honours too) and removed when the run ends, however it ends short of a kill.

A lock left by a killed run is stale, and taken over with a warning, when its holder provably is gone:
on this host the pid is not running or runs another process (start times differ: pids are reused); on
any host it was this SLURM job (a requeued job keeps its id and may land on another node; SLURM runs one
instance of a job at a time). A lock of another host and job cannot be checked from here: refused with
the way out (delete the file once that run is known dead).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)
LOCK_NAME = "run.lock"
_HELD: dict[str, int] = {}  # resolved lock path -> nesting depth, in this process


class RunLocked(ValueError):
    """The output directory is in use by another run."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run lock."""

    pid: int
    """Process id of the run's rank 0."""
    host: str
    """Host name it runs on."""
    process_start: float
    """The process's start time (seconds since the epoch), to tell a reused pid apart."""
    slurm_job: str | None
    """$SLURM_JOB_ID of the run, if any."""
    started: str
    """When the lock was taken (local time, ISO 8601)."""
    command: str
    """The holder's command line, shortened."""

    @classmethod
    def this_process(cls) -> "LockHolder":
        return cls(os.getpid(), socket.gethostname(), _start_time(os.getpid()) or 0.0,
                   os.environ.get("SLURM_JOB_ID"), time.strftime("%Y-%m-%dT%H:%M:%S"), " ".join(sys.argv)[:300])

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        return f"pid {self.pid} on host {self.host} (since {self.started}{job}: {self.command})"


class RunLock:
    """The lock file of one output directory (not re-entrant; see hold_run_lock)."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_NAME
        self.me = LockHolder.this_process()

    def acquire(self) -> None:
        """Take the lock, replacing a stale one; RunLocked naming the live holder otherwise."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a race with another run replacing the same stale lock: look again
            if self._create():
                return
            holder = self._read()
            if holder is None:
                continue
            if (holder.pid, holder.host) == (self.me.pid, self.me.host):
                return  # ours already
            reason = stale_reason(holder, self.me)
            if reason is None:
                raise RunLocked(f"{self.path.parent} is in use by the run of {holder.describe()}: two runs on one "
                                "output_dir would write the same metrics and checkpoints. Wait for it to end, or "
                                "choose another output_dir; if that run is dead (its host crashed), delete "
                                f"{self.path}")
            log.warning("removing the stale lock %s of %s: %s", self.path, holder.describe(), reason)
            self._remove_if(holder)
        raise RunLocked(f"could not take {self.path}: another run keeps replacing it; start one run at a time")

    def release(self) -> None:
        holder = self._read()
        if holder is not None and (holder.pid, holder.host) == (self.me.pid, self.me.host):
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        text = json.dumps(asdict(self.me), indent=1)
        tmp = self.path.with_name(f"{LOCK_NAME}.{self.me.host}.{self.me.pid}")
        tmp.write_text(text)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links (some FUSE mounts): exclusive create instead
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _read(self) -> LockHolder | None:
        return _read_holder(self.path)

    def _remove_if(self, holder: LockHolder) -> None:
        """Remove the lock only if it still names `holder` (another run may have replaced it meanwhile)."""
        moved = self.path.with_name(f"{LOCK_NAME}.stale.{self.me.pid}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        current = _read_holder(moved)
        if current is not None and current != holder:
            try:
                os.link(moved, self.path)  # put the live one back
            except FileExistsError:
                pass
        moved.unlink(missing_ok=True)

def _read_holder(path: Path) -> LockHolder | None:
    """The holder a lock file names; None when there is no file."""
    try:
        data = json.loads(path.read_text())
        return LockHolder(**{k: data[k] for k in LockHolder.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError):
        # The link publishes a finished file, so no crash leaves half a lock: this one was made by hand or
        # damaged. Nobody can be proven to hold it.
        return LockHolder(-1, "?", 0.0, None, "?", "an unreadable lock file")


def stale_reason(holder: LockHolder, me: LockHolder) -> str | None:
    """Why `holder` is gone for sure, or None when it may be running."""
    if holder.pid == -1:
        return "the lock file is unreadable"
    if holder.slurm_job and holder.slurm_job == me.slurm_job:
        return f"it was an earlier run of this SLURM job {me.slurm_job} (requeued)"
    if holder.host != me.host:
        return None
    started = _start_time(holder.pid)
    if started is None:
        return f"no process {holder.pid} runs on {me.host}"
    if holder.process_start and abs(started - holder.process_start) > 1.0:
        return f"pid {holder.pid} is now another process (started later)"
    return None


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@contextmanager
def hold_run_lock(output_dir: str | Path) -> Iterator[None]:
    """Collective: rank 0 holds the lock of `output_dir` inside the block, every rank raises RunLocked
    when it is taken. Re-entrant in a process (the CLI takes it before the tracker, the Trainer again)."""
    from framework.parallel import broadcast_object, is_main

    key = str((Path(output_dir) / LOCK_NAME).resolve())
    lock, error = None, None
    if is_main() and key not in _HELD:
        lock = RunLock(output_dir)
        try:
            lock.acquire()
        except RunLocked as err:
            error, lock = str(err), None
    error = broadcast_object(error)
    if error is not None:
        raise RunLocked(error)
    _HELD[key] = _HELD.get(key, 0) + 1
    try:
        yield
    finally:
        _HELD[key] -= 1
        if not _HELD[key]:
            del _HELD[key]
            if lock is not None:
                lock.release()
