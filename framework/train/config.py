"""The run config: one typed tree, each component reads only its own section.

    RunConfig
      model        ModelConfig (framework/model/config.py): starting point, heads, checkpointing
      engine       DeepSpeed config file, precision, ZeRO stage override
      tracking     MLflow store and experiment
      checkpoint   interval, how many to keep, resume policy
      checks       overrides of the checks made before training (framework/train/preflight.py)
      stages       [StageConfig]: kind, data, optimiser, freezing, evaluation, and the kind's own sections
                   (contrastive: loss, gather, split_batch; retromae: retromae)

A run config is a YAML file (examples in configs/) plus dotted overrides; `load_run_config` resolves
and validates it before any process group starts. Checks within a section live in its __post_init__;
every check that spans sections is `check_stage` (it asks the stage's kind, framework/train/tasks/, the
registry of kinds). Batch sizes that depend on the world size are derived later, once, in
framework/train/batching.py.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from framework.config import apply_overrides, check_choices, from_dict, read_yaml
# The data section has one definition, read by the stream too (framework/data/config.py); re-exported
# here because it is part of the run config's tree.
from framework.data.config import NAMED_EDGES, BucketSection, DataConfig  # noqa: F401
from framework.evaluate.config import EvalConfig
from framework.loss import LossConfig
from framework.model.config import ModelConfig
from framework.pretrain.config import RetroMAEConfig
from framework.tracking import TrackingConfig  # the one tracking section (training and evaluation)
from framework.train.best import check_evaluation
from framework.train.tasks import TASKS, task_class

Schedule = Literal["linear", "cosine", "constant"]
Precision = Literal["auto", "bf16", "fp32"]


@dataclass(frozen=True)
class EngineConfig:
    """How DeepSpeed runs the model."""

    deepspeed_config: str = "ds_configs/zero2.json"
    """DeepSpeed JSON (ZeRO, precision details, bucket sizes); batch, lr and clipping are injected."""
    zero_stage: Literal[0, 1, 2, 3] | None = None
    """Override of the file's zero_optimization.stage (0-3); None keeps the file's."""
    precision: Precision = "auto"
    """'bf16' (GPU), 'fp32' (CPU), or 'auto': bf16 when CUDA is available, else fp32."""
    backend: str | None = None
    """torch.distributed backend; None = nccl with CUDA, gloo otherwise."""

    def __post_init__(self) -> None:
        check_choices(self, "engine")


@dataclass(frozen=True)
class CheckpointConfig:
    """DeepSpeed checkpoints and BGE-M3 exports."""

    every_steps: int = 1000
    """Optimizer steps between checkpoints (one is always written at each stage end); 0 = stage ends only."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones are deleted once a newer one is complete)."""
    resume: Literal["auto", "never", "must"] = "auto"
    """'auto': continue from output_dir's latest checkpoint if there is one; 'never': refuse a used
    output_dir; 'must': fail unless a checkpoint exists."""

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.keep_last < 1:
            raise ValueError("checkpoint.every_steps must be >= 0 and checkpoint.keep_last >= 1")
        check_choices(self, "checkpoint")


@dataclass(frozen=True)
class ChecksConfig:
    """Overrides of the checks made before training (framework/train/preflight.py)."""

    accept_tokenizers: list[str] = field(default_factory=list)
    """sha256 of shard tokenizers (as the manifest records them) accepted although they differ from the
    model's: only for a user who knows both vocabularies are identical."""

    def __post_init__(self) -> None:
        for digest in self.accept_tokenizers:
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"checks.accept_tokenizers: {digest!r} is not a sha256; copy the full hex digest "
                                 "the refusal message prints")


@dataclass(frozen=True)
class LrGroup:
    """Parameters trained at their own peak learning rate (same warm-up and decay as the stage's)."""

    pattern: str
    """Regex searched in parameter names, e.g. '^model\\.(sparse|colbert)_linear\\.' for the two heads."""
    lr: float
    """Peak learning rate of the parameters it matches (optim.lr stays the rest's)."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 1e-5
    """Peak learning rate."""
    weight_decay: float = 0.01
    """Decoupled weight decay (not applied to biases and LayerNorm weights)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    warmup_ratio: float = 0.1
    """Fraction of the stage's steps with linear warm-up (ignored when warmup_steps is set)."""
    warmup_steps: int | None = None
    """Warm-up length in optimizer steps."""
    schedule: Schedule = "linear"
    """Decay after warm-up: 'linear' (to 0, the reference's), 'cosine' or 'constant'."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (0: off)."""
    lr_groups: list[LrGroup] = field(default_factory=list)
    """Parameters at their own peak rate: a parameter takes the first group whose pattern its name matches
    (e.g. the fresh heads at 1e-3 while the encoder trains at 1e-5); a pattern that matches no trainable
    parameter is an error when the engine is built."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr={self.lr}: use a positive learning rate")
        check_choices(self, "optim")
        for i, group in enumerate(self.lr_groups):
            if group.lr <= 0:
                raise ValueError(f"optim.lr_groups[{i}].lr={group.lr}: use a positive learning rate")
            try:
                re.compile(group.pattern)
            except re.error as err:
                raise ValueError(f"optim.lr_groups[{i}].pattern {group.pattern!r} is not a regex: {err}") from err
        if not 0 <= self.warmup_ratio < 1 or (self.warmup_steps is not None and self.warmup_steps < 0):
            raise ValueError("optim.warmup_ratio must lie in [0, 1) and optim.warmup_steps be >= 0")

    def warmup(self, total_steps: int) -> int:
        return self.warmup_steps if self.warmup_steps is not None else int(self.warmup_ratio * total_steps)


@dataclass(frozen=True)
class GatherConfig:
    """Which heads see all ranks' passages as in-batch negatives."""

    dense: bool = True
    """Dense InfoNCE against all ranks' passages (cross-device negatives, the reference's default)."""
    scores: Literal["local_rows", "all_rows"] = "local_rows"
    """'local_rows': this rank's queries x all passages, the passages' gradient all-reduced in backward
    (a (Q, S) matrix: 188 MB instead of 18 GB per rank at the paper's 96-GPU unsupervised batch);
    'all_rows': all queries x all passages on every rank, as the reference computes it."""
    rescale_grad: bool = True
    """all_rows: scale the gradient by the world size so it equals one process on the whole batch;
    False reproduces the reference (its cross-device dense gradient is 1/world of that). local_rows
    always gives the single-process gradient, so there False is refused (the stage's kind checks it)."""

    def __post_init__(self) -> None:
        check_choices(self, "gather")


@dataclass(frozen=True)
class SplitBatchConfig:
    """Encode a batch in sub-batches, each under activation checkpointing (the paper's Algorithm 1)."""

    sub_batch: int | None = None
    """Sequences per sub-batch; None: encode whole batches."""
    sub_batch_tokens: int | None = None
    """Alternative: padded tokens per sub-batch (sub-batch = max(1, tokens // batch width))."""

    def __post_init__(self) -> None:
        if self.sub_batch is not None and self.sub_batch_tokens is not None:
            raise ValueError("split_batch: give sub_batch or sub_batch_tokens, not both")
        for name in ("sub_batch", "sub_batch_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"split_batch.{name}={value}: use >= 1 or null")

    @property
    def enabled(self) -> bool:
        return self.sub_batch is not None or self.sub_batch_tokens is not None


@dataclass(frozen=True)
class StageConfig:
    """One stage of the curriculum."""

    name: str
    """Unique name (used in paths, MLflow run names and overrides: stages.<name>.field=...)."""
    kind: str = "contrastive"
    """A kind of the registry (framework/train/tasks/): 'contrastive' (the M3 loss on pairs) or 'retromae'
    (pre-training on plain text)."""
    steps: int | None = None
    """Optimizer steps of the stage."""
    samples: int | None = None
    """Alternative: queries (documents) over all ranks; steps = samples // global batch of the first bucket."""
    accumulation: int = 1
    """Micro-batches per optimizer step."""
    data: DataConfig = field(default_factory=lambda: DataConfig(manifest="-"))
    """Shards, sampling, buckets."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Kind contrastive: the M3 loss; in YAML `{preset: reference | paper, <LossConfig field>: value}`
    (framework/loss/config.py; no preset: reference)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    gather: GatherConfig = field(default_factory=GatherConfig)
    """Cross-rank negatives."""
    split_batch: SplitBatchConfig = field(default_factory=SplitBatchConfig)
    """Sub-batch encoding."""
    freeze: list[str] = field(default_factory=list)
    """Regexes of parameter names not trained, e.g. 'encoder\\.embeddings\\.position' or '^encoder\\.'."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """NaN/inf loss on any rank: 'stop' (name the step and the last good checkpoint) or 'skip' that
    optimizer step on every rank (counted in the metrics)."""
    retromae: RetroMAEConfig = field(default_factory=RetroMAEConfig)
    """Kind retromae: masking, decoder and loss weights (framework/pretrain/config.py)."""
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation of the stage's export at its end and, with every_steps, of its live weights while it trains
    (best export, early stopping: framework/train/best.py) (framework/evaluate/config.py; `benchmark: NAME`
    for short, tasks and max_queries at the top level are accepted too)."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name or ""):
            raise ValueError(f"stage name {self.name!r}: use letters, digits, '_' or '-'")
        if self.kind not in TASKS:
            raise ValueError(f"stages.{self.name}.kind={self.kind!r}: use one of {sorted(TASKS)}")
        if (self.steps is None) == (self.samples is None):
            raise ValueError(f"stages.{self.name}: give exactly one of steps or samples")
        if (self.steps or self.samples or 0) < 1 or self.accumulation < 1:
            raise ValueError(f"stages.{self.name}: steps/samples and accumulation must be >= 1")
        check_choices(self, f"stages.{self.name}")
        for pattern in self.freeze:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"stages.{self.name}.freeze: {pattern!r} is not a regex: {err}") from err


@dataclass(frozen=True)
class RunConfig:
    """A training run: a model, an engine and a list of stages."""

    output_dir: str
    """Checkpoints, exports, the resolved config and logs go here."""
    stages: list[StageConfig]
    """The curriculum, run in order; each stage starts from the previous one's weights."""
    name: str = "m3"
    """Run name (MLflow parent run)."""
    seed: int = 0
    """Root of all randomness (data order, group sampling, dropout, init of fresh heads)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Starting point and heads."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """DeepSpeed."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints and exports."""
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    """Overrides of the checks made before training."""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("stages is empty: list at least one stage")
        names = [s.name for s in self.stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names {duplicates} are used twice; give every stage its own name")
        if not self.model.path:
            raise ValueError("model.path is empty: give a HF or BGE-M3 model directory to start from "
                             "(tools/build_model.py makes one)")
        for stage in self.stages:
            check_stage(stage, self)


def check_stage(stage: StageConfig, run: RunConfig) -> None:
    """Every check that spans sections of a stage (or the stage and the run), in one place: the sections
    another kind reads must be left at their defaults, then the stage's kind checks its own."""
    task = task_class(stage.kind)
    owners = {name: sorted(t.kind for t in TASKS.values() if name in t.sections)
              for t in TASKS.values() for name in t.sections}
    for f in dataclasses.fields(stage):
        if f.name in owners and f.name not in task.sections and getattr(stage, f.name) != _default(f):
            raise ValueError(f"stages.{stage.name}.{f.name} applies to kind {' / '.join(owners[f.name])}, not "
                             f"{stage.kind}; remove it from the stage")
    task.check(stage, run)
    check_evaluation(stage, run)


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def load_run_config(path: str | Path | None, overrides: list[str] = (), data: dict | None = None) -> RunConfig:
    """Read a YAML run config (or take `data`), apply `dotted.key=value` overrides, validate."""
    raw = read_yaml(path) if path is not None else dict(data or {})
    raw = apply_overrides(raw, list(overrides))
    return from_dict(RunConfig, raw)
