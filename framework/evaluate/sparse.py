"""Lexical (sparse) retrieval: an inverted index of M3's term weights as a scipy sparse matrix.

s_lex(q, p) = sum over shared tokens of w_qt * w_pt (paper eq. in 3.2) is one sparse product:
queries_QV @ docs_VN, where V is the vocabulary. docs_VN is stored column-compressed by token
(CSR of the transpose), i.e. one posting list per token, so a batch of queries only touches the
postings of its own tokens. As with Lucene, documents sharing no token with a query are not results:
their slots are padded with MISSING_ID.

Shape legend (docs/shapes.md): Q queries, N documents, V vocabulary, K results per query; scoped here:
C candidates of one query.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from framework.retrieval import MISSING_ID, top_k


def lexical_matrix(weights: Sequence[dict[str, float]], vocab_size: int) -> sp.csr_matrix:
    """(len(weights), vocab_size) CSR matrix of {token_id_str: weight} dicts."""
    indptr = np.zeros(len(weights) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(w) for w in weights])
    columns = np.fromiter((int(t) for w in weights for t in w), dtype=np.int64, count=int(indptr[-1]))
    values = np.fromiter((v for w in weights for v in w.values()), dtype=np.float32, count=int(indptr[-1]))
    if len(columns) and columns.max() >= vocab_size:
        raise ValueError(f"token id {columns.max()} >= vocab_size {vocab_size}; pass the tokenizer's full size "
                         "(len(tokenizer))")
    return sp.csr_matrix((values, columns, indptr), shape=(len(weights), vocab_size))


class SparseIndex:
    """Inverted index over documents' lexical weights; ids are document positions 0..N-1."""

    def __init__(self, doc_weights: Sequence[dict[str, float]], vocab_size: int, batch_size: int = 256):
        if len(doc_weights) == 0:
            raise ValueError("no documents to index; pass at least one lexical-weight dict")
        self.vocab_size = vocab_size
        self.batch_size = batch_size
        self.docs_NV = lexical_matrix(doc_weights, vocab_size)
        self.docs_VN = self.docs_NV.T.tocsr()

    @property
    def num_docs(self) -> int:
        return self.docs_NV.shape[0]

    def search(self, query_weights: Sequence[dict[str, float]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores_QK float32, ids_QK int64), best first, ties to the lower id, MISSING_ID for no match."""
        if k < 1:
            raise ValueError(f"k={k}: ask for at least one result")
        k = min(k, self.num_docs)
        scores_QK = np.zeros((len(query_weights), k), dtype=np.float32)
        ids_QK = np.full((len(query_weights), k), MISSING_ID, dtype=np.int64)
        # Batches bound the (batch, N) product, which fills in for common tokens.
        for start in range(0, len(query_weights), self.batch_size):
            queries_QV = lexical_matrix(query_weights[start:start + self.batch_size], self.vocab_size)
            scores_QN = (queries_QV @ self.docs_VN).tocsr()
            scores_QN.eliminate_zeros()
            # Sorted columns make top_k's "equal scores go to the lower column" mean "to the lower doc id".
            scores_QN.sort_indices()
            for row in range(scores_QN.shape[0]):
                lo, hi = scores_QN.indptr[row], scores_QN.indptr[row + 1]
                best_1K, pos_1K = top_k(scores_QN.data[lo:hi][None, :], k)
                found = pos_1K.shape[1]
                scores_QK[start + row, :found] = best_1K[0]
                ids_QK[start + row, :found] = scores_QN.indices[lo:hi][pos_1K[0]]
        return scores_QK, ids_QK

    def scores(self, query_weights: dict[str, float], doc_ids_C: np.ndarray) -> np.ndarray:
        """Exact lexical scores of one query against chosen documents, shape (C,)."""
        query_1V = lexical_matrix([query_weights], self.vocab_size)
        return (self.docs_NV[doc_ids_C] @ query_1V.T).toarray()[:, 0]
