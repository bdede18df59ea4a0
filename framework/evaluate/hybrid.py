"""Rescoring of candidate lists: multi-vector reranking and the weighted hybrids of equation (1).

    s_rank = w_dense * s_dense + w_sparse * s_lex + w_colbert * s_mul

Candidates of one query are the union of its dense and sparse lists (MISSING_ID slots dropped). Each
candidate is then scored exactly by every head with a non-zero weight, from the stored vectors, so a
document found by only one list still gets its true score from the other head (no "missing score = 0"
guess as when fusing two result lists). Candidates are sorted by id before the final top-k so that
equal scores go to the lower document id, as in every other mode.

Shape legend (docs/shapes.md): Q queries, K results per query, N documents, D dense size, L tokens of one
query, M tokens of all documents together; scoped here: C candidates of one query, E colbert size, T stacked
tokens of a block of queries.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from framework.evaluate.sparse import SparseIndex
from framework.retrieval import MISSING_ID, top_k


def candidate_union(*ids_QK: np.ndarray) -> list[np.ndarray]:
    """Per query, the sorted distinct document ids of all given lists, MISSING_ID removed."""
    stacked_QK = np.concatenate(ids_QK, axis=1)
    return [np.unique(row[row != MISSING_ID]) for row in stacked_QK]


def colbert_candidate_scores(query_LE: np.ndarray, docs: Sequence[np.ndarray]) -> np.ndarray:
    """Late-interaction score of one query against each document: mean over query tokens of the best match.

    Equals framework.inference.colbert_score per pair; the candidates are scored with one matrix
    product and a segmented max instead of one small product each. (Training scores whole batches with
    padding masks in torch: framework.loss.colbert_scores.)
    """
    if not docs:
        return np.zeros(0, dtype=np.float32)
    lengths = np.array([len(d) for d in docs])
    sims_LM = query_LE @ np.concatenate(docs).T
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    best_LC = np.maximum.reduceat(sims_LM, starts, axis=1)
    return best_LC.sum(axis=0) / query_LE.shape[0]


def colbert_score_matrix(queries: Sequence[np.ndarray], docs: Sequence[np.ndarray],
                         max_block: int = 1 << 24) -> np.ndarray:
    """scores_QN of every query against every document, in blocks of queries.

    Same scores as colbert_candidate_scores per query, but a block of queries is one matrix product of their
    stacked tokens against all documents, which BLAS runs several times faster than one thin product
    per query (about 3x on 2 CPU cores for DDTP-sized tasks). `max_block` bounds the (query tokens,
    document tokens) similarity block in floats (64 MiB by default).
    """
    doc_ME = np.concatenate(docs)
    doc_starts = np.concatenate([[0], np.cumsum([len(d) for d in docs])[:-1]])
    rows_per_block = max(1, max_block // len(doc_ME))
    scores_QN = np.empty((len(queries), len(docs)), dtype=np.float32)
    start = 0
    while start < len(queries):
        end, rows = start + 1, len(queries[start])
        while end < len(queries) and rows + len(queries[end]) <= rows_per_block:
            rows += len(queries[end])
            end += 1
        lengths = np.array([len(q) for q in queries[start:end]])
        best_TN = np.maximum.reduceat(np.concatenate(queries[start:end]) @ doc_ME.T, doc_starts, axis=1)
        query_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        scores_QN[start:end] = np.add.reduceat(best_TN, query_starts, axis=0) / lengths[:, None]
        start = end
    return scores_QN


def rescore(candidates: list[np.ndarray], weights: tuple[float, float, float], k: int, *,
            query_dense_QD: np.ndarray | None = None, doc_dense_ND: np.ndarray | None = None,
            query_lexical: Sequence[dict] | None = None, sparse_index: SparseIndex | None = None,
            colbert: Callable[[int, np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each query's candidates by w_dense * dense + w_sparse * sparse + w_colbert * colbert.

    Only the heads with a non-zero weight are computed and need their inputs; `colbert(q, cand_C)`
    returns the late-interaction scores of query q's candidates. Returns (scores_QK, ids_QK) padded
    with MISSING_ID where a query has fewer than k candidates.
    """
    w_dense, w_sparse, w_colbert = weights
    num_queries = len(candidates)
    scores_QK = np.zeros((num_queries, k), dtype=np.float32)
    ids_QK = np.full((num_queries, k), MISSING_ID, dtype=np.int64)
    for q, cand_C in enumerate(candidates):
        if len(cand_C) == 0:
            continue
        total_C = np.zeros(len(cand_C), dtype=np.float64)
        if w_dense:
            total_C += w_dense * (doc_dense_ND[cand_C] @ query_dense_QD[q])
        if w_sparse:
            total_C += w_sparse * sparse_index.scores(query_lexical[q], cand_C)
        if w_colbert:
            total_C += w_colbert * colbert(q, cand_C)
        best_1K, pos_1K = top_k(total_C[None, :], k)
        found = pos_1K.shape[1]
        scores_QK[q, :found] = best_1K[0]
        ids_QK[q, :found] = cand_C[pos_1K[0]]
    return scores_QK, ids_QK
