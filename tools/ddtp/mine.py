"""BM25 hard-negative mining within one language's train pool.

Shapes: Q = queries in a batch, D = documents in the pool, V = vocabulary size.

The index is a sparse D x V matrix of BM25 term weights; a batch of queries is a sparse Q x V matrix of
term counts, so scoring a batch is one sparse product (scipy) instead of a Python loop per document.
Negatives come from ranks [lo, hi) of each query's ranking after removing its positives: the top ranks
of Debian descriptions are mostly sibling packages (foo, foo-data, foo-doc) that say the same thing.
"""
from __future__ import annotations

import hashlib
import re
import time

import numpy as np
import scipy.sparse as sp

# Languages written without spaces between words: BM25 over character bigrams instead of words.
UNSPACED_LANGS = ("zh_CN", "zh_TW", "ja", "ko")
_WORD = re.compile(r"\w+")
_ASCII = re.compile(r"^[0-9a-z_]+$")


def tokenize(text: str, lang: str) -> list[str]:
    """Lowercase words; for zh/ja/ko, non-ASCII runs become character bigrams (single chars kept)."""
    words = _WORD.findall(text.lower())
    if lang.split("-")[0] not in UNSPACED_LANGS:
        return words
    tokens: list[str] = []
    for word in words:
        if _ASCII.match(word) or len(word) == 1:
            tokens.append(word)
        else:
            tokens.extend(word[i:i + 2] for i in range(len(word) - 1))
    return tokens


class BM25Index:
    """Okapi BM25 (k1, b) over a fixed list of documents of one language."""

    def __init__(self, docs: list[str], lang: str, k1: float = 1.5, b: float = 0.75) -> None:
        self.lang = lang
        self.vocab: dict[str, int] = {}
        rows, cols, counts = [], [], []
        for row, doc in enumerate(docs):
            tokens = tokenize(doc, lang)
            ids, tf = np.unique([self.vocab.setdefault(t, len(self.vocab)) for t in tokens], return_counts=True)
            rows.extend([row] * len(ids))
            cols.extend(ids.tolist())
            counts.extend(tf.tolist())
        tf_DV = sp.csr_matrix((np.asarray(counts, np.float32), (rows, cols)),
                              shape=(len(docs), max(len(self.vocab), 1)), dtype=np.float32)
        length_D = np.asarray(tf_DV.sum(axis=1)).ravel()
        df_V = np.bincount(tf_DV.indices, minlength=tf_DV.shape[1])
        idf_V = np.log1p((len(docs) - df_V + 0.5) / (df_V + 0.5)).astype(np.float32)
        norm_D = k1 * (1 - b + b * length_D / max(float(length_D.mean()) if len(docs) else 1.0, 1e-9))
        weights_DV = tf_DV.tocoo()
        tf = weights_DV.data
        weights_DV.data = idf_V[weights_DV.col] * tf * (k1 + 1) / (tf + norm_D[weights_DV.row])
        # Kept as V x D so that scoring a batch is one sparse product, queries_QV @ weights_VD.
        self.weights_VD = weights_DV.T.tocsr()
        self.num_docs = len(docs)

    def query_matrix(self, queries: list[str]) -> sp.csr_matrix:
        """Q x V term counts; terms not in the pool's vocabulary cannot score and are dropped."""
        rows, cols = [], []
        for row, query in enumerate(queries):
            ids = [self.vocab[t] for t in tokenize(query, self.lang) if t in self.vocab]
            rows.extend([row] * len(ids))
            cols.extend(ids)
        data = np.ones(len(rows), np.float32)
        return sp.csr_matrix((data, (rows, cols)), shape=(len(queries), self.weights_VD.shape[0]))

    def scores(self, queries: list[str]) -> np.ndarray:
        """Dense Q x D BM25 scores."""
        return (self.query_matrix(queries) @ self.weights_VD).toarray()


def ranked_candidates(scores_D: np.ndarray, exclude: set[int], depth: int) -> np.ndarray:
    """The `depth` best document indices, excluded ones removed; ties go to the lower index."""
    scores_D = scores_D.copy()
    if exclude:
        scores_D[list(exclude)] = -np.inf
    depth = min(depth, len(scores_D) - len(exclude))
    if depth <= 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-scores_D, depth - 1)[:depth] if depth < len(scores_D) else np.arange(len(scores_D))
    # argpartition breaks ties arbitrarily at the boundary; re-rank the whole boundary score class.
    cutoff = scores_D[top].min()
    top = np.flatnonzero(scores_D >= cutoff)
    order = np.lexsort((top, -scores_D[top]))
    return top[order][:depth]


def query_rng(seed: int, key: str) -> np.random.Generator:
    """Per-query generator: a query's negatives do not depend on batch size or the other queries."""
    digest = hashlib.sha1(f"{seed}:{key}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def pick_negatives(ranked: np.ndarray, rank_range: tuple[int, int], num_neg: int,
                   rng: np.random.Generator) -> np.ndarray:
    """num_neg indices drawn without replacement from ranks [lo, hi), returned in rank order."""
    lo, hi = rank_range
    window = ranked[lo:hi]
    if len(window) < num_neg:
        # Small pools (a sample, or zh_CN): fall back to the best ranks rather than return fewer negatives.
        window = ranked[:hi]
    chosen = np.sort(rng.choice(len(window), size=min(num_neg, len(window)), replace=False))
    return window[chosen]


def rank_pool(index: BM25Index, queries: list[str], exclude: list[set[int]], depth: int,
              batch_size: int = 256, label: str = "") -> list[np.ndarray]:
    """Each query's `depth` best pool indices (its `exclude` set removed), batch by batch."""
    if len(queries) != len(exclude):
        raise ValueError(f"{len(queries)} queries but {len(exclude)} exclusion sets; pass one set per query")
    ranked: list[np.ndarray] = []
    start = time.monotonic()
    for num_batch, begin in enumerate(range(0, len(queries), batch_size)):
        scores_QD = index.scores(queries[begin:begin + batch_size])
        ranked.extend(ranked_candidates(scores_D, exclude[begin + i], depth) for i, scores_D in enumerate(scores_QD))
        if len(ranked) == len(queries) or num_batch % 20 == 19:
            print(f"  ranked {label} {len(ranked)}/{len(queries)} queries against {index.num_docs} documents "
                  f"({time.monotonic() - start:.0f}s)", flush=True)
    return ranked
