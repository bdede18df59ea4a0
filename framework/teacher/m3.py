"""An M3 model as teacher: its hybrid score (w1 dense + w2 sparse + w3 colbert) / (w1 + w2 + w3).

The same numbers as M3Embedder.compute_score's "colbert+sparse+dense" (framework/inference), but each
distinct query and passage is encoded once (a row's query is shared by its 1 + num_neg pairs), in
length-sorted batches under a token budget, and a head whose weight is 0 is not computed at all.
Only the embedder's public API is used (encode, and the per-head score functions).

Shape legend (docs/shapes.md): N texts, D dense size, C colbert size.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from framework.inference import M3Embedder, colbert_score, lexical_match_score
from framework.model import load_m3
from framework.teacher.base import OnPairs, ScorePair, check_pairs
from framework.teacher.batching import length_batches
from framework.teacher.config import M3TeacherConfig


class M3Teacher:
    """Scores pairs with an M3 model's hybrid of its three heads."""

    def __init__(self, config: M3TeacherConfig):
        self.config = config
        model, tokenizer = load_m3(config.path, dtype=config.runtime.torch_dtype())
        self.embedder = M3Embedder(model, tokenizer, config.runtime.torch_device())
        w = config.weights
        self.heads = {"dense": w.dense > 0, "sparse": w.sparse > 0, "colbert": w.colbert > 0}
        limit = model.max_positions
        for name in ("max_query_length", "max_passage_length"):
            value = getattr(config, name)
            if value is not None and value > limit:
                raise ValueError(f"{name}={value} exceeds teacher {config.path}'s {limit} positions; use {limit} "
                                 "or less")

    def identity(self) -> dict:
        return self.config.identity()

    def score(self, pairs: Sequence[ScorePair], on_pairs: OnPairs | None = None) -> np.ndarray:
        pairs = check_pairs(pairs)
        if not pairs:
            return np.empty(0, dtype=np.float32)
        queries = list(dict.fromkeys(p.query for p in pairs))
        passages = list(dict.fromkeys(p.passage for p in pairs))
        q = self._encode(queries, self.config.max_query_length)
        p = self._encode(passages, self.config.max_passage_length)
        q_row = {text: i for i, text in enumerate(queries)}
        p_row = {text: i for i, text in enumerate(passages)}
        w1, w2, w3 = self.config.weights.as_tuple()
        out = np.empty(len(pairs), dtype=np.float32)
        for k, pair in enumerate(pairs):
            i, j = q_row[pair.query], p_row[pair.passage]
            # The same expression as compute_score, a skipped head adding exactly 0.
            d = float(q["dense"][i] @ p["dense"][j]) if w1 else 0.0
            s = lexical_match_score(q["sparse"][i], p["sparse"][j]) if w2 else 0.0
            m = colbert_score(q["colbert"][i], p["colbert"][j]) if w3 else 0.0
            out[k] = (w1 * d + w2 * s + w3 * m) / (w1 + w2 + w3)
        if on_pairs is not None:
            on_pairs(len(pairs))
        return out

    def _encode(self, texts: list[str], max_length: int | None) -> dict[str, list]:
        """Per text: dense vector, lexical weights and colbert vectors of the heads in use."""
        limit = max_length or self.embedder.model.max_positions
        lengths = [len(ids) for ids in self.embedder.tokenizer(texts, truncation=True, max_length=limit)["input_ids"]]
        out: dict[str, list] = {"dense": [None] * len(texts), "sparse": [None] * len(texts),
                                "colbert": [None] * len(texts)}
        keys = (("dense", "dense_vecs"), ("sparse", "lexical_weights"), ("colbert", "colbert_vecs"))
        for idx in length_batches(lengths, self.config.batching):
            encoded = self.embedder.encode([texts[i] for i in idx], **self.heads, batch_size=len(idx),
                                           max_length=limit, truncate=True, progress=False)
            for name, key in keys:
                if key in encoded:
                    for row, i in enumerate(idx):
                        out[name][i] = encoded[key][row]
        return out
