"""The model's full fp32 weights out of a DeepSpeed engine, at any ZeRO stage, the BGE-M3 export, its card.

Every rank must call `full_state_dict` (under ZeRO-3 gathering a parameter is a collective); rank 0
gets the tensors. Trained parameters come from the optimizer's fp32 master copy (so a bf16 run exports
and hands the next stage fp32 weights, not their bf16 rounding); frozen ones from the module.
The export also loads as a sentence-transformers model (framework/model/st_layout.py, written by save_m3),
and the trainer writes its model card (README.md, framework/train/model_card.py) once the stage's
evaluation, if any, has run.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from framework.model import M3Model, save_m3
from framework.parallel import barrier, is_main

if TYPE_CHECKING:  # framework/train/config.py -> the stage kinds -> this module: no import at run time
    from framework.train.model_card import ModelCard


def full_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full fp32 tensor) of every parameter, on every rank (each one a collective under ZeRO)."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    for name, param in model.named_parameters():
        value = safe_get_full_fp32_param(param) if param.requires_grad else None
        if value is None:
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                value = param.detach().to(torch.float32).clone()
        yield name, value


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full fp32 CPU tensors of every parameter and persistent buffer (rank 0; {} elsewhere)."""
    state: dict[str, torch.Tensor] = {}
    for name, value in full_parameters(model):
        if is_main():
            state[name] = value.detach().to("cpu", torch.float32).clone()
    if is_main():
        wanted = set(model.state_dict())
        for name, buffer in model.named_buffers():
            if name in wanted:
                state[name] = buffer.detach().cpu().clone()
    return state


def export_bge_m3(model: M3Model, tokenizer, out_dir: Path, prompts: dict[str, str] | None = None) -> Path:
    """Gather and write a BGE-M3 directory (FlagEmbedding's BGEM3FlagModel loads it), with the named
    prompts the stage trained with (sentence-transformers' `prompts`)."""
    state = full_state_dict(model)
    if is_main():
        save_m3(model, tokenizer, out_dir, state_dict=state, prompts=prompts)
    barrier()
    return out_dir


def write_model_card(out_dir: Path, card: ModelCard) -> Path:
    """Write README.md (the model card) into an export directory on rank 0; every rank may call it."""
    path = Path(out_dir) / "README.md"
    if is_main():
        path.write_text(card.render(Path(out_dir)), encoding="utf-8")
    return path
