"""DeepSpeed engine construction: resolved config, frozen parameters, AdamW and its schedule.

The optimiser is torch's fused AdamW (CUDA and CPU) passed as a client object (DeepSpeed's own Adam
variants need a JIT build of a C++/CUDA op). The learning-rate schedule is a
LambdaLR that DeepSpeed steps at each optimizer step (not at each micro-batch).

Skipping an update. Every ZeRO stage ends in the client optimizer's `step()`, so withholding that one
call (`UpdateGate.withheld`) skips an update while `engine.step()` still runs: DeepSpeed's
micro-step counter, its accumulation boundary and the schedule stay where the trainer's step count
says (framework/train/steps.py). Skipping `engine.backward`/`engine.step` instead would shift
DeepSpeed's accumulation boundary against the trainer's steps as soon as accumulation > 1.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import re
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from framework.parallel import install_grad_sync
from framework.train.batching import BatchPlan
from framework.train.config import EngineConfig, LrGroup, OptimConfig

log = logging.getLogger(__name__)

INJECTED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
            "gradient_clipping", "bf16", "fp16", "optimizer", "scheduler")
BUCKET_FLOOR, BUCKET_CAP = 1_000_000, 200_000_000  # elements (size_buckets)
NO_DECAY = re.compile(r"(^|\.)bias$|LayerNorm\.weight$|layer_norm\.weight$|norm\.weight$")


def resolve_precision(precision: str) -> str:
    """'auto' -> bf16 with CUDA, fp32 on CPU (DeepSpeed refuses fp16 on CPU; bf16 on CPU is slow)."""
    if precision == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return precision


def resolve_ds_config(cfg: EngineConfig, plan: BatchPlan, optim: OptimConfig, precision: str) -> dict:
    """The DeepSpeed config of one stage: the file's settings plus what the run derives."""
    path = Path(cfg.deepspeed_config)
    if not path.is_file():
        raise ValueError(f"engine.deepspeed_config={path} does not exist; use one of ds_configs/*.json")
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    clashes = [key for key in INJECTED if key in ds]
    if clashes:
        raise ValueError(f"{path} sets {clashes}, which the run derives (batch table, optim.*, "
                         "engine.precision); remove them from the file")
    _refuse_auto(ds, str(path))
    ds = copy.deepcopy(ds)
    ds.setdefault("zero_optimization", {})
    if cfg.zero_stage is not None:
        ds["zero_optimization"]["stage"] = cfg.zero_stage
    ds["train_micro_batch_size_per_gpu"] = plan.reference_micro
    ds["gradient_accumulation_steps"] = plan.accumulation
    ds["train_batch_size"] = plan.global_batch
    assert ds["train_batch_size"] == (ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"]
                                      * plan.world_size)
    ds["gradient_clipping"] = optim.grad_clip
    ds["bf16"] = {"enabled": precision == "bf16"}
    return ds


def bucket_elements(trainable: int) -> int:
    """ds_configs/README.md's rule: clamp(T / 8, 1e6, 2e8) elements, a multiple of 1024 (T trainable
    parameters): two gradient buffers of a quarter of the gradients, a few hundred MB per collective at
    the paper's scale, no per-call latency paid thousands of times per step for tiny models."""
    return min(max(trainable // 8, BUCKET_FLOOR), BUCKET_CAP) // 1024 * 1024


def size_buckets(ds: dict, trainable: int) -> dict:
    """A copy of `ds` with the ZeRO bucket sizes the file leaves out sized from the model; a value the file
    writes is kept. DeepSpeed's own default (5e8 elements, 2 GB in fp32) exceeds most models, and ZeRO-1/2
    allocate one or two reduce buffers of that size at every micro-batch."""
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage == 0:
        return ds
    size = bucket_elements(trainable)
    keys = ({"reduce_bucket_size": size, "stage3_prefetch_bucket_size": size * 9 // 10} if stage >= 3 else
            {"reduce_bucket_size": size, "allgather_bucket_size": size})
    ds = copy.deepcopy(ds)
    for key, value in keys.items():
        ds["zero_optimization"].setdefault(key, value)
    return ds


def _refuse_auto(node, where: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_auto(value, f"{where}:{key}")
    elif node == "auto":
        raise ValueError(f"{where} is 'auto'; write the value (the framework fills only batch sizes, "
                         "accumulation, clipping and precision)")


def pattern_problems(freeze_patterns: list[str], lr_groups: list[LrGroup], names: list[str]) -> list[str]:
    """What is wrong with a stage's parameter patterns against its objective's parameter `names`: a freeze
    pattern that matches nothing, freezing everything, an optim.lr_groups pattern that matches no trained
    parameter. The engine raises the first when it builds; the preflight lists them all before any stage."""
    problems, frozen = [], set()
    for pattern in freeze_patterns:
        matched = [name for name in names if re.search(pattern, name)]
        if not matched:
            problems.append(f"freeze pattern {pattern!r} matches no parameter; names look like {names[:5]}")
        frozen.update(matched)
    if names and frozen >= set(names):
        problems.append(f"freeze patterns {freeze_patterns} freeze every parameter; nothing would train")
    trained = [name for name in names if name not in frozen]
    for i, group in enumerate(lr_groups):
        if not any(re.search(group.pattern, name) for name in trained):
            problems.append(f"optim.lr_groups[{i}].pattern {group.pattern!r} matches no trained parameter (frozen "
                            f"ones do not count); trained names look like {trained[:5]}")
    return problems


def freeze(module: nn.Module, patterns: list[str]) -> list[str]:
    """Set requires_grad=False on parameters whose name matches a pattern; returns the frozen names."""
    names = [name for name, _ in module.named_parameters()]
    problems = pattern_problems(patterns, [], names)
    if problems:
        raise ValueError(problems[0])
    frozen_set = {name for name in names if any(re.search(pattern, name) for pattern in patterns)}
    for name, param in module.named_parameters():
        param.requires_grad_(name not in frozen_set)
    return sorted(frozen_set)


class UpdateGate:
    """Withholds a torch optimizer's updates on request: inside `withheld(True)` its step() changes nothing
    (parameters, moments, step counts). The optimizer keeps its type (DeepSpeed's ZeRO accepts only the
    optimizer classes it lists) and its step method is wrapped on the instance."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer, self.holding = optimizer, False
        self.num_withheld = 0
        """Updates withheld since construction."""
        update = optimizer.step

        def step(opt, *args, **kwargs):
            if self.holding:
                self.num_withheld += 1
                return None
            return update(*args, **kwargs)

        # Bound to the instance, so LambdaLR's own wrapper (it re-binds step.__func__) still reaches it.
        optimizer.step = types.MethodType(step, optimizer)

    @contextmanager
    def withheld(self, hold: bool = True):
        """Withhold the updates of the optimizer steps run inside (when `hold`)."""
        self.holding = hold
        try:
            yield
        finally:
            self.holding = False


class BuiltEngine(NamedTuple):
    """What build_engine returns."""

    engine: Any
    """The DeepSpeed engine around the objective."""
    updates: UpdateGate
    """The gate on the client optimizer: the one place an update can be withheld."""
    scheduler: torch.optim.lr_scheduler.LRScheduler
    """The learning-rate schedule DeepSpeed steps at each applied optimizer step."""


def param_groups(module: nn.Module, cfg: OptimConfig) -> list[dict]:
    """The trainable parameters in AdamW groups: per learning rate (optim.lr, then each of optim.lr_groups),
    with and without weight decay (none on biases and norm weights); empty groups left out. Each group
    carries its "name" ('base' or 'lr_groups[i]'), so optimizer.param_groups says which rate it is."""
    rates = [("base", cfg.lr, None), *((f"lr_groups[{i}]", g.lr, re.compile(g.pattern))
                                        for i, g in enumerate(cfg.lr_groups))]
    trained = [(name, param) for name, param in module.named_parameters() if param.requires_grad]
    problems = pattern_problems([], cfg.lr_groups, [name for name, _ in trained])
    if problems:
        raise ValueError(problems[0])
    members: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, param in trained:
        rate = next((i + 1 for i, (_, _, regex) in enumerate(rates[1:]) if regex.search(name)), 0)
        members.setdefault((rate, bool(NO_DECAY.search(name))), []).append(param)
    return [{"params": members[(rate, no_decay)], "lr": rates[rate][1], "name": rates[rate][0],
             "weight_decay": 0.0 if no_decay else cfg.weight_decay}
            for rate in range(len(rates)) for no_decay in (False, True) if (rate, no_decay) in members]


def adamw(module: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters in param_groups' groups."""
    # Fused on CPU too: torch's CPU default is the single-tensor loop, 7.6x slower per step over 20M fp32
    # parameters on one thread (bench/vs_flagembedding.py's optimizer_probe), with the same updates.
    return torch.optim.AdamW(param_groups(module, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             fused=True)


def lr_factor(schedule: str, warmup: int, total: int):
    """Multiplier of the peak lr at optimizer step s (0-based): linear warm-up, then the decay."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def logged_lrs(cfg: OptimConfig, scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, float]:
    """The current rates: "lr" (optim.lr's parameters) and "lr_group_<i>" per optim.lr_groups entry."""
    factor = scheduler.get_last_lr()[0] / scheduler.base_lrs[0]
    return {"lr": cfg.lr * factor, **{f"lr_group_{i}": g.lr * factor for i, g in enumerate(cfg.lr_groups)}}


def skip_shm_op_build() -> None:
    """DeepSpeed JIT-builds a shared-memory op at init that only inference all-reduce uses (~50 s on a
    fresh CPU machine, needs a compiler). Replace the builder with one that reports 'not available'."""
    module = sys.modules.get("deepspeed.comm.torch")
    if module is None:
        import deepspeed.comm.torch  # noqa: F401  (the module name clashes with torch: reach it by path)
        module = sys.modules["deepspeed.comm.torch"]
    if hasattr(module, "build_shm_op"):
        module.build_shm_op = lambda *args, **kwargs: None


def build_engine(module: nn.Module, optim: OptimConfig, plan: BatchPlan, ds_config: dict) -> BuiltEngine:
    """deepspeed.initialize with the client optimiser (behind an UpdateGate) and the schedule."""
    import deepspeed

    skip_shm_op_build()
    factor = lr_factor(optim.schedule, optim.warmup(plan.steps), plan.steps)
    client = adamw(module, optim)
    gate = UpdateGate(client)
    # A callable, so the schedule drives the optimizer DeepSpeed wraps (ZeRO replaces the param groups).
    engine, _, _, scheduler = deepspeed.initialize(
        model=module, optimizer=client, config=ds_config,
        lr_scheduler=lambda wrapped: torch.optim.lr_scheduler.LambdaLR(wrapped, factor))
    log.debug("gradient reduction: %s", install_grad_sync(engine))
    return BuiltEngine(engine, gate, scheduler)
