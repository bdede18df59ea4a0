"""Options of one hard-negative mining run (tools/mine_hard_negatives.py): the retriever, the rank window,
the score rules that keep likely false negatives out, the optional rescoring teacher, and bad-row errors."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from framework.data.records import REJECT_REASONS
from framework.data.sources import SourceRules, check_source_rules
from framework.retrieval import DenseIndexConfig

METHODS = ("dense", "bm25")
# Rows are parsed by framework/data/records.py, so a bad row has one of its reasons.
BAD_REASONS = REJECT_REASONS


@dataclass(frozen=True)
class ScoreRules:
    """Which retrieved candidates may become negatives, by score (None switches a rule off).

    The score window reads the retriever's score; the margins read the choosing score: the rescoring
    teacher's when there is one (MiningConfig.rescore_with), else the retriever's. A margin compares
    a candidate with the row's weakest positive (its lowest score), as sentence-transformers does.
    """

    max_score: float | None = None
    """Drop a candidate whose retriever score is above this (near-duplicates of the query)."""
    min_score: float | None = None
    """Drop a candidate whose retriever score is below this (too easy to teach anything)."""
    absolute_margin: float | None = None
    """Drop a candidate scoring above pos - margin (0: never as high as the positive)."""
    relative_margin: float | None = None
    """Drop a candidate scoring above pos - margin x |pos|: pos x (1 - margin) for a positive score, as
    sentence-transformers' relative_margin and NV-Retriever's TopK-PercPos (0.05 = at most 95 % of the
    positive); still below the positive when it is negative (a reranker's raw logit)."""

    def __post_init__(self) -> None:
        for name in ("max_score", "min_score", "absolute_margin", "relative_margin"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not math.isfinite(value)):
                raise ValueError(f"{name}={value}: give a finite number, or leave it out to switch the rule off")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise ValueError(f"min_score={self.min_score} > max_score={self.max_score}: the score window is empty; "
                             "swap them or widen it")
        if self.absolute_margin is not None and self.absolute_margin < 0:
            raise ValueError(f"absolute_margin={self.absolute_margin}: use a margin >= 0 (0 drops candidates "
                             "scoring above the positive)")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise ValueError(f"relative_margin={self.relative_margin}: use a fraction in [0, 1), e.g. 0.05 (a "
                             "negative at most 95 % as similar as the positive)")

    @property
    def has_margins(self) -> bool:
        return self.absolute_margin is not None or self.relative_margin is not None


@dataclass(frozen=True)
class MiningConfig:
    """Options of one mining run; all of them are recorded in OUT.state.json and must match to resume."""

    model: str
    """M3 model directory (dense), or any directory with the model's tokenizer files (bm25)."""
    method: str = "dense"
    """"dense" (M3 dense vectors + faiss) or "bm25" (BM25 over the model's tokens)."""
    num_neg: int = 7
    """Negatives per row (the paper samples 7)."""
    range_start: int = 2
    """First rank (0-based) negatives are drawn from; ranks before it are skipped as likely positives."""
    range_end: int = 100
    """Ranks from range_start up to, not including, this one are candidates."""
    seed: int = 0
    """Root of the per-row draws (a row's draw depends only on the seed and its line number)."""
    pool_with_neg: bool = False
    """Also put the rows' existing `neg` texts in the default pool (FlagEmbedding's hn_mine does)."""
    rules: ScoreRules = field(default_factory=ScoreRules)
    """Score window and margins to the positive (false-negative control)."""
    rescore_with: str | None = None
    """Teacher directory (a cross-encoder, or an M3 model) that rescores the candidates before choosing."""
    rescore_max_length: int = 512
    """Cross-encoder teacher: tokens of query + passage (an M3 teacher uses the query/passage lengths)."""
    rescore_batch_tokens: int = 16384
    """Teacher: padded tokens per forward pass."""
    output_scores: bool = False
    """Write pos_scores / neg_scores: the teacher's when rescoring, else the retriever's."""
    scale: float = 1.0
    """Written scores are multiplied by this (the rules read unscaled scores); see tools/score_pairs.py."""
    chunk_size: int = 1024
    """Rows retrieved together and written together: the unit of progress output and of resuming."""
    batch_size: int = 64
    """Texts per encoder forward pass (dense)."""
    max_query_length: int = 512
    """Query tokens, specials included, after truncation."""
    max_passage_length: int = 512
    """Passage tokens, specials included, after truncation."""
    device: str = "auto"
    """Encoder and teacher device: "auto" (cuda when torch sees a GPU), "cpu", "cuda", "cuda:1", ..."""
    index: DenseIndexConfig = field(default_factory=DenseIndexConfig)
    """faiss index of the pool (dense): kind, IVF/HNSW parameters, GPU use."""
    source_rules: dict[str, SourceRules] = field(default_factory=dict)
    """Per-source prompts put before the queries and passages the dense retriever and the rescoring teacher
    see (the file tools/make_shards.py --source-rules reads); rows' own `prompt` fields apply too. BM25
    ranks raw texts."""
    source: str | None = None
    """Source of every row (make_shards' --source); None: the row's own, else the input file's name."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: choose one of {METHODS}")
        if self.num_neg < 1:
            raise ValueError(f"num_neg={self.num_neg}: ask for at least one negative")
        if not 0 <= self.range_start < self.range_end:
            raise ValueError(f"rank range [{self.range_start}, {self.range_end}) is empty or negative; use "
                             "0 <= range_start < range_end, e.g. 2 and 100")
        if self.range_end - self.range_start < self.num_neg:
            raise ValueError(f"rank range [{self.range_start}, {self.range_end}) holds fewer than num_neg="
                             f"{self.num_neg} ranks; widen it or lower num_neg")
        for name in ("chunk_size", "batch_size", "max_query_length", "max_passage_length", "rescore_max_length",
                     "rescore_batch_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: use a positive integer")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale={self.scale}: use a positive factor (1 writes the scores as they are)")
        check_source_rules(self.source_rules, "source_rules")
        if self.rescore_with is not None and not (self.rules.has_margins or self.output_scores):
            raise ValueError(f"rescore_with={self.rescore_with!r} changes nothing without a margin or output "
                             "scores: add --absolute-margin / --relative-margin, or --output-scores")

    @property
    def needs_positive_scores(self) -> bool:
        """Whether the retriever must score each row's positives (margins or scores without a teacher)."""
        return self.rescore_with is None and (self.rules.has_margins or self.output_scores)


class BadRow(ValueError):
    """An input row that cannot be mined; `reason` is one of BAD_REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in BAD_REASONS, f"unknown bad-row reason {reason!r}"
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
