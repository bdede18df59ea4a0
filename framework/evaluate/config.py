"""Configuration of an evaluation: which modes, how deep each search goes, which benchmark slice.

Each component reads its own section: the benchmark loader `BenchmarkConfig`, the hybrid rescoring
`HybridConfig`, the faiss index `DenseIndexConfig`, the BM25 baseline `BM25Config`, MLflow
`TrackingConfig` (framework/tracking.py, shared with training). `EvalConfig` holds them and checks what
spans several of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from framework.config import check_choices
from framework.heads import canonical_head
from framework.retrieval import BM25Config, DenseIndexConfig
from framework.tracking import TrackingConfig  # the one tracking config, shared with training

# Reported retrieval modes. Metric names start with the mode, so none may contain "+" (MLflow rejects it).
BASE_MODES = ("dense", "sparse", "colbert", "dense_sparse", "all", "bm25")
MCLS_MODE = "dense_mcls"
# Display names of the paper's tables.
LABELS = {"dense": "Dense", "sparse": "Sparse", "colbert": "Multi-vec", "dense_sparse": "Dense+Sparse",
          "all": "All", "bm25": "BM25", MCLS_MODE: "Dense (MCLS)"}
# Heads each mode needs from the model (bm25 needs only the tokenizer).
MODE_HEADS = {"dense": ("dense",), "sparse": ("sparse",), "colbert": ("dense", "colbert"),
              "dense_sparse": ("dense", "sparse"), "all": ("dense", "sparse", "colbert"), "bm25": (),
              MCLS_MODE: ("dense",)}
# (w_dense, w_sparse, w_colbert) of equation (1) for the two hybrid modes, as set in the paper's section 4:
# MIRACL and MKQA (4.1, 4.2) and MLDR long documents (4.3).
HYBRID_PRESETS = {
    "miracl": {"dense_sparse": (1.0, 0.3, 0.0), "all": (1.0, 0.3, 1.0)},
    "mldr": {"dense_sparse": (0.2, 0.8, 0.0), "all": (0.15, 0.5, 0.35)},
}


def custom_mode_name(weights: tuple[float, float, float]) -> str:
    """Mode name of a custom weight set, e.g. (0.4, 0.4, 0.2) -> "hybrid_0.4_0.4_0.2"."""
    return "hybrid_" + "_".join(f"{w:g}" for w in weights)


@dataclass(frozen=True)
class BenchmarkConfig:
    """Which part of a benchmark is loaded."""

    split: str = "test"
    """qrels split of BEIR folders (qrels/<split>.tsv); DDTP names (ddtp, ddtp-dev) pick their own split."""
    tasks: tuple[str, ...] = ()
    """Evaluate only these tasks (DDTP directions such as "de" or "de-en", BEIR subfolder names); () = all."""
    max_queries: int | None = None
    """Per task, keep only the first N evaluable queries (sorted by id); None keeps all. For quick checks."""
    max_corpus: int | None = None
    """Per task, keep N documents: every relevant one of the kept queries, then others in file order."""

    def __post_init__(self) -> None:
        for name in ("max_queries", "max_corpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value}: use a positive number, or None for no limit")
        if not self.split:
            raise ValueError("split is empty; name the qrels file, e.g. 'test' for qrels/test.tsv")


@dataclass(frozen=True)
class HybridConfig:
    """Weights of the hybrid modes: s = w_dense * dense + w_sparse * sparse + w_colbert * colbert."""

    preset: str = "miracl"
    """Weights of dense_sparse and all: "miracl" (1/0.3/0 and 1/0.3/1) or "mldr" (0.2/0.8/0, 0.15/0.5/0.35)."""
    custom: tuple[tuple[float, float, float], ...] = ()
    """Extra hybrid modes, one per (w_dense, w_sparse, w_colbert), reported as hybrid_<w1>_<w2>_<w3>."""

    def __post_init__(self) -> None:
        if self.preset not in HYBRID_PRESETS:
            raise ValueError(f"hybrid preset {self.preset!r}: choose one of {sorted(HYBRID_PRESETS)}, or add "
                             "weights with custom=((w_dense, w_sparse, w_colbert),)")
        for weights in self.custom:
            if len(weights) != 3 or min(weights) < 0 or sum(weights) == 0:
                raise ValueError(f"custom hybrid weights {tuple(weights)}: give 3 non-negative numbers "
                                 "(dense, sparse, colbert), not all zero")

    def weights(self) -> dict[str, tuple[float, float, float]]:
        """Mode name -> weights of every hybrid mode this config defines."""
        modes = dict(HYBRID_PRESETS[self.preset])
        modes.update({custom_mode_name(tuple(w)): tuple(float(x) for x in w) for w in self.custom})
        return modes


@dataclass(frozen=True)
class EvalConfig:
    """What one evaluation computes. It is also a training stage's `evaluate` section (one definition):
    there `benchmark_name` says what to evaluate the stage's export on."""

    benchmark_name: str | None = None
    """Stage-end evaluation: a benchmark name (ddtp, ddtp-dev) or BEIR directory; None: no evaluation.
    `evaluate()` and `python -m framework evaluate --benchmark` take the benchmark as an argument instead."""
    modes: tuple[str, ...] = ()
    """Modes to report (dense, sparse, colbert, dense_sparse, all, bm25); () = all the model's heads allow.
    colbert is the multi-vector head's mode; multivec and multi_vector are accepted for it."""
    k: int = 100
    """Results kept per query and mode for the metrics (Recall@100 needs 100)."""
    candidates: int = 1000
    """Depth of the dense and sparse lists whose union dense_sparse rescores (paper: top-1000 each)."""
    rerank_depth: int = 200
    """Candidates rescored when the colbert head is involved: dense top-N for colbert, dense + sparse top-N for all."""
    mcls: bool = False
    """Also report dense_mcls: corpus dense vectors by MCLS (appendix B.2), queries encoded plainly."""
    mcls_interval: int = 256
    """MCLS: one CLS token per this many positions (the paper uses 256)."""
    dense_dim: int | None = None
    """Keep the first N dims of every dense vector, renormalised, in every mode that reads dense vectors
    (a model trained with loss.matryoshka_dims); None = the full width."""
    batch_size: int = 32
    """Texts per encoder forward pass."""
    query_max_length: int = 512
    """Query tokens kept (specials counted); longer queries are truncated."""
    passage_max_length: int | None = None
    """Passage tokens kept (specials counted); None = the model's position limit."""
    query_prompt: str | None = None
    """Text put before every query; None: the model's saved "query" prompt (what it was trained with,
    framework/data/sources.py), none if it has none."""
    passage_prompt: str | None = None
    """Text put before every document; None: the model's saved passage prompt, none if it has none."""
    colbert_memory_gb: float = 2.0
    """Multi-vector corpus vectors are kept from the first encoding pass up to this size; above it only
    the reranked candidates are encoded again, so memory stays bounded on large corpora."""
    progress: bool = True
    """Show progress bars while encoding."""
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    """Benchmark slice (used when evaluate() is given a name or folder)."""
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    """Hybrid mode weights."""
    index: DenseIndexConfig = field(default_factory=DenseIndexConfig)
    """faiss index of the dense search (exact inner product by default)."""
    bm25: BM25Config = field(default_factory=BM25Config)
    """BM25 baseline over the model's tokenizer."""
    every_steps: int | None = None
    """Training stage only: also evaluate the live weights every N optimizer steps (metrics go to the
    stage's MLflow run at that step; bm25 is left out unless `modes` names it); None: stage end only."""
    best_metric: str | None = None
    """Training stage only: '<mode>.<metric>' of the overall average, e.g. 'all.ndcg@10' (metrics ndcg@10,
    recall@20, recall@100, mrr@10): the best evaluation's weights are kept in exports/<stage>.best/."""
    patience: int | None = None
    """Training stage only: stop the stage after this many evaluations without improving best_metric."""
    min_delta: float = 0.0
    """Training stage only: an evaluation improves on the best only when it beats it by more than this."""
    next_stage_from: Literal["last", "best"] = "last"
    """Training stage only: the next stage starts from the stage's last export or from its best one."""

    @classmethod
    def expand_config(cls, raw: dict) -> dict:
        """The config loader's hook for the short form of a stage's section, `{benchmark: NAME, tasks: [...],
        max_queries: N, batch_size: B}`: the name goes to benchmark_name, tasks and max_queries into the
        benchmark slice."""
        raw = dict(raw)
        if isinstance(raw.get("benchmark"), str):
            if "benchmark_name" in raw:
                raise ValueError("give the benchmark once: benchmark_name, or benchmark: NAME (short form)")
            raw["benchmark_name"] = raw.pop("benchmark")
        moved = {key: raw.pop(key) for key in ("tasks", "max_queries", "max_corpus", "split") if key in raw}
        if moved:
            if isinstance(raw.get("benchmark"), dict):
                clash = sorted(set(moved) & set(raw["benchmark"]))
                if clash:
                    raise ValueError(f"{clash} given twice: at the top and in benchmark; keep one")
            raw["benchmark"] = {**(raw.get("benchmark") or {}), **moved}
        return raw

    def __post_init__(self) -> None:
        # The multi-vector head's other spellings (multivec, multi_vector) name the colbert mode (framework/heads.py).
        object.__setattr__(self, "modes", tuple(canonical_head(m) for m in self.modes))
        if self.best_metric is not None:
            mode, dot, metric = self.best_metric.rpartition(".")
            object.__setattr__(self, "best_metric", f"{canonical_head(mode)}{dot}{metric}")
        known = (*BASE_MODES, MCLS_MODE)
        unknown = [m for m in self.modes if m not in known]
        if unknown:
            raise ValueError(f"unknown mode(s) {unknown}: choose from {list(BASE_MODES)} (dense_mcls comes with "
                             "mcls=True, custom hybrids with hybrid.custom)")
        for name in ("k", "candidates", "rerank_depth", "batch_size", "query_max_length", "mcls_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: use a positive integer")
        if self.dense_dim is not None and self.dense_dim < 1:
            raise ValueError(f"dense_dim={self.dense_dim}: use a positive width, or None for the full vectors")
        if self.mcls_interval < 2:
            raise ValueError(f"mcls_interval={self.mcls_interval}: use at least 2 (the paper uses 256)")
        if self.candidates < self.k:
            raise ValueError(f"candidates={self.candidates} < k={self.k}: hybrid rescoring could not fill k "
                             "results; raise candidates or lower k")
        if self.colbert_memory_gb < 0:
            raise ValueError(f"colbert_memory_gb={self.colbert_memory_gb}: use 0 (always re-encode candidates) "
                             "or a positive size")
        self._check_during_training()

    def _check_during_training(self) -> None:
        check_choices(self, "evaluate")
        if self.every_steps is not None and self.every_steps < 1:
            raise ValueError(f"every_steps={self.every_steps}: use a positive number of optimizer steps, or null")
        if self.every_steps is not None and not self.benchmark_name:
            raise ValueError("every_steps needs a benchmark: set benchmark_name (or benchmark: NAME), e.g. ddtp-dev")
        needs_best = {"patience": self.patience is not None, "next_stage_from": self.next_stage_from == "best",
                      "min_delta": self.min_delta != 0.0}
        for name, used in needs_best.items():
            if used and self.best_metric is None:
                raise ValueError(f"{name} needs best_metric, e.g. best_metric: all.ndcg@10")
        if self.best_metric is not None:
            if self.every_steps is None:
                raise ValueError("best_metric needs every_steps: the best is chosen among the evaluations "
                                 "during training")
            self.best_key()
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience={self.patience}: use >= 1 evaluations without improvement, or null")
        if self.min_delta < 0:
            raise ValueError(f"min_delta={self.min_delta}: use >= 0")

    def reported_modes(self) -> tuple[str, ...] | None:
        """Modes named by `modes` plus those mcls and hybrid.custom add; None when `modes` is () (the model's
        heads decide)."""
        if not self.modes:
            return None
        extra = ((MCLS_MODE,) if self.mcls else ()) + tuple(custom_mode_name(tuple(w)) for w in self.hybrid.custom)
        return tuple(dict.fromkeys((*self.modes, *extra)))

    def best_key(self) -> tuple[str, str]:
        """(mode, metric) of best_metric in the results' names, e.g. 'all.ndcg@10' -> ('all', 'ndcg_at_10')."""
        from framework.evaluate.metrics import METRICS  # (pytrec_eval: imported when a best_metric is given)

        mode, _, metric = (self.best_metric or "").rpartition(".")
        metric = metric.lower().replace("@", "_at_")  # users write ndcg@10, the results say ndcg_at_10
        if not mode or metric not in METRICS:
            raise ValueError(f"best_metric={self.best_metric!r}: write '<mode>.<metric>' with a metric of "
                             f"{[m.replace('_at_', '@') for m in METRICS]}, e.g. all.ndcg@10")
        known = self.reported_modes() or (*BASE_MODES, MCLS_MODE, *(custom_mode_name(tuple(w))
                                                                  for w in self.hybrid.custom))
        if mode == "bm25":
            raise ValueError(f"best_metric={self.best_metric!r}: BM25 does not depend on the trained weights; "
                             f"choose a mode of the model, e.g. all.{metric.replace('_at_', '@')}")
        if mode not in known or (mode == MCLS_MODE and not self.mcls):
            raise ValueError(f"best_metric={self.best_metric!r}: mode {mode!r} is not evaluated; choose one of "
                             f"{[m for m in known if m != 'bm25' and (m != MCLS_MODE or self.mcls)]}")
        return mode, metric
