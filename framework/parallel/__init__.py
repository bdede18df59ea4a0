"""Everything distributed: rank detection, the process group, collectives and the embedding gather.

The only package that imports torch.distributed; model and loss code stay single-process.
    env.py          DistEnv / detect_env: torchrun, deepspeed launcher, srun, single process
    collectives.py  init_distributed / shutdown, rank helpers, metric all-reduce, object broadcast
    gather.py       gather_with_grad / gather: cross-rank in-batch negatives (gradient semantics there)
    grad_sync.py    ZeRO-0's gradient mean with embedding matrices reduced by touched rows
"""
from framework.parallel.collectives import (all_gather_object, all_reduce_mean, all_reduce_sum, barrier,
                                            broadcast_object, comm_device, init_distributed, is_initialized,
                                            is_main, rank, shutdown, world_size)
from framework.parallel.env import DistEnv, detect_env, expand_nodelist, first_host, free_port
from framework.parallel.gather import Gathered, gather, gather_with_grad
from framework.parallel.grad_sync import install_grad_sync, row_sparse_mean

__all__ = [
    "DistEnv", "Gathered", "all_gather_object", "all_reduce_mean", "all_reduce_sum", "barrier",
    "broadcast_object", "comm_device", "detect_env", "expand_nodelist", "first_host", "free_port", "gather",
    "gather_with_grad", "init_distributed", "install_grad_sync", "is_initialized", "is_main", "rank",
    "row_sparse_mean", "shutdown", "world_size",
]
