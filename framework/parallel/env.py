"""Who am I in the job: rank, world size and rendezvous address from the launcher's environment.

Pure functions of an environment mapping (no torch.distributed here), so every launcher is testable
in one process:
    torchrun            RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT (+ TORCHELASTIC_RUN_ID)
    deepspeed launcher  the same, with LOCAL_SIZE instead of LOCAL_WORLD_SIZE (+ CROSS_RANK)
    srun                SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; RANK absent. The rendezvous is the
                        first host of the job's node list and a port derived from the job id, unless
                        MASTER_ADDR / MASTER_PORT are set
    nothing             a single process: rank 0 of 1 on 127.0.0.1 and a free port
"""
from __future__ import annotations

import itertools
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

# Ports derived from a SLURM job id fall in [SLURM_PORT_BASE, SLURM_PORT_BASE + SLURM_PORT_SPAN): above the
# usual service ports and below Linux's default ephemeral range (32768+), so no OS-assigned port collides.
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 10000


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job, as the launcher described it."""

    rank: int
    """Global rank, 0 <= rank < world_size."""
    world_size: int
    """Number of processes in the job."""
    local_rank: int
    """Rank on this node; selects the GPU."""
    local_world_size: int | None
    """Processes on this node, when the launcher says so."""
    master_addr: str
    """Host of rank 0's rendezvous store."""
    master_port: int
    """Port of rank 0's rendezvous store."""
    launcher: str
    """'torchrun', 'deepspeed', 'env' (RANK set by hand or another launcher), 'slurm' or 'single'."""


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """The DistEnv described by `environ` (default os.environ); ValueError names a bad variable."""
    environ = os.environ if environ is None else environ
    if "RANK" in environ:
        return _from_rank_vars(environ)
    if "SLURM_PROCID" in environ:
        return _from_slurm(environ)
    return DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1,
                   master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
                   master_port=_port(environ) or free_port(), launcher="single")


def _from_rank_vars(environ: Mapping[str, str]) -> DistEnv:
    for required in ("WORLD_SIZE", "LOCAL_RANK"):
        if required not in environ:
            raise ValueError(f"RANK is set but {required} is not; launch with torchrun or the deepspeed "
                             f"launcher, or set {required} as well.")
    rank, world = _int(environ, "RANK"), _int(environ, "WORLD_SIZE")
    local_rank = _int(environ, "LOCAL_RANK")
    size_var = next((v for v in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE") if v in environ), None)
    local_world = _int(environ, size_var) if size_var else None
    _check_ranks(rank, world, local_rank, local_world, ("RANK", "WORLD_SIZE", "LOCAL_RANK", size_var))
    if world > 1 and "MASTER_ADDR" not in environ:
        raise ValueError(f"WORLD_SIZE={world} but MASTER_ADDR is not set; set MASTER_ADDR and MASTER_PORT "
                         "to rank 0's host and a free port there.")
    if world > 1 and "MASTER_PORT" not in environ:
        raise ValueError(f"WORLD_SIZE={world} but MASTER_PORT is not set; set it to a free port on "
                         f"{environ['MASTER_ADDR']}.")
    launcher = ("torchrun" if "TORCHELASTIC_RUN_ID" in environ
                else "deepspeed" if "CROSS_RANK" in environ or "LOCAL_SIZE" in environ else "env")
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
                   master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
                   master_port=_port(environ) or free_port(), launcher=launcher)


def _from_slurm(environ: Mapping[str, str]) -> DistEnv:
    for required in ("SLURM_NTASKS", "SLURM_LOCALID"):
        if required not in environ:
            raise ValueError(f"SLURM_PROCID is set but {required} is not; start the job's processes with "
                             "srun (one task per GPU), not plain python inside sbatch.")
    rank, world = _int(environ, "SLURM_PROCID"), _int(environ, "SLURM_NTASKS")
    local_rank = _int(environ, "SLURM_LOCALID")
    local_world = _slurm_local_world(environ)
    _check_ranks(rank, world, local_rank, local_world,
                 ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE"))
    addr = environ.get("MASTER_ADDR")
    if addr is None:
        nodelist_var = next((v for v in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                             if environ.get(v)), None)
        if nodelist_var is None:
            raise ValueError("under SLURM without MASTER_ADDR, SLURM_JOB_NODELIST (or SLURM_NODELIST) is "
                             "needed to find rank 0's host; set MASTER_ADDR.")
        addr = first_host(environ[nodelist_var])
    port = _port(environ)
    if port is None:
        if "SLURM_JOB_ID" not in environ:
            raise ValueError("under SLURM without MASTER_PORT, SLURM_JOB_ID is needed to derive the port; "
                             "set MASTER_PORT.")
        port = SLURM_PORT_BASE + _int(environ, "SLURM_JOB_ID") % SLURM_PORT_SPAN
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
                   master_addr=addr, master_port=port, launcher="slurm")


def _slurm_local_world(environ: Mapping[str, str]) -> int | None:
    """Tasks on this node, from the step's per-node counts ('2(x3),1') and SLURM_NODEID."""
    spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if not spec or "SLURM_NODEID" not in environ:
        return None
    counts = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            raise ValueError(f"SLURM_STEP_TASKS_PER_NODE={spec!r} is not of the form '2(x3),1'.")
        counts += [int(match[1])] * int(match[2] or 1)
    node = _int(environ, "SLURM_NODEID")
    if not 0 <= node < len(counts):
        raise ValueError(f"SLURM_NODEID={node} is outside the {len(counts)} nodes of "
                         f"SLURM_STEP_TASKS_PER_NODE={spec!r}.")
    return counts[node]


def _check_ranks(rank: int, world: int, local_rank: int, local_world: int | None,
                 names: tuple[str | None, ...]) -> None:
    rank_var, world_var, local_var, local_world_var = names
    if world < 1:
        raise ValueError(f"{world_var}={world} must be >= 1.")
    if not 0 <= rank < world:
        raise ValueError(f"{rank_var}={rank} must be in [0, {world_var}={world}).")
    if not 0 <= local_rank < world:
        raise ValueError(f"{local_var}={local_rank} must be in [0, {world_var}={world}).")
    if local_world is not None and not (0 <= local_rank < local_world <= world):
        raise ValueError(f"{local_var}={local_rank} and {local_world_var}={local_world} must satisfy "
                         f"0 <= {local_var} < {local_world_var} <= {world_var}={world}.")


def _int(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    # Stricter than int(), which also takes '1_000' and ' 7 '.
    if re.fullmatch(r"-?\d+", value) is None:
        raise ValueError(f"{name}={value!r} is not an integer.")
    return int(value)


def _port(environ: Mapping[str, str]) -> int | None:
    if "MASTER_PORT" not in environ:
        return None
    port = _int(environ, "MASTER_PORT")
    if not 0 < port < 65536:
        raise ValueError(f"MASTER_PORT={port} must be in [1, 65535].")
    return port


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free now (another process may take it before the store binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list, without calling scontrol."""
    return expand_nodelist(nodelist)[0]


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list in order: 'node[01-03,07],gpu5' -> node01 node02 node03 node07 gpu5.

    Several bracket groups in one name expand as a product ('r[1-2]n[1-2]' -> r1n1 r1n2 r2n1 r2n2);
    zero padding follows the range's first bound, as SLURM writes it.
    """
    hosts = [host for name in _split_top_level(nodelist) for host in _expand_name(name, nodelist)]
    if not hosts:
        raise ValueError(f"node list {nodelist!r} names no host.")
    return hosts


def _split_top_level(nodelist: str) -> list[str]:
    """Split on commas outside brackets."""
    names, depth, start = [], 0, 0
    for i, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError(f"node list {nodelist!r} has unbalanced or nested brackets.")
        if char == "," and depth == 0:
            names.append(nodelist[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"node list {nodelist!r} has an unclosed bracket.")
    names.append(nodelist[start:])
    return [name.strip() for name in names if name.strip()]


def _expand_name(name: str, nodelist: str) -> list[str]:
    pieces = re.split(r"\[([^\]]*)\]", name)  # literal, ranges, literal, ranges, ..., literal
    options = [[piece] if i % 2 == 0 else _expand_ranges(piece, nodelist) for i, piece in enumerate(pieces)]
    return ["".join(combo) for combo in itertools.product(*options)]


def _expand_ranges(ranges: str, nodelist: str) -> list[str]:
    values = []
    for part in ranges.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", part)
        if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
            raise ValueError(f"node list {nodelist!r}: {part!r} is not a number or an increasing range a-b.")
        low, high = match[1], match[2] or match[1]
        values += [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]
    return values
