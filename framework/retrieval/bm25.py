"""BM25 over the model's own tokens, as the paper's BM25 rows (section 4, appendix C.2).

The reference scripts (FlagEmbedding's bm25_baseline_same_tokenizer.py) tokenise with the XLM-R
tokenizer (corpus truncated to 8192 tokens, queries to 512, specials included in the count), drop the
specials, and index the token ids with Pyserini's default BM25 (k1 = 0.9, b = 0.4, Lucene's formula).
We do the same with bm25s's "lucene" scoring; the one difference is that <unk> is dropped with the other
specials (two unknown characters are not a shared term). Lucene also stores document lengths in one
lossy byte, so scores differ from Pyserini's in the last digits, not in kind.

A query's score for a document sums over the query's tokens, repeats included (Pyserini weights a
repeated query term by its count). Documents sharing no token with the query are not results: they are
padded with MISSING_ID, as Lucene returns only matching documents.

bm25s computes the per-(document, token) weights; scoring reads them as one sparse V x N matrix, so a
batch of queries is scored by one sparse product (256 queries against ~50k documents in about 0.1 s on
one core) rather than a Python loop per query.

Shape legend (docs/shapes.md): Q queries, N documents, K results per query, V distinct document tokens.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import bm25s
import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from framework.retrieval.dense import MISSING_ID, top_k

# Dense scores held at once by search_tokens (64 MiB of float32): its query batch is this over N.
_SCORES_PER_BATCH = 1 << 24


@dataclass(frozen=True)
class BM25Config:
    """BM25 parameters and the tokenisation that feeds it."""

    k1: float = 0.9
    """Term-frequency saturation; 0.9 is Pyserini's default, which the paper's BM25 rows used."""
    b: float = 0.4
    """Document-length normalisation in [0, 1]; Pyserini's default 0.4."""
    max_doc_length: int | None = 8192
    """Document tokens kept, specials counted (the reference truncates at 8192); None keeps all."""
    max_query_length: int | None = 512
    """Query tokens kept, specials counted (the reference truncates at 512); None keeps all."""
    tokenize_batch_size: int = 1024
    """Texts per tokenizer call (progress granularity)."""

    def __post_init__(self) -> None:
        if self.k1 < 0:
            raise ValueError(f"k1={self.k1}: use a non-negative saturation (Pyserini: 0.9, Okapi: 1.2)")
        if not 0 <= self.b <= 1:
            raise ValueError(f"b={self.b}: length normalisation must lie in [0, 1] (Pyserini: 0.4)")
        for name in ("max_doc_length", "max_query_length"):
            value = getattr(self, name)
            if value is not None and value < 3:
                raise ValueError(f"{name}={value}: allow at least 3 tokens (2 specials + 1), or None for no limit")
        if self.tokenize_batch_size < 1:
            raise ValueError(f"tokenize_batch_size={self.tokenize_batch_size}: use a positive batch size")


def tokenize(texts: Sequence[str], tokenizer, max_length: int | None, batch_size: int = 1024,
             progress: bool = False) -> list[list[int]]:
    """Token ids of each text without special tokens (<s>, </s>, <pad>, <unk>, <mask>)."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, got one string; wrap it in a list")
    specials = set(tokenizer.all_special_ids)
    out: list[list[int]] = []
    for start in tqdm(range(0, len(texts), batch_size), desc="tokenize", disable=not progress):
        batch = list(texts[start:start + batch_size])
        ids = tokenizer(batch, add_special_tokens=True, truncation=max_length is not None, max_length=max_length,
                        verbose=False)["input_ids"]
        out.extend([t for t in seq if t not in specials] for seq in ids)
    return out


class BM25Index:
    """BM25 over a fixed list of documents; ids are document positions 0..N-1."""

    def __init__(self, doc_tokens: Sequence[Sequence[Hashable]], config: BM25Config = BM25Config(),
                 tokenizer=None, progress: bool = False):
        """Index pre-tokenised documents (token ids or strings); `tokenizer` enables text queries."""
        if len(doc_tokens) == 0:
            raise ValueError("no documents to index; pass at least one")
        self.config = config
        self.tokenizer = tokenizer
        self.num_docs = len(doc_tokens)
        # Columns are numbered in order of first appearance, so one corpus always gives one index.
        self.vocab: dict[Hashable, int] = {}
        columns = [[self.vocab.setdefault(t, len(self.vocab)) for t in doc] for doc in doc_tokens]
        if not self.vocab:
            raise ValueError("the documents hold no tokens (all empty or only special tokens); nothing to match")
        bm25 = bm25s.BM25(k1=config.k1, b=config.b, method="lucene")
        bm25.index((columns, dict(self.vocab)), create_empty_token=False, show_progress=progress)
        # bm25s keeps the weights as an N x V CSC matrix: the same arrays read as CSR are its V x N transpose.
        weights = bm25.scores
        self.weights_VN = sp.csr_matrix((weights["data"], weights["indices"], weights["indptr"]),
                                        shape=(len(self.vocab), self.num_docs))

    @classmethod
    def build(cls, texts: Sequence[str], tokenizer, config: BM25Config = BM25Config(),
              progress: bool | None = None) -> "BM25Index":
        """Tokenise `texts` with the model's tokenizer and index them."""
        show = len(texts) > config.tokenize_batch_size if progress is None else progress
        doc_tokens = tokenize(texts, tokenizer, config.max_doc_length, config.tokenize_batch_size, show)
        return cls(doc_tokens, config, tokenizer, show)

    def search(self, queries: Sequence[str], k: int, progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores_QK float32, ids_QK int64) of text queries, best first; see search_tokens."""
        if self.tokenizer is None:
            raise ValueError("this index was built from tokens without a tokenizer; use search_tokens, or "
                             "BM25Index.build(texts, tokenizer)")
        show = len(queries) > self.config.tokenize_batch_size if progress is None else progress
        query_tokens = tokenize(queries, self.tokenizer, self.config.max_query_length,
                                self.config.tokenize_batch_size, show)
        return self.search_tokens(query_tokens, k, show)

    def search_tokens(self, query_tokens: Sequence[Sequence[Hashable]], k: int,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents per tokenised query; ties go to the lower id, non-matching slots are MISSING_ID."""
        if k < 1:
            raise ValueError(f"k={k}: ask for at least one result")
        k = min(k, self.num_docs)
        scores_QK = np.zeros((len(query_tokens), k), dtype=np.float32)
        ids_QK = np.full((len(query_tokens), k), MISSING_ID, dtype=np.int64)
        batch = max(1, _SCORES_PER_BATCH // self.num_docs)
        for begin in tqdm(range(0, len(query_tokens), batch), desc="bm25", disable=not progress):
            for row, scores_N in enumerate(self.batch_scores(query_tokens[begin:begin + batch]), start=begin):
                matched = np.flatnonzero(scores_N > 0)
                best_scores_1K, best_1K = top_k(scores_N[matched][None, :], k)
                found = best_1K.shape[1]
                scores_QK[row, :found] = best_scores_1K[0]
                ids_QK[row, :found] = matched[best_1K[0]]
        return scores_QK, ids_QK

    def batch_scores(self, query_tokens: Sequence[Sequence[Hashable]]) -> np.ndarray:
        """scores_QN float32: BM25 score of every document for each tokenised query; unknown tokens add nothing.

        A query's row depends only on that query, not on the others in the batch.
        """
        rows, columns = [], []
        for row, tokens in enumerate(query_tokens):
            ids = [self.vocab[t] for t in tokens if t in self.vocab]
            rows.extend([row] * len(ids))
            columns.extend(ids)
        # Duplicate (row, column) entries are summed: a repeated query token counts again.
        counts_QV = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, columns)),
                                  shape=(len(query_tokens), len(self.vocab)))
        return (counts_QV @ self.weights_VN).toarray()

    def scores(self, tokens: Sequence[Hashable]) -> np.ndarray:
        """scores_N of one tokenised query; see batch_scores."""
        return self.batch_scores([tokens])[0]
