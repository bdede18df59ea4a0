"""Learned absolute position tables: where real positions start, and how to lengthen a table.

XLM-R (and RoBERTa) number positions from padding_idx + 1 = 2: rows 0 and 1 are never used by a real
token (row 1 is what padding looks up), so a table of 514 rows reads 512 tokens and bge-m3's 8194 rows
read 8192. BERT numbers from 0 (the one list of model types: framework/model/positions.py). Everything
here takes an HF config object or a config.json dict.

Shape legend (docs/shapes.md): H hidden size; scoped here: P rows of the position table.
"""
from __future__ import annotations

import torch

from framework.model.positions import config_value, max_tokens, position_offset

# position_offset and max_tokens are re-exported for the RetroMAE stage and tools/extend_positions.py.
__all__ = ["check_absolute", "max_tokens", "position_offset", "tile_positions"]


def check_absolute(config) -> None:
    """Refuse encoders whose positions are not one learned absolute table (relative keys, rotary...)."""
    position_offset(config)
    kind = config_value(config, "position_embedding_type", "absolute")
    if kind not in (None, "absolute"):
        raise ValueError(f"position_embedding_type={kind!r}: only learned absolute positions can be "
                         "lengthened by copying rows")


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
