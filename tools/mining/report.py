"""What a mining run did: rows, bad rows, and per source the candidates each choosing rule removed.

A report is the sum of its chunks' reports. Each chunk's report is appended to OUT.counts before
the chunk's lines are written, so a resumed run (or the merge of a split one) reports the whole file,
rule counts included, exactly as an uninterrupted run does. OUT.report.json keeps the final report.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import BadRow

# The choosing rules in the order they apply; a removed candidate is counted under the first that drops it.
#   positive         the row's own positive (or its query text) among the retrieved passages
#   rank_window      ranked before range_start (ranks from range_end on are never retrieved)
#   max_score        retriever score above --max-score
#   min_score        retriever score below --min-score
#   absolute_margin  choosing score above (weakest positive - margin)
#   relative_margin  choosing score above (weakest positive - margin x |weakest positive|)
RULES = ("positive", "rank_window", "max_score", "min_score", "absolute_margin", "relative_margin")
# Line numbers listed per bad-row reason; the counts stay exact beyond this.
MAX_LISTED = 20


@dataclass
class SourceCounts:
    """Candidates of one source's rows: retrieved, removed per rule, eligible, chosen."""

    rows: int = 0
    """Rows mined."""
    candidates: int = 0
    """Passages retrieved for them (ranks 0 .. range_end - 1, fewer when BM25 matches fewer)."""
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RULES, 0))
    """Rule -> candidates it removed (the first rule that drops a candidate takes it)."""
    chosen: int = 0
    """Negatives written (at most num_neg per row, drawn from the eligible ones)."""
    short_rows: int = 0
    """Rows left with fewer eligible candidates than num_neg."""

    @property
    def eligible(self) -> int:
        """Candidates no rule removed."""
        return self.candidates - sum(self.removed.values())

    def add(self, other: "SourceCounts") -> None:
        self.rows += other.rows
        self.candidates += other.candidates
        for rule, count in other.removed.items():
            self.removed[rule] = self.removed.get(rule, 0) + count
        self.chosen += other.chosen
        self.short_rows += other.short_rows


@dataclass
class MiningReport:
    """What a run did, over the whole output file (rows kept from an earlier run included)."""

    num_lines: int = 0
    """Lines of the input (= lines of the output; of this part, for a split run)."""
    num_mined: int = 0
    """Valid rows, written with mined negatives."""
    num_resumed: int = 0
    """Output lines kept from an earlier run."""
    num_short: int = 0
    """Rows whose eligible candidates were fewer than num_neg."""
    num_without_neg: int = 0
    """Rows left with no negative at all (BM25: no other passage shares a token with the query)."""
    num_neg_scores_dropped: int = 0
    """Rows whose neg_scores were removed along with the old negatives (without --output-scores)."""
    num_scores_written: int = 0
    """Rows written with new pos_scores / neg_scores (--output-scores)."""
    num_teacher_pairs: int = 0
    """(query, passage) pairs the rescoring teacher scored."""
    pool_size: int = 0
    """Distinct candidate passages."""
    bad: dict[str, int] = field(default_factory=dict)
    """Bad rows per reason (BAD_REASONS); they are copied through unchanged."""
    bad_lines: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    """Reason -> (1-based line, detail) of its first MAX_LISTED bad rows."""
    corpus_bad: dict[str, int] = field(default_factory=dict)
    """Skipped --corpus lines per reason ("unreadable", "no_text")."""
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    """Per source (the row's `source`, else the input file's name, as make_shards names it): candidates."""

    def add_bad(self, error: BadRow, line: int) -> None:
        self.bad[error.reason] = self.bad.get(error.reason, 0) + 1
        listed = self.bad_lines.setdefault(error.reason, [])
        if len(listed) < MAX_LISTED:
            listed.append((line, error.detail))

    def add_row(self, source: str, counts: SourceCounts) -> None:
        """One mined row's candidate counts (counts.rows is 1)."""
        self.num_mined += 1
        self.num_short += counts.short_rows
        self.num_without_neg += counts.chosen == 0
        self.sources.setdefault(source, SourceCounts()).add(counts)

    def add(self, other: "MiningReport") -> None:
        """Fold in the report of a later chunk or part of the same file (run-wide fields are not summed)."""
        for name in ("num_lines", "num_mined", "num_resumed", "num_short", "num_without_neg",
                     "num_neg_scores_dropped", "num_scores_written", "num_teacher_pairs"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, count in other.bad.items():
            self.bad[reason] = self.bad.get(reason, 0) + count
            listed = self.bad_lines.setdefault(reason, [])
            listed.extend(other.bad_lines.get(reason, [])[:MAX_LISTED - len(listed)])
        for source, counts in other.sources.items():
            self.sources.setdefault(source, SourceCounts()).add(counts)

    def overall(self) -> SourceCounts:
        """The sources' counts summed."""
        total = SourceCounts()
        for counts in self.sources.values():
            total.add(counts)
        return total

    def to_json(self) -> dict:
        out = asdict(self)
        out["sources"] = {name: {**asdict(c), "eligible": c.eligible} for name, c in sorted(self.sources.items())}
        out["overall"] = {**asdict(self.overall()), "eligible": self.overall().eligible}
        return out

    @classmethod
    def from_json(cls, data: dict) -> "MiningReport":
        data = {k: v for k, v in data.items() if k != "overall"}
        sources = {name: SourceCounts(**{k: v for k, v in c.items() if k != "eligible"})
                   for name, c in data.pop("sources").items()}
        bad_lines = {reason: [tuple(item) for item in items] for reason, items in data.pop("bad_lines").items()}
        return cls(**data, bad_lines=bad_lines, sources=sources)

    def save(self, path: Path) -> None:
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "MiningReport":
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            raise ValueError(f"{path} is missing or unreadable ({error}); rerun the part that wrote it") from None

    def summary(self) -> str:
        lines = [f"{self.num_lines} lines: {self.num_mined} rows mined ({self.num_resumed} lines kept from an "
                 f"earlier run), {sum(self.bad.values())} bad rows copied through unchanged; pool "
                 f"{self.pool_size} passages",
                 f"rows with fewer negatives than asked: {self.num_short} (none at all: {self.num_without_neg}); "
                 f"neg_scores dropped: {self.num_neg_scores_dropped}; rows with scores written: "
                 f"{self.num_scores_written}; teacher pairs scored: {self.num_teacher_pairs}"]
        for reason, count in sorted(self.bad.items()):
            shown = ", ".join(f"{line} ({detail})" for line, detail in self.bad_lines[reason])
            more = f" and {count - len(self.bad_lines[reason])} more" if count > len(self.bad_lines[reason]) else ""
            lines.append(f"  bad {reason}: {count} at line {shown}{more}")
        if self.corpus_bad:
            lines.append(f"  corpus lines skipped: {dict(sorted(self.corpus_bad.items()))}")
        if self.sources:
            lines.append("candidates removed per rule (each counted under the first rule that drops it):")
            lines += rule_table(self.sources, self.overall())
        return "\n".join(lines)


def rule_table(sources: dict[str, SourceCounts], overall: SourceCounts) -> list[str]:
    """One line per source and one for all: rows, candidates, removed per rule, eligible, chosen."""
    header = ["source", "rows", "candidates", *RULES, "eligible", "chosen"]
    rows = [[name, c.rows, c.candidates, *(c.removed.get(r, 0) for r in RULES), c.eligible, c.chosen]
            for name, c in sorted(sources.items())]
    rows.append(["all", overall.rows, overall.candidates, *(overall.removed.get(r, 0) for r in RULES),
                 overall.eligible, overall.chosen])
    cells = [[str(v) for v in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
            for row in cells]


def report_path_of(output_path: Path) -> Path:
    return Path(output_path).with_name(Path(output_path).name + ".report.json")


def counts_path_of(output_path: Path) -> Path:
    # JSON lines, but not named *.jsonl: make_shards, given the output's folder, must not read it as rows.
    return Path(output_path).with_name(Path(output_path).name + ".counts")


class ChunkCounts:
    """OUT.counts: each written chunk's report, keyed by its first (0-based) input line.

    A chunk's record is appended before its lines are written, so every chunk a resumed run keeps has
    one; a chunk that is redone appends it again (the same counts: the last record wins).
    """

    def __init__(self, path: Path, fresh: bool):
        self.path = Path(path)
        self.records: dict[int, MiningReport] = {}
        if fresh:
            self.path.unlink(missing_ok=True)
            return
        self._load()

    def _load(self) -> None:
        """Reads the complete records and rewrites the file without a torn last line (a kill mid-append)."""
        try:
            raws = self.path.read_bytes().split(b"\n")
        except FileNotFoundError:
            return
        kept = []
        for raw in raws:
            try:
                item = json.loads(raw)
                self.records[int(item["first"])] = MiningReport.from_json(item["report"])
                kept.append(raw)
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(b"".join(raw + b"\n" for raw in kept))
        os.replace(tmp, self.path)

    def record(self, first: int, report: MiningReport) -> None:
        self.records[first] = report
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"first": first, "report": report.to_json()}) + "\n")

    def total(self, first: int, end: int, chunk_size: int) -> MiningReport:
        """The summed report of the chunks of lines [first, end); raises when one has no record."""
        total = MiningReport()
        for start in range(first, end, chunk_size):
            if start not in self.records:
                raise ValueError(f"{self.path} holds no counts for lines {start + 1}-{min(start + chunk_size, end)} "
                                 "(deleted or edited?): the output is complete but its report would not be; pass "
                                 "--overwrite to mine again")
            total.add(self.records[start])
        return total
