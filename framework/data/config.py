"""The data config: one definition of what a stage reads, used by the run config and by the stream.

    DataConfig     a stage's `data:` section (framework/train/config.py re-exports it): which shards, how
                   they are sampled, truncated, shuffled and read, the error budget, and the per-source
                   rules (SourceRules, framework/data/sources.py: batch rules and prompts)
    BucketSection  its `buckets:` part: length edges and the batch size of each bucket
    StreamConfig   what a stream runs on: a DataConfig plus the values the trainer derives at run time
                   (per-rank batch sizes at the world size, the stage's seed)

Cross-field checks live here; the checks that need the manifest (its edges, its sources) run when the
manifest is read, before any step (`BucketSection.bucket_config`, the stream's `from_manifest`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from framework.data.buckets import DEFAULT_EDGES, PAPER_EDGES, BucketConfig
from framework.data.sources import SourceRules, batch_rules, check_source_rules, load_source_rules

NAMED_EDGES = {"default": DEFAULT_EDGES, "paper": PAPER_EDGES}


@dataclass(frozen=True)
class BucketSection:
    """Length buckets and batch sizes of a stage."""

    edges: str | list[int] = "manifest"
    """'manifest' (the edges the shards were bucketed with), 'default' (the paper's edges plus x1.1
    steps below), 'paper' (its 9 ranges) or a list; must equal the manifest's edges."""
    total_batch: dict[int, int] = field(default_factory=dict)
    """Upper edge -> queries per optimizer step over all ranks (the paper's Table 9)."""
    tokens_per_rank: int | None = None
    """Alternative: queries per micro-batch per rank = tokens_per_rank // edge."""

    def __post_init__(self) -> None:
        if isinstance(self.edges, str) and self.edges not in (*NAMED_EDGES, "manifest"):
            raise ValueError(f"buckets.edges={self.edges!r}: use 'manifest', one of {sorted(NAMED_EDGES)} or a "
                             "list of ints")
        if bool(self.total_batch) == (self.tokens_per_rank is not None):
            raise ValueError("buckets: give exactly one of total_batch (a table of total batch sizes per bucket "
                             "edge) or tokens_per_rank (a token budget)")
        bad = {edge: n for edge, n in self.total_batch.items() if edge < 1 or n < 1}
        if bad or (self.tokens_per_rank is not None and self.tokens_per_rank < 1):
            raise ValueError(f"buckets: edges, batch sizes and tokens_per_rank must be positive, got "
                             f"{bad or self.tokens_per_rank}")
        if self.edges != "manifest":
            # Named or listed edges are known now; 'manifest' edges are checked once the manifest is read.
            self.bucket_config(None)

    def bucket_config(self, manifest_edges: tuple[int, ...] | None) -> BucketConfig:
        """Edges and sizes, checked against the edges the shards were prepared with."""
        if self.edges == "manifest":
            if manifest_edges is None:
                raise ValueError("the manifest has no length edges (shards made without --tokenizer); re-shard "
                                 "with a tokenizer, or give buckets.edges")
            edges = tuple(manifest_edges)
        else:
            edges = NAMED_EDGES[self.edges] if isinstance(self.edges, str) else tuple(self.edges)
            if manifest_edges is not None and tuple(edges) != tuple(manifest_edges):
                raise ValueError(f"buckets.edges {list(edges)[:5]}... differ from the manifest's length edges "
                                 f"{list(manifest_edges)[:5]}...; use edges: manifest, or re-shard with "
                                 "tools/make_shards.py --length-edges")
        unknown = sorted(set(self.total_batch) - set(edges))
        if unknown:
            source = "the manifest's length edges" if self.edges == "manifest" else f"buckets.edges ({self.edges})"
            raise ValueError(f"buckets.total_batch has edges {unknown} that are not among {source} {list(edges)}; "
                             "key total_batch by those edges (an edge without an entry takes the next larger one's)")
        return BucketConfig(edges=tuple(edges), total_batch=dict(self.total_batch),
                            tokens_per_rank=self.tokens_per_rank)


@dataclass(frozen=True)
class DataConfig:
    """Which shards a stage reads and how it samples them."""

    manifest: str = ""
    """manifest.json written by tools/make_shards.py (or merged from several)."""
    sources: list[str] = field(default_factory=list)
    """Sources of the manifest to read (empty: all)."""
    source_weights: dict[str, float] = field(default_factory=dict)
    """Fraction (0, 1] of each source kept per epoch, with same-source batches."""
    mix_sources: bool = False
    """Allow several sources in one batch (False: the reference's same-source batches)."""
    group_size: int = 8
    """Passages per query: 1 positive + group_size - 1 hard negatives (1: in-batch negatives only)."""
    query_max_length: int = 512
    """Query tokens kept (specials included)."""
    passage_max_length: int = 8192
    """Passage (or document, for retromae) tokens kept (specials included)."""
    buckets: BucketSection = field(default_factory=lambda: BucketSection(total_batch={8192: 8}))
    """Length buckets and batch sizes."""
    num_workers: int = 1
    """DataLoader workers per rank (0: read in the training process)."""
    shuffle_window: int = 1024
    """Samples shuffled together in each slot's stream (a window restarts exactly on resume)."""
    max_bad_fraction: float = 0.01
    """Stop when more than this fraction of the records read are bad (undecodable, lost with a damaged shard)."""
    bad_budget_after: int = 1000
    """Records a slot reads before the budget applies (one early bad record must not stop a run)."""
    source_rules: dict[str, SourceRules] = field(default_factory=dict)
    """Per source ("*": every source's default): in_batch_negatives, mask_duplicates and the prompts
    (query_prefix, passage_prefix, record_prompt; they must equal the shards'), framework/data/sources.py.
    In YAML also the path of a rules file (the one tools/make_shards.py --source-rules read)."""

    @classmethod
    def expand_config(cls, raw: dict) -> dict:
        """The config loader's hook: `source_rules: FILE` reads the rules from that YAML file."""
        if isinstance(raw.get("source_rules"), str):
            raw = {**raw, "source_rules": load_source_rules(raw["source_rules"])}
        return raw

    def __post_init__(self) -> None:
        if not self.manifest:
            raise ValueError("data.manifest is empty: give the manifest.json written by tools/make_shards.py")
        if self.group_size < 1:
            raise ValueError(f"data.group_size={self.group_size}: use >= 1 (1 positive + G-1 negatives)")
        for name in ("query_max_length", "passage_max_length"):
            if getattr(self, name) < 2:
                raise ValueError(f"data.{name}={getattr(self, name)}: use >= 2 (truncation keeps </s>)")
        if self.num_workers < 0 or self.shuffle_window < 1 or self.bad_budget_after < 0:
            raise ValueError(f"data.num_workers={self.num_workers}, data.shuffle_window={self.shuffle_window}, "
                             f"data.bad_budget_after={self.bad_budget_after}: use >= 0, >= 1 and >= 0")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"data.max_bad_fraction={self.max_bad_fraction}: use a fraction in [0, 1]")
        if self.source_weights and self.mix_sources:
            raise ValueError("data.source_weights need same-source batches; set data.mix_sources=false or drop "
                             "the weights")
        wrong = {s: w for s, w in self.source_weights.items() if not 0 < w <= 1}
        if wrong:
            raise ValueError(f"data.source_weights must be in (0, 1] (the fraction kept per epoch), got {wrong}")
        check_source_rules(self.source_rules, "data.source_rules")
        alone = sorted(s for s in self.source_rules if not batch_rules(self.source_rules, s).in_batch_negatives)
        if alone and self.group_size == 1:
            raise ValueError(f"data.source_rules {alone}: in_batch_negatives=false with data.group_size=1 leaves each "
                             "query only its positive (the loss is 0); use group_size >= 2 (hard negatives) or "
                             "keep in-batch negatives")


@dataclass(frozen=True)
class StreamConfig:
    """What a stream runs on: the stage's data section plus the values derived at run time."""

    data: DataConfig
    """The stage's data section (as loaded from the run config)."""
    batch_sizes: dict[int, int]
    """Length bucket index -> samples per rank in one batch (framework/train/batching.py derives it)."""
    seed: int = 0
    """Root of all randomness (shard order, step order, shuffles, group sampling)."""

    @classmethod
    def of(cls, batch_sizes: dict[int, int], seed: int = 0, manifest: str = "(shards given directly)",
           **data_fields) -> "StreamConfig":
        """A stream config from DataConfig fields (streams over listed shards: tests, benchmarks); unless
        given, num_workers is 0 (read in the calling process)."""
        data_fields.setdefault("num_workers", 0)
        return cls(DataConfig(manifest=manifest, **data_fields), dict(batch_sizes), seed)

    def __post_init__(self) -> None:
        bad = {b: n for b, n in self.batch_sizes.items() if n < 1}
        if not self.batch_sizes or bad:
            raise ValueError(f"batch_sizes {self.batch_sizes}: give every bucket a batch size >= 1")
