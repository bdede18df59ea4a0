"""A throw-away one-node SLURM cluster on this machine, for tests/test_slurm.py.

munged, slurmctld and slurmd run as children of the test process with everything under one directory:
their own munge key and socket, state and spool directories, logs, pid files and free ports. Nothing in
/etc or /run is used, so the cluster does not clash with a system one, and stopping it leaves only the
Debian packages behind (installed once by `ensure_installed`).

The node is this host (short hostname, address 127.0.0.1) with 2 CPUs: select/cons_tres with CR_CPU,
proctrack/linuxproc and task/none (no cgroups needed), JobRequeue=1, no accounting database, so `sacct`
is unavailable and jobs are followed with `scontrol show job` (finished jobs stay listed for MinJobAge).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
# Job states after which a job does not run again (a requeued job passes through REQUEUED/PENDING instead).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}

SLURM_CONF = """\
ClusterName=m3test
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket={munge_socket},cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Use the CPU count below whatever the machine reports, so the node is never drained for "Low CPUs".
SlurmdParameters=config_overrides
MpiDefault=none
JobRequeue=1
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# A dependent job whose dependency failed is cancelled instead of pending forever.
DependencyParameters=kill_invalid_depend
# Seconds between SIGTERM and SIGKILL when a job is cancelled or requeued.
KillWait=10
MinJobAge=3600
# Look at pending jobs every second (defaults: 60 s, backfill 30 s), so a requeued job starts as soon as
# it is eligible again instead of at the next periodic pass.
SchedulerParameters=sched_interval=1,bf_interval=1
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def missing_binaries() -> list[str]:
    return ([name for name, path in DAEMONS.items() if not os.access(path, os.X_OK)] +
            [name for name in CLIENTS if shutil.which(name) is None])


def ensure_installed(timeout: float = 600) -> str | None:
    """Install Debian's SLURM and munge packages when missing; None when ready, else why not."""
    if os.geteuid() != 0 and not missing_binaries():
        return "the test cluster runs its daemons as root (SlurmUser=root); run the tests as root"
    if not missing_binaries():
        return None
    if os.geteuid() != 0:
        return f"SLURM is not installed ({', '.join(missing_binaries())} missing) and installing needs root"
    if shutil.which("apt-get") is None:
        return f"SLURM is not installed ({', '.join(missing_binaries())} missing) and there is no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=timeout)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or missing_binaries():
        return f"apt-get install {' '.join(PACKAGES)} failed: {(done.stdout + done.stderr)[-1500:]}"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalSlurm:
    """munged + slurmctld + slurmd for one node, all state under `root`; `start()`, `stop()`."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.cpus = cpus
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_at: float | None = None
        self.last_job_done: float | None = None

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF, for the client commands and (exported by sbatch) the jobs."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    # ---- daemons ---------------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        self.started_at = time.monotonic()
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)  # munged refuses a socket directory others can write to
        self.conf.write_text(SLURM_CONF.format(host=self.host, root=self.root, cpus=self.cpus,
                                               ctld_port=free_port(), slurmd_port=free_port(),
                                               munge_socket=self.munge_socket))
        self._start_munge()
        self._spawn("slurmctld", [DAEMONS["slurmctld"], "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [DAEMONS["slurmd"], "-D", "-f", str(self.conf)])
        self._wait_idle(timeout)

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        key = munge / "munge.key"
        subprocess.run(["/usr/sbin/mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        self._spawn("munged", [DAEMONS["munged"], "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={self.root / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"])
        self._until(lambda: self.munge_socket.exists(), 20, "munged to create its socket")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = (self.root / f"{name}.out").open("w")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)

    def _wait_idle(self, timeout: float) -> None:
        def idle() -> bool:
            done = self.cmd(["sinfo", "-h", "-N", "-o", "%T"], check=False)
            return done.returncode == 0 and done.stdout.strip() == "idle"
        self._until(idle, timeout, f"node {self.host} to be idle in sinfo")

    def _until(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                reason = f"{', '.join(dead)} exited" if dead else f"timed out after {timeout:.0f} s"
                raise RuntimeError(f"waiting for {what}: {reason}\n{self.daemon_logs()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons this object started (slurmd, slurmctld, munged)."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            jobs = self._queued()
            if jobs:  # left over by a failed test: end them before their slurmd goes
                self.cmd(["scancel", *jobs], check=False)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and self._queued():
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def _queued(self) -> list[str]:
        return self.cmd(["squeue", "-h", "-o", "%A"], check=False).stdout.split()

    def daemon_logs(self, tail: int = 3000) -> str:
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log", "munged.out", "slurmctld.out", "slurmd.out"):
            path = self.root / name
            if path.is_file() and path.stat().st_size:
                parts.append(f"---- {name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    # ---- clients ---------------------------------------------------------------------------------------
    def cmd(self, args: Sequence[str], env: Mapping[str, str] | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run(list(args), env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done

    def sbatch(self, args: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
        """Submit; returns the job id."""
        done = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd,
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done.stdout.strip().split(";")[0]

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol show job -o` of a job (one dict per array task), fields as SLURM names them."""
        done = self.cmd(["scontrol", "show", "job", "-o", str(job_id)])
        return [_fields(line) for line in done.stdout.splitlines() if line.strip()]

    def wait(self, job_ids: Sequence[str], timeout: float, poll: float = 0.5) -> dict[str, str]:
        """Wait until every job (every task of an array) has reached a final state; JobId -> JobState."""
        deadline = time.monotonic() + timeout
        while True:
            states = {job["JobId"]: job["JobState"] for job_id in job_ids for job in self.jobs(job_id)}
            # A pending array's unstarted tasks are one PENDING record, so "all final" covers arrays too.
            if states and all(state in FINAL_STATES for state in states.values()):
                self.last_job_done = time.monotonic()
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs {', '.join(job_ids)} not done after {timeout:.0f} s: {states}")
            time.sleep(poll)


def _fields(line: str) -> dict[str, str]:
    """'JobId=5 JobName=x Command=/a b' -> dict; a value runs until the next ' Key=' (values may hold spaces)."""
    out: dict[str, str] = {}
    key = None
    for token in line.split(" "):
        name, eq, value = token.partition("=")
        if eq and re.fullmatch(r"[A-Za-z][A-Za-z0-9_:/]*", name):
            key = name
            out[key] = value
        elif key is not None:
            out[key] += " " + token
    return out
