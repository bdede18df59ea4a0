"""The stage-task contract: everything that differs between kinds of curriculum stage, in one class.

A kind declares, as class attributes and methods (the trainer, framework/train/stage.py, calls nothing
else that is kind-specific):

    kind        its name in a run config (`stages[i].kind`)
    sections    the StageConfig sections it reads besides the common ones (data, optim, freeze,
                accumulation, on_nonfinite, evaluate); another kind's sections must stay at their defaults
    batch_type  the TrainBatch (framework/data/batch.py) its stream yields: what a batch holds and counts
    check       cross-section checks against the stage and the run, at config load (before any process
                starts: no model, no data)
    check_plan  checks that need the world size, when framework/train/batching.py derives the plan
    parameter_names  the objective's parameter names from the start's config alone, for the preflight's
                check of freeze and optim.lr_groups patterns (None: the engine checks them when it builds)
    __init__    builds `objective` (model + loss, the nn.Module DeepSpeed wraps) and `tokenizer`
    stream      its stream over a manifest, for the resumable loader
    after_engine  whatever the kind needs once DeepSpeed wrapped the objective (ZeRO-3 registrations)
    forward     one micro-batch through the engine -> ObjectiveOutput: named loss terms ("loss" is the
                total backward uses) and a ForwardReport (token positions the encoder computed on)
    export      the stage-end export directory the next stage starts from
    warnings    console warnings about a logging window's metrics (rank 0 prints them at the log step)
    evaluates_in_training  whether `evaluate.every_steps` applies: the kind trains an M3Model, `model`,
                whose live weights framework/train/evaluation.py evaluates
    inference_prompts  the named prompts (name -> text) the export saves and inference puts before texts,
                so evaluation during training uses them too ({}: none, the default)

Batches go in by name (engine(batch=..., step=...) or keyword tensors), never as a tuple whose order
has to match a forward signature.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn
from torch.utils.data import IterableDataset

from framework.train.objective import ObjectiveOutput

if TYPE_CHECKING:  # the config imports this registry; at run time the tasks need only its values
    from framework.data.stream import StreamConfig, StreamState
    from framework.train.config import RunConfig, StageConfig


class StageTask(ABC):
    """One kind of stage: its sections, checks, stream, forward and export (see the module doc)."""

    kind: ClassVar[str]
    sections: ClassVar[tuple[str, ...]] = ()
    batch_type: ClassVar[type]
    evaluates_in_training: ClassVar[bool] = False

    objective: nn.Module
    """Model + loss: the module DeepSpeed wraps and checkpoints."""
    tokenizer: Any
    """The HF tokenizer the stream encodes with (and the export ships)."""
    inference_prompts: Mapping[str, str] = MappingProxyType({})
    """Named prompts of the trained model (framework/data/sources.py export_prompts); none by default."""

    @classmethod
    def check(cls, stage: StageConfig, run: RunConfig) -> None:
        """ValueError naming the field and the fix when the kind's sections contradict the stage or run."""

    @classmethod
    def check_plan(cls, stage: StageConfig, micro_per_rank: dict[int, int], world_size: int) -> None:
        """ValueError when the stage cannot train at this world size (per-rank micro-batches given)."""

    @classmethod
    def parameter_names(cls, start_dir: Path) -> list[str] | None:
        """The names of `objective`'s parameters for a stage starting from `start_dir`, without loading
        weights (the preflight checks freeze and optim.lr_groups patterns against them); None: known only
        once the objective is built (the engine checks them then)."""
        return None

    @abstractmethod
    def stream(self, manifest: str | Path, cfg: StreamConfig, rank: int, world_size: int,
               state: StreamState) -> IterableDataset:
        """One epoch of this kind's batches for `rank`, from `state`."""

    def after_engine(self, zero_stage: int) -> None:
        """Called once DeepSpeed has wrapped `objective` at ZeRO stage `zero_stage`."""

    @abstractmethod
    def forward(self, engine: Callable[..., Any], batch, step: int) -> ObjectiveOutput:
        """Named loss terms and the report of one micro-batch (already on the engine's device); `engine` is
        the DeepSpeed engine (or the bare objective), called with the batch by name."""

    def warnings(self, metrics: dict[str, float]) -> list[str]:
        """Sentences about a logging window's metrics that a person should see (none by default)."""
        return []

    @abstractmethod
    def export(self, out_dir: Path) -> Path:
        """Write the stage's result to `out_dir` (every rank calls it: gathering ZeRO-3 weights is a
        collective); returns the directory."""
