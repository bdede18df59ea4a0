"""A randomly initialised XLM-RoBERTa encoder in Hugging Face format, with its tokenizer beside it.

No model hub is involved: the shape comes from SIZES, the vocabulary from a tokenizer directory made by
framework/starting/tokenizer.py (or any XLM-R tokenizer directory). The output loads with
`transformers.AutoModel.from_pretrained(out_dir)` and `AutoTokenizer.from_pretrained(out_dir)`.
Command line: `python tools/build_model.py --tokenizer-dir /tmp/tok --out-dir /tmp/tiny --size tiny`.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

from framework.model.positions import position_offset

log = logging.getLogger(__name__)

PAD_TOKEN_ID = 1
# XLM-R's position ids start after the padding index, so a model that reads N tokens needs N + 2 position
# embeddings: 514 for 512 tokens, 8194 for bge-m3's 8192.
POSITION_OFFSET = position_offset({"model_type": "xlm-roberta", "pad_token_id": PAD_TOKEN_ID})
TOKENIZER_FILES = ("sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")


@dataclass(frozen=True)
class ModelShape:
    """The transformer dimensions of one named model size."""

    hidden_size: int
    """Width of every hidden state (the dense embedding size)."""
    num_layers: int
    """Number of transformer encoder layers."""
    num_heads: int
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: int
    """Width of the feed-forward block inside each layer."""
    max_positions: int
    """Longest input in tokens (the config gets max_positions + 2 position embeddings)."""


SIZES: dict[str, ModelShape] = {
    "tiny": ModelShape(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=512),
    "base": ModelShape(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, max_positions=512),
    # bge-m3's shape: XLM-RoBERTa-large with positions extended to 8192 tokens.
    "large": ModelShape(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096, max_positions=8192),
}


def shape_of(size: str) -> ModelShape:
    """Look up a named size, naming the valid ones when it is unknown."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    return SIZES[size]


def build_config(size: str, vocab_size: int, max_positions: int | None = None) -> XLMRobertaConfig:
    """The XLMRobertaConfig of a named size, without allocating weights.

    `max_positions` (tokens) overrides the size's default; the config stores it plus 2.
    """
    shape = shape_of(size)
    max_positions = shape.max_positions if max_positions is None else max_positions
    if max_positions < 1:
        raise ValueError(f"max_positions={max_positions} must be a positive token count, e.g. 512")
    if vocab_size < 5:
        raise ValueError(f"vocab_size={vocab_size} cannot hold XLM-R's 5 special tokens; pass len(tokenizer)")
    return XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, intermediate_size=shape.intermediate_size,
        max_position_embeddings=max_positions + POSITION_OFFSET, type_vocab_size=1,
        pad_token_id=PAD_TOKEN_ID, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
        hidden_act="gelu", initializer_range=0.02)


def check_tokenizer_dir(tokenizer_dir: Path) -> None:
    """Raise FileNotFoundError naming the missing files and how to make them."""
    missing = [name for name in TOKENIZER_FILES if not (tokenizer_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"tokenizer directory {tokenizer_dir} lacks {missing}; create it with "
                                "'python tools/train_tokenizer.py TEXT_FILES --out-dir DIR'")


def copy_tokenizer(tokenizer_dir: Path, out_dir: Path, max_positions: int) -> None:
    """Copy the tokenizer files, setting model_max_length to what the model can read."""
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, out_dir / name)
    config_path = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer_config["model_max_length"] = max_positions
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_model(tokenizer_dir: str | Path, out_dir: str | Path, size: str = "tiny",
                max_positions: int | None = None, seed: int = 0) -> Path:
    """Write config.json + model.safetensors + tokenizer files into `out_dir`; returns it as a Path."""
    tokenizer_dir, out_dir = Path(tokenizer_dir), Path(out_dir)
    check_tokenizer_dir(tokenizer_dir)
    vocab_size = len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    config = build_config(size, vocab_size, max_positions)
    log.info(f"building {size} XLM-R: hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
             f"vocab {vocab_size}, {config.max_position_embeddings} positions")
    save_random(XLMRobertaModel, config, tokenizer_dir, out_dir, seed)
    log.info(f"model ready in {out_dir}")
    return out_dir


def save_random(model_class: type, config: XLMRobertaConfig, tokenizer_dir: Path, out_dir: Path, seed: int) -> None:
    """A `model_class(config)` initialised from `seed`, saved into out_dir with the tokenizer files."""
    # fork_rng keeps the caller's global RNG stream untouched while making the weights a function of seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    copy_tokenizer(tokenizer_dir, out_dir, config.max_position_embeddings - POSITION_OFFSET)
