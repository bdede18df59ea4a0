"""Preemption: a signal asks for a checkpoint at the next optimizer step, then the job requeues itself.

SLURM sends SIGUSR1 to every task some time before the time limit or a preemption when the job asks for
it (`#SBATCH --signal=USR1@120`); SIGTERM is watched too (what `scancel` and most schedulers send first).
The handler only sets a flag: the trainer checks it at step boundaries, all ranks agree through one
all-reduce (a signal may reach ranks at different steps), every rank saves, and then `Preempted` unwinds
the run. The entry point requeues a SLURM job (`scontrol requeue`), and the requeued job resumes from the
checkpoint because checkpoint.resume=auto.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess

import torch

from framework.parallel import all_reduce_sum

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class Preempted(Exception):
    """The run stopped at a checkpoint because a preemption signal arrived."""


class PreemptionWatch:
    """Installs flag-setting handlers; `requested()` is a collective (every rank calls it each step)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous = {}
        for sig in SIGNALS:
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners): nothing to watch
                pass

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def requested(self) -> bool:
        flag = torch.tensor([1.0 if self.received is not None else 0.0])
        return float(all_reduce_sum(flag)[0]) > 0

    def close(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def requeue_slurm_job() -> bool:
    """`scontrol requeue $SLURM_JOB_ID` (rank 0 only); False when not under SLURM or it failed."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if done.returncode != 0:
        log.warning("scontrol requeue %s failed: %s", job, done.stderr.strip())
        return False
    log.info("SLURM job %s requeued; it resumes from the checkpoint", job)
    return True
