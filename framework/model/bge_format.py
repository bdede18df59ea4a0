"""Read and write BGE-M3 model directories (the layout FlagEmbedding's BGEM3FlagModel loads).

A directory holds the HF encoder (config.json + model.safetensors or pytorch_model.bin), the tokenizer
files, and the two heads as plain {"weight", "bias"} dicts: colbert_linear.pt and sparse_linear.pt.
A plain HF encoder directory (no head files) loads too, with freshly initialised heads: that is how
training starts from XLM-R. A directory with only one head file is refused: the reference would
silently use a random head there.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from framework.model.config import ModelConfig
from framework.model.m3 import M3Model, special_token_ids
from framework.model.st_layout import write_st_layout

log = logging.getLogger(__name__)

HEAD_FILES = {"colbert_linear": "colbert_linear.pt", "sparse_linear": "sparse_linear.pt"}


def _head_files_present(model_dir: Path) -> dict[str, Path]:
    present = {name: model_dir / f for name, f in HEAD_FILES.items() if (model_dir / f).is_file()}
    if len(present) == 1:
        (have,), missing = present.values(), set(HEAD_FILES.values()) - {p.name for p in present.values()}
        raise ValueError(
            f"{model_dir}: found {have.name} but not {missing.pop()}. A BGE-M3 directory needs both head "
            "files (FlagEmbedding would silently use a random head). Restore the missing file, or delete "
            "the other one to start both heads fresh."
        )
    return present


def _load_head(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or set(state) != {"weight", "bias"}:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: expected a dict with 'weight' and 'bias', found {keys}; re-export the model")
    return state


def load_m3(model_dir: str | os.PathLike, cfg: ModelConfig | None = None,
            dtype: torch.dtype | None = None) -> tuple[M3Model, object]:
    """Load (model, tokenizer) from a BGE-M3 or plain HF encoder directory."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir}: no config.json. Point to a HF/BGE-M3 model directory, or build one with "
            "`python tools/build_model.py`."
        )
    cfg = cfg or ModelConfig(path=str(model_dir))
    heads = _head_files_present(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoder = AutoModel.from_pretrained(model_dir, dtype=dtype or torch.float32, add_pooling_layer=False)
    states = {name: _load_head(path) for name, path in heads.items()}
    colbert_dim = states["colbert_linear"]["weight"].shape[0] if states else None
    model = M3Model(encoder, special_token_ids(tokenizer), cfg, colbert_dim=colbert_dim)
    if states:
        model.colbert_linear.load_state_dict(states["colbert_linear"], strict=True)
        model.sparse_linear.load_state_dict(states["sparse_linear"], strict=True)
    elif cfg.sparse_init == "lexical":
        model.init_sparse_lexical(cfg.sparse_init_weight)
        log.warning("%s has no head files: colbert_linear starts from random init, sparse_linear as exact "
                    "lexical match (weight %g per token)", model_dir, cfg.sparse_init_weight)
    else:
        log.warning("%s has no head files: colbert_linear and sparse_linear start from random init", model_dir)
    return model.to(dtype or torch.float32), tokenizer


def m3_parameter_names(model_dir: str | os.PathLike) -> list[str]:
    """The parameter names of the M3Model that load_m3 builds from `model_dir`, from its config.json alone
    (built on the meta device: no weights read, no memory)."""
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        encoder = AutoModel.from_config(config, add_pooling_layer=False)
        model = M3Model(encoder, [0], ModelConfig(path=str(model_dir), unpad=False))
    return [name for name, _ in model.named_parameters()]


def save_m3(model: M3Model, tokenizer, out_dir: str | os.PathLike,
            state_dict: dict[str, torch.Tensor] | None = None, prompts: dict[str, str] | None = None) -> Path:
    """Write a BGE-M3 directory.

    `state_dict` (full M3Model keys) overrides the module's own parameters: under ZeRO-3 each rank holds
    only a shard, so the caller passes the gathered state (writing the module would save empty tensors,
    the reference's known ZeRO-3 bug). `prompts` (name -> text, e.g. {"query": "query: ", "document":
    "passage: "}) are saved as sentence-transformers' prompts, which M3Embedder reads as well.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    model.encoder.save_pretrained(out_dir, state_dict=encoder_state, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    for name, filename in HEAD_FILES.items():
        head = {p: state[f"{name}.{p}"].detach().to("cpu", torch.float32).contiguous() for p in ("weight", "bias")}
        if any(t.numel() == 0 for t in head.values()):
            raise ValueError(f"{name} has empty tensors: gather ZeRO-3 parameters before saving")
        torch.save(head, out_dir / filename)
    write_st_layout(out_dir, embedding_dim=model.encoder.config.hidden_size, max_seq_length=model.max_positions,
                    prompts=prompts)
    return out_dir
