"""Options, bad-row errors and the report of one hard-negative mining run (tools/mine_hard_negatives.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

from framework.data.records import REJECT_REASONS
from framework.data.sources import SourceRules, check_source_rules
from framework.retrieval import DenseIndexConfig

METHODS = ("dense", "bm25")
# Rows are parsed by framework/data/records.py, so a bad row has one of its reasons.
BAD_REASONS = REJECT_REASONS
# Line numbers listed per bad-row reason; the counts stay exact beyond this.
MAX_LISTED = 20


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
    chunk_size: int = 1024
    """Rows retrieved together and written together: the unit of progress output and of resuming."""
    batch_size: int = 64
    """Texts per encoder forward pass (dense)."""
    max_query_length: int = 512
    """Query tokens, specials included, after truncation."""
    max_passage_length: int = 512
    """Passage tokens, specials included, after truncation."""
    device: str = "auto"
    """Encoder device: "auto" (cuda when torch sees a GPU), "cpu", "cuda", "cuda:1", ..."""
    index: DenseIndexConfig = field(default_factory=DenseIndexConfig)
    """faiss index of the pool (dense): kind, IVF/HNSW parameters, GPU use."""
    source_rules: dict[str, SourceRules] = field(default_factory=dict)
    """Per-source prompts put before the queries and passages the dense retriever encodes (the file
    tools/make_shards.py --source-rules reads); rows' own `prompt` fields apply too. BM25 ranks raw texts."""
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
        for name in ("chunk_size", "batch_size", "max_query_length", "max_passage_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: use a positive integer")
        check_source_rules(self.source_rules, "source_rules")


class BadRow(ValueError):
    """An input row that cannot be mined; `reason` is one of BAD_REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in BAD_REASONS, f"unknown bad-row reason {reason!r}"
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class MiningReport:
    """What a run did, over the whole output file (rows kept from an earlier run included)."""

    num_lines: int = 0
    """Lines of the input (= lines of the output)."""
    num_mined: int = 0
    """Valid rows, written with mined negatives."""
    num_resumed: int = 0
    """Output lines kept from an earlier run."""
    num_short: int = 0
    """Rows whose rank band held fewer than num_neg candidates."""
    num_without_neg: int = 0
    """Rows left with no negative at all (BM25: no other passage shares a token with the query)."""
    num_neg_scores_dropped: int = 0
    """Rows whose neg_scores were removed along with the old negatives."""
    pool_size: int = 0
    """Distinct candidate passages."""
    bad: dict[str, int] = field(default_factory=dict)
    """Bad rows per reason (BAD_REASONS); they are copied through unchanged."""
    bad_lines: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    """Reason -> (1-based line, detail) of its first MAX_LISTED bad rows."""
    corpus_bad: dict[str, int] = field(default_factory=dict)
    """Skipped --corpus lines per reason ("unreadable", "no_text")."""

    def add_bad(self, error: BadRow, line: int) -> None:
        self.bad[error.reason] = self.bad.get(error.reason, 0) + 1
        listed = self.bad_lines.setdefault(error.reason, [])
        if len(listed) < MAX_LISTED:
            listed.append((line, error.detail))

    def add_mined(self, num_neg: int, wanted: int) -> None:
        self.num_mined += 1
        self.num_short += num_neg < wanted
        self.num_without_neg += num_neg == 0

    def summary(self) -> str:
        lines = [f"{self.num_lines} lines: {self.num_mined} rows mined ({self.num_resumed} lines kept from an "
                 f"earlier run), {sum(self.bad.values())} bad rows copied through unchanged; pool "
                 f"{self.pool_size} passages",
                 f"rows with fewer negatives than asked: {self.num_short} (none at all: {self.num_without_neg}); "
                 f"neg_scores dropped: {self.num_neg_scores_dropped}"]
        for reason, count in sorted(self.bad.items()):
            shown = ", ".join(f"{line} ({detail})" for line, detail in self.bad_lines[reason])
            more = f" and {count - len(self.bad_lines[reason])} more" if count > len(self.bad_lines[reason]) else ""
            lines.append(f"  bad {reason}: {count} at line {shown}{more}")
        if self.corpus_bad:
            lines.append(f"  corpus lines skipped: {dict(sorted(self.corpus_bad.items()))}")
        return "\n".join(lines)
