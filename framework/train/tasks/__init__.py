"""The registry of stage kinds: the one list that config validation, batching and the trainer read.

    contrastive  ContrastiveTask (contrastive.py): the M3 loss on query/passage shards; exports BGE-M3
    retromae     RetroMAETask (retromae.py): RetroMAE pre-training on text shards; exports the encoder

A new kind is one module here with a `StageTask` subclass (base.py: the contract) and one entry below.
"""
from __future__ import annotations

from framework.train.tasks.base import StageTask
from framework.train.tasks.contrastive import ContrastiveTask
from framework.train.tasks.retromae import RetroMAETask

TASKS: dict[str, type[StageTask]] = {task.kind: task for task in (ContrastiveTask, RetroMAETask)}


def task_class(kind: str) -> type[StageTask]:
    """The StageTask of `kind`; ValueError listing the kinds there are."""
    if kind not in TASKS:
        raise ValueError(f"unknown stage kind {kind!r}; use one of {sorted(TASKS)}")
    return TASKS[kind]


__all__ = ["TASKS", "ContrastiveTask", "RetroMAETask", "StageTask", "task_class"]
