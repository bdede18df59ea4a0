"""A randomly initialised one-logit XLM-R cross-encoder (bge-reranker-v2-m3's layout), offline.

For tests and benchmarks of the teacher scorers (framework/teacher): the architecture, config and files
of a real reranker (XLMRobertaForSequenceClassification, num_labels=1), with the shapes of
framework/starting/random_model.py's sizes and a tokenizer directory from framework/starting/tokenizer.py.
Command line: `python tools/build_cross_encoder.py --tokenizer-dir /tmp/tok --out-dir /tmp/tiny-reranker`.
"""
from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, XLMRobertaForSequenceClassification

from framework.starting.random_model import build_config, check_tokenizer_dir, save_random


def build_cross_encoder(tokenizer_dir: str | Path, out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write config.json + model.safetensors + tokenizer files of a random reranker; returns out_dir."""
    tokenizer_dir, out_dir = Path(tokenizer_dir), Path(out_dir)
    check_tokenizer_dir(tokenizer_dir)
    config = build_config(size, len(AutoTokenizer.from_pretrained(str(tokenizer_dir))))
    config.num_labels = 1
    config.architectures = ["XLMRobertaForSequenceClassification"]
    save_random(XLMRobertaForSequenceClassification, config, tokenizer_dir, out_dir, seed)
    return out_dir
