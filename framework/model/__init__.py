"""Encoder + dense/sparse/multi-vector heads, and the BGE-M3 directory format."""
from framework.model.bge_format import load_m3, m3_parameter_names, save_m3
from framework.model.config import ModelConfig
from framework.model.m3 import M3Model, special_token_ids
from framework.model.output import M3Output

__all__ = ["M3Model", "M3Output", "ModelConfig", "load_m3", "m3_parameter_names", "save_m3", "special_token_ids"]
