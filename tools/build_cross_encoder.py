"""Write a randomly initialised one-logit XLM-R cross-encoder (bge-reranker-v2-m3's layout), offline.

For tests and benchmarks of the teacher scorers (framework/teacher): the architecture, config and files
of a real reranker (XLMRobertaForSequenceClassification, num_labels=1), with the shapes of
tools/build_model.py's sizes and a tokenizer directory from tools/train_tokenizer.py.

    python tools/build_cross_encoder.py --tokenizer-dir /tmp/tok --out-dir /tmp/tiny-reranker --size tiny
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, XLMRobertaForSequenceClassification

# `python tools/build_cross_encoder.py` puts tools/ on sys.path, not the repo root.
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.build_model import POSITION_OFFSET, SIZES, build_config, check_tokenizer_dir, copy_tokenizer  # noqa: E402


def build_cross_encoder(tokenizer_dir: str | Path, out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write config.json + model.safetensors + tokenizer files of a random reranker; returns out_dir."""
    tokenizer_dir, out_dir = Path(tokenizer_dir), Path(out_dir)
    check_tokenizer_dir(tokenizer_dir)
    config = build_config(size, len(AutoTokenizer.from_pretrained(str(tokenizer_dir))))
    config.num_labels = 1
    config.architectures = ["XLMRobertaForSequenceClassification"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = XLMRobertaForSequenceClassification(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    copy_tokenizer(tokenizer_dir, out_dir, config.max_position_embeddings - POSITION_OFFSET)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer-dir", required=True, help="directory made by tools/train_tokenizer.py")
    parser.add_argument("--out-dir", required=True, help="directory to write the model into")
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES), help="named model shape")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    args = parser.parse_args(argv)
    print(f"cross-encoder ready in {build_cross_encoder(args.tokenizer_dir, args.out_dir, args.size, args.seed)}")


if __name__ == "__main__":
    main()
