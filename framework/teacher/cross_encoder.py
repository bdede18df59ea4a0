"""A Hugging Face cross-encoder as teacher: the single logit of AutoModelForSequenceClassification on
"query </s></s> passage" (bge-reranker-v2-m3, or any one-logit reranker directory).

Scores are raw logits (FlagReranker's compute_score with normalize=False); the student's targets are
softmax(scores) over each query's group, so no sigmoid is applied.

Shape legend (docs/shapes.md): B batch rows (query-passage pairs), L tokens.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from framework.data.collate import pad_to_multiple
from framework.pretrain.positions import max_tokens
from framework.teacher.base import OnPairs, ScorePair, check_pairs
from framework.teacher.batching import PAD_MULTIPLE, length_batches
from framework.teacher.config import CrossEncoderConfig


class CrossEncoderTeacher:
    """Scores pairs with a one-logit sequence classifier, batched by pair length."""

    def __init__(self, config: CrossEncoderConfig):
        self.config = config
        self.device, dtype = config.runtime.torch_device(), config.runtime.torch_dtype()
        self.tokenizer = AutoTokenizer.from_pretrained(config.path)
        model = AutoModelForSequenceClassification.from_pretrained(config.path, dtype=dtype)
        if model.config.num_labels != 1:
            raise ValueError(f"teacher {config.path} has {model.config.num_labels} labels; a cross-encoder teacher "
                             "gives one relevance logit (num_labels=1, as bge-reranker-v2-m3)")
        try:
            limit = max_tokens(model.config)
        except (ValueError, TypeError):  # a position scheme we do not know: let the model judge
            limit = None
        if limit is not None and config.max_length > limit:
            raise ValueError(f"max_length={config.max_length} exceeds teacher {config.path}'s {limit} positions; "
                             f"use --max-length {limit} or less")
        self.model = model.to(self.device).eval()
        self.input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
                            if n in self.tokenizer.model_input_names]

    def identity(self) -> dict:
        return self.config.identity()

    @torch.no_grad()
    def score(self, pairs: Sequence[ScorePair], on_pairs: OnPairs | None = None) -> np.ndarray:
        pairs = check_pairs(pairs)
        out = np.empty(len(pairs), dtype=np.float32)
        if not pairs:
            return out
        encoded = self.tokenizer([p.query for p in pairs], [p.passage for p in pairs], truncation="longest_first",
                                 max_length=self.config.max_length)
        ids = encoded["input_ids"]
        for idx in length_batches([len(seq) for seq in ids], self.config.batching):
            logits_B1 = self.model(**self._batch(encoded, idx)).logits
            out[idx] = logits_B1[:, 0].float().cpu().numpy()
            if on_pairs is not None:
                on_pairs(len(idx))
        return out

    def _batch(self, encoded, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Right-padded tensors of the pairs `idx`: ids with the pad id, the mask and segment ids with 0."""
        ids_BL, mask_BL = pad_to_multiple([encoded["input_ids"][i] for i in idx], self.tokenizer.pad_token_id,
                                          PAD_MULTIPLE)
        batch = {"input_ids": ids_BL, "attention_mask": mask_BL}
        if "token_type_ids" in self.input_names and "token_type_ids" in encoded:
            batch["token_type_ids"] = pad_to_multiple([encoded["token_type_ids"][i] for i in idx], 0, PAD_MULTIPLE)[0]
        return {name: tensor.to(self.device) for name, tensor in batch.items()}
