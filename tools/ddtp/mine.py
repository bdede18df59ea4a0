"""BM25 hard-negative mining within one language's train pool.

Shapes: Q = queries in a batch, D = documents in the pool.

The index is framework.retrieval's BM25Index over this module's word / bigram tokens (not the model's
tokenizer: the corpus is built before any model exists), with Okapi's k1 1.5 and b 0.75; it scores a
batch of queries in one sparse product. Negatives come from ranks [lo, hi) of each query's ranking
after removing its positives: the top ranks of Debian descriptions are mostly sibling packages (foo,
foo-data, foo-doc) that say the same thing.
"""
from __future__ import annotations

import hashlib
import re
import time

import numpy as np

from framework.retrieval import BM25Config, BM25Index

# Languages written without spaces between words: BM25 over character bigrams instead of words.
UNSPACED_LANGS = ("zh_CN", "zh_TW", "ja", "ko")
_WORD = re.compile(r"\w+")
_ASCII = re.compile(r"^[0-9a-z_]+$")
# Okapi's usual parameters rather than Pyserini's 0.9 / 0.4: the values DDTP's negatives were first mined with.
DDTP_BM25 = BM25Config(k1=1.5, b=0.75)


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


def build_index(docs: list[str], lang: str) -> BM25Index:
    """BM25 over the tokens of one language's pool; document ids are positions in `docs`."""
    return BM25Index([tokenize(doc, lang) for doc in docs], DDTP_BM25)


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


def rank_pool(index: BM25Index, query_tokens: list[list[str]], exclude: list[set[int]], depth: int,
              batch_size: int = 256, label: str = "") -> list[np.ndarray]:
    """Each tokenised query's `depth` best pool indices (its `exclude` set removed), batch by batch."""
    if len(query_tokens) != len(exclude):
        raise ValueError(f"{len(query_tokens)} queries but {len(exclude)} exclusion sets; pass one set per query")
    ranked: list[np.ndarray] = []
    start = time.monotonic()
    for num_batch, begin in enumerate(range(0, len(query_tokens), batch_size)):
        scores_QD = index.batch_scores(query_tokens[begin:begin + batch_size])
        ranked.extend(ranked_candidates(scores_D, exclude[begin + i], depth) for i, scores_D in enumerate(scores_QD))
        if len(ranked) == len(query_tokens) or num_batch % 20 == 19:
            print(f"  ranked {label} {len(ranked)}/{len(query_tokens)} queries against {index.num_docs} documents "
                  f"({time.monotonic() - start:.0f}s)", flush=True)
    return ranked
