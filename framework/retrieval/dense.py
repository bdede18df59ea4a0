"""Dense retrieval with faiss: exact inner-product search by default, IVF or HNSW for large corpora.

Scores are inner products; M3's dense vectors are L2-normalised, so they are cosine similarities.
The index lives on the GPU when faiss was built with GPU support and sees one (`faiss.get_num_gpus()`),
on the CPU otherwise; the choice is logged. HNSW has no faiss GPU implementation and stays on the CPU.

Shape legend (docs/shapes.md): N indexed vectors, D vector size, Q queries, K results per query.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf", "hnsw")
DEVICES = ("auto", "cpu", "gpu")
# faiss marks "no result" (fewer than k vectors reachable) with id -1.
MISSING_ID = -1


@dataclass(frozen=True)
class DenseIndexConfig:
    """How a DenseIndex stores and searches its vectors."""

    kind: str = "flat"
    """"flat" (exact), "ivf" (k-means cells, approximate) or "hnsw" (neighbour graph, approximate)."""
    nlist: int = 1024
    """IVF: number of k-means cells; training needs at least this many vectors (faiss advises 39 x nlist)."""
    nprobe: int = 32
    """IVF: cells visited per query; nprobe = nlist is exact."""
    hnsw_m: int = 32
    """HNSW: neighbours per graph node; recall and memory grow with it."""
    ef_construction: int = 200
    """HNSW: candidate list size while building the graph."""
    ef_search: int = 128
    """HNSW: candidate list size while searching; keep it >= k."""
    device: str = "auto"
    """"auto" (GPU if faiss has GPU support and sees a GPU), "cpu", or "gpu" (error when there is none)."""
    seed: int = 0
    """Seed of IVF's k-means, so that one corpus always gives the same cells."""
    add_batch_size: int = 65536
    """Vectors added per faiss call (progress granularity; bounds GPU staging memory)."""
    search_batch_size: int = 1024
    """Queries per faiss call (progress granularity; bounds the (batch, K) result memory)."""

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"kind={self.kind!r}: choose one of {INDEX_KINDS}")
        if self.device not in DEVICES:
            raise ValueError(f"device={self.device!r}: choose one of {DEVICES}")
        for name in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search", "add_batch_size",
                     "search_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: use a positive integer")
        if self.kind == "ivf" and self.nprobe > self.nlist:
            raise ValueError(f"nprobe={self.nprobe} > nlist={self.nlist}: lower nprobe (nprobe = nlist is exact)")


def gpu_count() -> int:
    """GPUs faiss can use: 0 for faiss-cpu builds, which may lack get_num_gpus altogether."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def check_vectors(vectors_ND, name: str, dim: int | None = None) -> np.ndarray:
    """Contiguous float32 (N, D) copy-free view where possible; ValueError naming the problem."""
    vectors_ND = np.ascontiguousarray(vectors_ND, dtype=np.float32)
    if vectors_ND.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (count, dim) array, got shape {vectors_ND.shape}; "
                         "reshape a single vector with v[None, :]")
    if dim is not None and vectors_ND.shape[1] != dim:
        raise ValueError(f"{name} have dimension {vectors_ND.shape[1]}, the index holds {dim}; encode both "
                         "with the same model")
    if not np.isfinite(vectors_ND).all():
        raise ValueError(f"{name} contain NaN or inf; check the encoder output (fp16 overflow?)")
    return vectors_ND


class DenseIndex:
    """Inner-product index over (N, D) float32 vectors; ids are row numbers 0..N-1 in insertion order."""

    def __init__(self, dim: int, config: DenseIndexConfig = DenseIndexConfig()):
        if dim < 1:
            raise ValueError(f"dim={dim}: use the embedding size (e.g. 1024 for bge-m3)")
        self.dim = dim
        self.config = config
        self.on_gpu = False
        self.index = self._cpu_index()

    @classmethod
    def build(cls, vectors_ND, config: DenseIndexConfig = DenseIndexConfig(),
              progress: bool | None = None) -> "DenseIndex":
        """An index holding `vectors_ND` (trained first when the kind needs it)."""
        vectors_ND = check_vectors(vectors_ND, "vectors")
        index = cls(vectors_ND.shape[1], config)
        index.add(vectors_ND, progress)
        return index

    def _cpu_index(self) -> faiss.Index:
        cfg = self.config
        if cfg.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if cfg.kind == "ivf":
            # The quantizer must outlive the IVF index; faiss keeps only a raw pointer to it.
            self._quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(self._quantizer, self.dim, cfg.nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = cfg.seed
            index.nprobe = cfg.nprobe
            return index
        index = faiss.IndexHNSWFlat(self.dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
        return index

    def _place(self) -> None:
        """Move the index to the GPU(s) when configured and possible, once, after training."""
        num_gpus = gpu_count()
        if self.config.device == "gpu" and num_gpus == 0:
            raise ValueError("device='gpu' but faiss sees no GPU (faiss-cpu build or no device); install "
                             "faiss-gpu-cu12 on a GPU machine or use device='auto'/'cpu'")
        want_gpu = self.config.device == "gpu" or (self.config.device == "auto" and num_gpus > 0)
        if want_gpu and self.config.kind == "hnsw":
            log.info("dense index: HNSW has no faiss GPU version; searching on the CPU")
        elif want_gpu:
            options = faiss.GpuMultipleClonerOptions()
            # Sharding splits the vectors over the GPUs, so a corpus larger than one GPU's memory fits.
            options.shard = True
            self.index = faiss.index_cpu_to_all_gpus(self.index, options)
            if self.config.kind == "ivf":
                faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", self.config.nprobe)
            self.on_gpu = True
        log.info("dense index: %s %s on %s", self.config.kind, type(self.index).__name__,
                 f"{num_gpus} GPU(s)" if self.on_gpu else "CPU")

    def add(self, vectors_ND, progress: bool | None = None) -> None:
        """Append vectors; an IVF index is trained on the first call's vectors."""
        vectors_ND = check_vectors(vectors_ND, "vectors", self.dim)
        if not self.index.is_trained:
            if len(vectors_ND) < self.config.nlist:
                raise ValueError(f"IVF with nlist={self.config.nlist} needs at least that many vectors to train, "
                                 f"got {len(vectors_ND)}; lower nlist (about sqrt(N)) or use kind='flat'")
            self.index.train(vectors_ND)
        if self.ntotal == 0 and not self.on_gpu:
            self._place()
        step = self.config.add_batch_size
        show = len(vectors_ND) > step if progress is None else progress
        for start in tqdm(range(0, len(vectors_ND), step), desc="index", disable=not show):
            self.index.add(vectors_ND[start:start + step])

    @property
    def ntotal(self) -> int:
        """Vectors in the index."""
        return int(self.index.ntotal)

    def search(self, queries_QD, k: int, progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores_QK float32, ids_QK int64), best first; k is capped at ntotal, MISSING_ID pads short rows."""
        queries_QD = check_vectors(queries_QD, "queries", self.dim)
        if k < 1:
            raise ValueError(f"k={k}: ask for at least one result")
        if self.ntotal == 0:
            raise ValueError("the index is empty; add vectors before searching")
        k = min(k, self.ntotal)
        if self.on_gpu and k > 2048:
            raise ValueError(f"k={k}: faiss GPU indexes return at most 2048 results; lower k or use device='cpu'")
        scores_QK = np.empty((len(queries_QD), k), dtype=np.float32)
        ids_QK = np.empty((len(queries_QD), k), dtype=np.int64)
        step = self.config.search_batch_size
        show = len(queries_QD) > step if progress is None else progress
        for start in tqdm(range(0, len(queries_QD), step), desc="search", disable=not show):
            end = start + step
            scores_QK[start:end], ids_QK[start:end] = self.index.search(queries_QD[start:end], k)
        return scores_QK, ids_QK


def top_k(scores_QN: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each row of a score matrix, best first; equal scores go to the lower column.

    The fixed tie order makes rankings reproducible across numpy versions and machines (argpartition
    alone orders ties arbitrarily). Returns (scores_QK, ids_QK int64) with K = min(k, N).
    """
    if scores_QN.ndim != 2:
        raise ValueError(f"scores must be a 2-D (queries, candidates) array, got shape {scores_QN.shape}")
    num = scores_QN.shape[1]
    k = min(k, num)
    if k < 1:
        empty = np.zeros((scores_QN.shape[0], 0))
        return empty.astype(scores_QN.dtype), empty.astype(np.int64)
    ids_QK = np.empty((scores_QN.shape[0], k), dtype=np.int64)
    for row, scores_N in enumerate(scores_QN):
        if k < num:
            cutoff = np.partition(scores_N, num - k)[num - k]
            # Every candidate tied with the k-th score is kept, then the stable sort picks the lowest ids.
            candidates = np.flatnonzero(scores_N >= cutoff)
        else:
            candidates = np.arange(num)
        order = np.argsort(-scores_N[candidates], kind="stable")[:k]
        ids_QK[row] = candidates[order]
    return np.take_along_axis(scores_QN, ids_QK, axis=1), ids_QK
