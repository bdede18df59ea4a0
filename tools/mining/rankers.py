"""Retrievers that rank the candidate pool for a chunk of queries: M3 dense vectors, or BM25 over its tokens."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from transformers import AutoTokenizer

from framework.inference import M3Embedder
from framework.retrieval import BM25Config, BM25Index, DenseIndex
from .config import MiningConfig

# ids_QK of one chunk's valid queries -> pool ids, best first (MISSING_ID pads short rankings).
Ranker = Callable[[list[str]], np.ndarray]


def dense_ranker(config: MiningConfig, passages: list[str]) -> Ranker:
    """Encode the pool once with the M3 dense head; rank a chunk's queries with a DenseIndex."""
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    embedder = M3Embedder.from_pretrained(config.model, device=device)
    print(f"encoding {len(passages)} pool passages on {device}", flush=True)

    def encode(texts: list[str], max_length: int, progress: bool) -> np.ndarray:
        return embedder.encode(texts, dense=True, sparse=False, batch_size=config.batch_size,
                               max_length=max_length, progress=progress)["dense_vecs"]

    index = DenseIndex.build(encode(passages, config.max_passage_length, True), config.index, progress=True)
    return lambda queries: index.search(encode(queries, config.max_query_length, False), config.range_end)[1]


def bm25_ranker(config: MiningConfig, passages: list[str]) -> Ranker:
    """BM25 over the model tokenizer's ids (the paper's BM25 rows); the model weights are not read."""
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    bm25 = BM25Config(max_doc_length=config.max_passage_length, max_query_length=config.max_query_length)
    print(f"indexing {len(passages)} pool passages with BM25", flush=True)
    index = BM25Index.build(passages, tokenizer, bm25, progress=True)
    return lambda queries: index.search(queries, config.range_end, progress=False)[1]


RANKERS: dict[str, Callable[[MiningConfig, list[str]], Ranker]] = {"dense": dense_ranker, "bm25": bm25_ranker}
