"""Retrievers that rank the candidate pool for a chunk of queries (M3 dense vectors, or BM25 over its tokens),
and score each query's own positives the same way (for the margins and --output-scores).

Shape legend (docs/shapes.md): Q queries, K results per query, D vector size, V distinct pool tokens.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from transformers import AutoTokenizer

from framework.inference import M3Embedder
from framework.retrieval import BM25Config, BM25Index, DenseIndex, tokenize
from .config import MiningConfig


@dataclass(frozen=True)
class Ranking:
    """A chunk's rankings and, when asked for, the retriever's scores of each query's positives."""

    scores_QK: np.ndarray
    """Retriever scores, best first (0 where ids_QK is MISSING_ID)."""
    ids_QK: np.ndarray
    """Pool ids, best first; MISSING_ID pads short rankings."""
    positive_scores: list[np.ndarray] | None
    """Per query, float32 scores of its positives in the order given; None when not asked for."""


class Retriever(Protocol):
    def __call__(self, queries: list[str], positives: list[Sequence[str]] | None) -> Ranking:
        """Rank the pool for `queries` (range_end results each) and score `positives[i]` for query i."""


def resolve_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


class DenseRetriever:
    """The M3 dense head: the pool encoded once into a DenseIndex; a chunk's queries (and positives) per call."""

    def __init__(self, config: MiningConfig, passages: list[str]):
        self.config = config
        device = resolve_device(config.device)
        self.embedder = M3Embedder.from_pretrained(config.model, device=device)
        print(f"encoding {len(passages)} pool passages on {device}", flush=True)
        self.index = DenseIndex.build(self._encode(passages, config.max_passage_length, True), config.index,
                                      progress=True)

    def _encode(self, texts: list[str], max_length: int, progress: bool) -> np.ndarray:
        return self.embedder.encode(texts, dense=True, sparse=False, batch_size=self.config.batch_size,
                                    max_length=max_length, progress=progress)["dense_vecs"]

    def __call__(self, queries: list[str], positives: list[Sequence[str]] | None) -> Ranking:
        queries_QD = self._encode(queries, self.config.max_query_length, False)
        scores_QK, ids_QK = self.index.search(queries_QD, self.config.range_end)
        if positives is None:
            return Ranking(scores_QK, ids_QK, None)
        # The chunk's positives in one encoder call: their vectors depend only on the chunk, as the queries'.
        flat = [text for texts in positives for text in texts]
        passages_PD = self._encode(flat, self.config.max_passage_length, False)
        owner_P = np.repeat(np.arange(len(queries)), [len(texts) for texts in positives])
        scores_P = np.einsum("pd,pd->p", passages_PD, queries_QD[owner_P]).astype(np.float32)
        return Ranking(scores_QK, ids_QK, np.split(scores_P, np.cumsum([len(t) for t in positives])[:-1]))


class BM25Retriever:
    """BM25 over the model tokenizer's ids (the paper's BM25 rows); the model weights are not read.

    A positive is scored as one more document of the pool would be, with the pool's statistics (document
    frequencies, mean length; a token the pool lacks adds nothing, as in a query), so that its score is
    on the candidates' scale whether or not it is in the pool.
    """

    def __init__(self, config: MiningConfig, passages: list[str]):
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        self.bm25 = BM25Config(max_doc_length=config.max_passage_length, max_query_length=config.max_query_length)
        print(f"indexing {len(passages)} pool passages with BM25", flush=True)
        doc_tokens = tokenize(passages, self.tokenizer, self.bm25.max_doc_length, self.bm25.tokenize_batch_size,
                              progress=True)
        self.index = BM25Index(doc_tokens, self.bm25, self.tokenizer, progress=True)
        self.mean_length = float(np.mean([len(doc) for doc in doc_tokens]))
        # Each stored weight is one (token, document) occurrence, so a token's row holds its document frequency.
        df_V = np.diff(self.index.weights_VN.indptr).astype(np.float64)
        num_docs = self.index.num_docs
        self.idf_V = np.log1p((num_docs - df_V + 0.5) / (df_V + 0.5))  # Lucene's idf, as bm25s's "lucene"

    def __call__(self, queries: list[str], positives: list[Sequence[str]] | None) -> Ranking:
        scores_QK, ids_QK = self.index.search(queries, self.config.range_end, progress=False)
        if positives is None:
            return Ranking(scores_QK, ids_QK, None)
        query_tokens = tokenize(queries, self.tokenizer, self.bm25.max_query_length)
        flat = tokenize([text for texts in positives for text in texts], self.tokenizer, self.bm25.max_doc_length)
        scores, start = [], 0
        for tokens, texts in zip(query_tokens, positives):
            scores.append(np.array([self.pair_score(tokens, doc) for doc in flat[start:start + len(texts)]],
                                   dtype=np.float32))
            start += len(texts)
        return Ranking(scores_QK, ids_QK, scores)

    def pair_score(self, query_tokens: Sequence[int], doc_tokens: Sequence[int]) -> float:
        """BM25 (Lucene idf, Robertson's term-frequency part, bm25s's "lucene") of one tokenised document."""
        counts = Counter(doc_tokens)
        k1, b = self.bm25.k1, self.bm25.b
        norm = k1 * (1 - b + b * len(doc_tokens) / self.mean_length)
        total = 0.0
        for token in query_tokens:  # repeats count again, as in BM25Index.batch_scores
            column = self.index.vocab.get(token)
            if column is not None and token in counts:
                total += self.idf_V[column] * counts[token] / (norm + counts[token])
        return total


RETRIEVERS: dict[str, Callable[[MiningConfig, list[str]], Retriever]] = {"dense": DenseRetriever,
                                                                         "bm25": BM25Retriever}
