"""Per-mode retrieval over one task, timed per stage.

First stages search the whole corpus: dense (faiss, framework.retrieval.DenseIndex), sparse (the
inverted index of sparse.py), BM25 (framework.retrieval.BM25Index over the model's tokenizer) and
dense with MCLS document vectors. Second stages rescore candidates (hybrid.py): colbert reranks the
dense top `rerank_depth`; a hybrid rescores the union of the dense and sparse lists, top `candidates`
each, or top `rerank_depth` each when it weighs colbert (whose cost grows with the candidates).

Dense and sparse are searched once, as deep as the deepest consumer needs, and sliced for the rest.
A mode's latency is the sum of the stages it depends on (index building excluded), so dense_sparse
pays for the dense search, the sparse search and its rescoring.

Shape legend (docs/shapes.md): Q queries, N documents, D dense size, K results per query; scoped here:
C candidates of one query, P documents of the rescoring pool.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from framework.evaluate.config import EvalConfig
from framework.evaluate.hybrid import candidate_union, colbert_candidate_scores, colbert_score_matrix, rescore
from framework.evaluate.sparse import SparseIndex
from framework.retrieval import BM25Index, DenseIndex


@dataclass
class TaskInputs:
    """Encodings of one task's queries and documents (rows follow the task's id lists)."""

    query_texts: list[str]
    corpus_texts: list[str]
    query_dense_QD: np.ndarray | None = None
    doc_dense_ND: np.ndarray | None = None
    query_lexical: list[dict] | None = None
    doc_lexical: list[dict] | None = None
    query_colbert: list[np.ndarray] | None = None
    doc_colbert: dict[int, np.ndarray] = field(default_factory=dict)
    """Multi-vector outputs of the documents that some query may rerank, by document row."""
    doc_mcls_ND: np.ndarray | None = None


class TaskSearch:
    """Rankings of one task for any mode; searches run once and are cached, each stage timed."""

    def __init__(self, inputs: TaskInputs, config: EvalConfig, hybrid_weights: dict[str, tuple[float, float, float]],
                 tokenizer, vocab_size: int):
        self.inputs = inputs
        self.config = config
        self.hybrid_weights = hybrid_weights
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.seconds: dict[str, float] = {}
        """Stage -> search seconds for all the task's queries."""
        self.build_seconds: dict[str, float] = {}
        """Index -> building seconds."""
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._indexes: dict[str, object] = {}

    @property
    def num_queries(self) -> int:
        return len(self.inputs.query_texts)

    def _built(self, name: str, build):
        """The index `name`, built once by `build()`; building time is kept apart from search time."""
        if name not in self._indexes:
            start = time.perf_counter()
            self._indexes[name] = build()
            self.build_seconds[name] = time.perf_counter() - start
        return self._indexes[name]

    def _timed(self, stage: str, search):
        """The result of `search()`, run once and timed as `stage`."""
        if stage not in self._cache:
            start = time.perf_counter()
            self._cache[stage] = search()
            self.seconds[stage] = time.perf_counter() - start
        return self._cache[stage]

    def _first_stage_depth(self) -> int:
        return max(self.config.k, self.config.candidates, self.config.rerank_depth)

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores_QK, ids_QK) of the dense search at the deepest depth any mode needs."""
        index = self._built("dense", lambda: DenseIndex.build(self.inputs.doc_dense_ND, self.config.index,
                                                              progress=False))
        return self._timed("dense", lambda: index.search(self.inputs.query_dense_QD, self._first_stage_depth(),
                                                         progress=False))

    def sparse_index(self) -> SparseIndex:
        return self._built("sparse", lambda: SparseIndex(self.inputs.doc_lexical, self.vocab_size))

    def sparse(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores_QK, ids_QK) of the lexical search at the deepest depth any mode needs."""
        index = self.sparse_index()
        return self._timed("sparse", lambda: index.search(self.inputs.query_lexical, self._first_stage_depth()))

    def bm25(self) -> tuple[np.ndarray, np.ndarray]:
        index = self._built("bm25", lambda: BM25Index.build(self.inputs.corpus_texts, self.tokenizer,
                                                            self.config.bm25, progress=False))
        return self._timed("bm25", lambda: index.search(self.inputs.query_texts, self.config.k, progress=False))

    def dense_mcls(self) -> tuple[np.ndarray, np.ndarray]:
        index = self._built("dense_mcls", lambda: DenseIndex.build(self.inputs.doc_mcls_ND, self.config.index,
                                                                   progress=False))
        return self._timed("dense_mcls", lambda: index.search(self.inputs.query_dense_QD, self.config.k,
                                                              progress=False))

    def _hybrid_candidates(self, weights: tuple[float, float, float]) -> list[np.ndarray]:
        depth = self.config.rerank_depth if weights[2] else self.config.candidates
        return candidate_union(self.dense()[1][:, :depth], self.sparse()[1][:, :depth])

    def colbert_candidates(self, modes: list[str]) -> set[int]:
        """Document rows whose multi-vector outputs the given modes will need."""
        rows: set[int] = set()
        for mode in modes:
            if mode == "colbert":
                candidates = candidate_union(self.dense()[1][:, :self.config.rerank_depth])
            elif mode in self.hybrid_weights and self.hybrid_weights[mode][2]:
                candidates = self._hybrid_candidates(self.hybrid_weights[mode])
            else:
                continue
            for cand_C in candidates:
                rows.update(cand_C.tolist())
        return rows

    def _colbert(self, candidates: list[np.ndarray]):
        """colbert(q, cand_C) -> late-interaction scores of query q's candidates."""
        query_colbert, doc_colbert = self.inputs.query_colbert, self.inputs.doc_colbert
        pool = np.unique(np.concatenate(candidates)) if candidates else np.zeros(0, dtype=np.int64)
        widest = max((len(c) for c in candidates), default=0)
        if 0 < len(pool) <= 2 * widest:
            # Queries share most candidates (a corpus not much larger than the rerank depth): scoring the
            # pool in blocks of queries is several times faster than thin per-query products, and the
            # extra pairs cost at most as much as the needed ones.
            scores_QP = colbert_score_matrix(query_colbert, [doc_colbert[int(r)] for r in pool])
            return lambda q, cand_C: scores_QP[q, np.searchsorted(pool, cand_C)]
        return lambda q, cand_C: colbert_candidate_scores(query_colbert[q], [doc_colbert[int(i)] for i in cand_C])

    def _rescore(self, weights: tuple[float, float, float], candidates: list[np.ndarray]):
        i = self.inputs
        return rescore(candidates, weights, self.config.k, query_dense_QD=i.query_dense_QD,
                       doc_dense_ND=i.doc_dense_ND, query_lexical=i.query_lexical,
                       sparse_index=self.sparse_index() if weights[1] else None,
                       colbert=self._colbert(candidates) if weights[2] else None)

    def ranking(self, mode: str) -> np.ndarray:
        """ids_QK (K = config.k, MISSING_ID-padded) of a mode."""
        k = self.config.k
        if mode in ("dense", "sparse"):
            return getattr(self, mode)()[1][:, :k]
        if mode in ("bm25", "dense_mcls"):
            return getattr(self, mode)()[1]
        if mode == "colbert":
            candidates = candidate_union(self.dense()[1][:, :self.config.rerank_depth])
            return self._timed(mode, lambda: self._rescore((0.0, 0.0, 1.0), candidates))[1]
        if mode in self.hybrid_weights:
            weights = self.hybrid_weights[mode]
            candidates = self._hybrid_candidates(weights)
            return self._timed(mode, lambda: self._rescore(weights, candidates))[1]
        raise ValueError(f"unknown mode {mode!r}; choose from dense, sparse, colbert, bm25, dense_mcls or "
                         f"{sorted(self.hybrid_weights)}")

    def latency_seconds(self, mode: str) -> float:
        """Search seconds of a mode over all queries, including the first stages it builds on."""
        stages = {"colbert": ("dense", mode)}.get(mode, (mode,))
        if mode in self.hybrid_weights:
            stages = ("dense", "sparse", mode)
        return sum(self.seconds.get(s, 0.0) for s in stages)
