"""Where an encoder's real positions start in its learned position table: the one list of model types.

XLM-R (and RoBERTa) number positions from padding_idx + 1 = 2: rows 0 and 1 are never used by a real
token (row 1 is what padding looks up), so a table of 514 rows reads 512 tokens and bge-m3's 8194 rows
read 8192. BERT numbers from 0. Every function takes an HF config object or a config.json dict.
"""
from __future__ import annotations

# Model types whose embeddings offset positions by padding_idx + 1 (create_position_ids_from_input_ids).
OFFSET_MODEL_TYPES = ("xlm-roberta", "roberta", "camembert", "xlm-roberta-xl")
# Model types with one learned absolute table in `embeddings.position_embeddings`, numbered from 0.
PLAIN_MODEL_TYPES = ("bert",)


def config_value(config, name: str, default=None):
    """A field of an HF config object or of a config.json dict."""
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def position_offset(config) -> int:
    """Rows before the first real position: pad_token_id + 1 for XLM-R/RoBERTa, 0 for BERT."""
    model_type = config_value(config, "model_type")
    if model_type in OFFSET_MODEL_TYPES:
        return int(config_value(config, "pad_token_id", 1)) + 1
    if model_type in PLAIN_MODEL_TYPES:
        return 0
    raise ValueError(f"model_type {model_type!r} has no known learned position table; supported: "
                     f"{', '.join(OFFSET_MODEL_TYPES + PLAIN_MODEL_TYPES)} (add the type to "
                     "framework/model/positions.py with the row its positions start at)")


def max_tokens(config) -> int:
    """Longest input in tokens, specials included, that the position table holds."""
    return int(config_value(config, "max_position_embeddings")) - position_offset(config)
