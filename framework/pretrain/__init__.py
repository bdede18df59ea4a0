"""Pre-training before the M3 stages: RetroMAE (retromae.py) on an encoder whose positions were extended
(positions.py, tools/extend_positions.py)."""
from framework.pretrain.config import RetroMAEConfig
from framework.pretrain.masking import SpecialTokens, special_tokens
from framework.pretrain.retromae import RetroMAEObjective

__all__ = ["RetroMAEConfig", "RetroMAEObjective", "SpecialTokens", "special_tokens"]
