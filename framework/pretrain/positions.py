"""Learned absolute position tables: where real positions start, and how to lengthen a table.

XLM-R (and RoBERTa) number positions from padding_idx + 1 = 2: rows 0 and 1 are never used by a real
token (row 1 is what padding looks up), so a table of 514 rows reads 512 tokens and bge-m3's 8194 rows
read 8192. BERT numbers from 0. Everything here takes an HF config object or a config.json dict.

Shape legend: P rows of the position table, H hidden size.
"""
from __future__ import annotations

import torch

# Model types whose embeddings offset positions by padding_idx + 1 (create_position_ids_from_input_ids).
OFFSET_MODEL_TYPES = ("xlm-roberta", "roberta", "camembert", "xlm-roberta-xl")
# Model types with one learned absolute table in `embeddings.position_embeddings`, numbered from 0.
PLAIN_MODEL_TYPES = ("bert",)


def _get(config, name: str, default=None):
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def position_offset(config) -> int:
    """Rows before the first real position: pad_token_id + 1 for XLM-R/RoBERTa, 0 for BERT."""
    model_type = _get(config, "model_type")
    if model_type in OFFSET_MODEL_TYPES:
        return int(_get(config, "pad_token_id", 1)) + 1
    if model_type in PLAIN_MODEL_TYPES:
        return 0
    raise ValueError(f"model_type {model_type!r} has no known learned position table; supported: "
                     f"{', '.join(OFFSET_MODEL_TYPES + PLAIN_MODEL_TYPES)}")


def check_absolute(config) -> None:
    """Refuse encoders whose positions are not one learned absolute table (relative keys, rotary...)."""
    position_offset(config)
    kind = _get(config, "position_embedding_type", "absolute")
    if kind not in (None, "absolute"):
        raise ValueError(f"position_embedding_type={kind!r}: only learned absolute positions can be "
                         "lengthened by copying rows")


def max_tokens(config) -> int:
    """Longest input in tokens, specials included, that the position table holds."""
    return int(_get(config, "max_position_embeddings")) - position_offset(config)


def tile_positions(table_PH: torch.Tensor, offset: int, num_rows: int) -> torch.Tensor:
    """A table of `num_rows` rows: the `offset` special rows kept, then the old real rows repeated.

    The first old-length block is the old table itself, so every input the old model could read gives
    exactly the same outputs; later blocks restart the learned sequence (Longformer's initialisation).
    """
    if num_rows < table_PH.shape[0]:
        raise ValueError(f"cannot shrink a position table from {table_PH.shape[0]} to {num_rows} rows")
    real_PH = table_PH[offset:]
    repeats = -(-(num_rows - offset) // real_PH.shape[0])
    tiled_PH = real_PH.repeat(repeats, 1)[:num_rows - offset]
    return torch.cat([table_PH[:offset], tiled_PH]).contiguous()
