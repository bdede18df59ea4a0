"""Process group set-up and the small collectives the trainer needs (metrics, config, barriers).

The process group is initialised for world size 1 too, so one code path (and DeepSpeed, which reads
the same environment variables) runs everywhere. Every helper also works before init_distributed
(rank 0 of 1), which keeps model and loss code callable from plain scripts and tests.
"""
from __future__ import annotations

import gc
import os
import zlib
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from framework.parallel.env import DistEnv, detect_env

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 1800.0


def init_distributed(env: DistEnv | None = None, backend: str | None = None,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> DistEnv:
    """Join the default process group described by `env` (default: detect_env()); idempotent.

    Backend: nccl when CUDA is available, else gloo. On GPU the CUDA device is set from local_rank
    before the group exists, so NCCL binds each rank to its own device. RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR and MASTER_PORT are exported: deepspeed.initialize reads them (without them a
    single-process run tries to import mpi4py) and so does the env:// rendezvous.
    """
    env = detect_env() if env is None else env
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (env.rank, env.world_size):
            raise ValueError(f"a process group is already initialised as rank {dist.get_rank()} of "
                             f"{dist.get_world_size()}, not rank {env.rank} of {env.world_size}; call "
                             "shutdown() first or pass the matching DistEnv.")
        return env
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        # A site may show each task only its own GPU (--gpus-per-task, --gpu-bind): then index 0.
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
                      MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port))
    if env.local_world_size is not None:
        os.environ["LOCAL_WORLD_SIZE"] = str(env.local_world_size)
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank,
                            world_size=env.world_size, timeout=timedelta(seconds=timeout_s))
    return env


def shutdown() -> None:
    """Free what the run left in reference cycles (engines, tensors, in-flight collectives), then leave
    the process group (a no-op when none exists).

    Both happen while the interpreter is fully alive: a tensor whose last reference is dropped by a gloo
    or autograd thread during interpreter finalisation can abort the process (SIGABRT) instead of letting
    it exit with its status (pytorch/pytorch#190489), which a preempted run's exit 75 must survive.
    """
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def comm_device() -> torch.device:
    """Where collective buffers must live: the current GPU under nccl, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: T, src: int = 0) -> T:
    """`obj` as rank `src` holds it (picklable objects only)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=comm_device())
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Mapping[str, float] | torch.Tensor) -> dict[str, float] | torch.Tensor:
    """Sum over ranks of a dict of floats (every rank must pass the same keys) or of a tensor.

    A dict goes as one float64 tensor: [number of keys, checksum of the key names, values in sorted-key
    order], so one collective serves all metrics and a rank with other keys gets a ValueError instead
    of silently summing mismatched metrics (with other key counts gloo sums the common prefix on one
    rank and fails on the other, hence the header first). The input is not modified.
    """
    if isinstance(values, torch.Tensor):
        return _all_reduce_tensor(values)
    keys = sorted(values)
    header = [float(len(keys)), float(zlib.crc32("\0".join(keys).encode()))]
    packed = torch.tensor(header + [float(values[key]) for key in keys], dtype=torch.float64)
    summed = _all_reduce_tensor(packed).tolist()
    if summed[:2] != [h * world_size() for h in header]:
        raise ValueError(f"all_reduce_sum: ranks passed different metric keys (this rank: {keys}); "
                         "every rank must report the same names, e.g. 0.0 for a metric it lacks.")
    return dict(zip(keys, summed[2:]))


def all_reduce_mean(values: Mapping[str, float] | torch.Tensor) -> dict[str, float] | torch.Tensor:
    """Mean over ranks of a dict of floats or a tensor (an integer tensor comes back as float)."""
    summed = all_reduce_sum(values)
    if isinstance(summed, torch.Tensor):
        return summed / world_size()
    return {key: value / world_size() for key, value in summed.items()}


def _all_reduce_tensor(tensor: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized():
        return tensor.detach().clone()
    buffer = tensor.detach().to(comm_device(), copy=True).contiguous()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(tensor.device)
