"""What a scoring run did: rows and pairs scored, rows kept from an earlier run, bad rows by reason with
file and line. Saved next to the output (OUT.report.json) so that the parts of a split run add up."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from framework.data.manifest import RejectExample
from framework.data.records import BadRecord

# Bad rows listed with file and line; the counts stay exact beyond this.
MAX_EXAMPLES = 20


@dataclass
class ScoreReport:
    """Counts over a whole output file (lines kept from an earlier run included)."""

    num_lines: int = 0
    """Input lines covered (= output lines)."""
    num_rows: int = 0
    """Valid rows, written with pos_scores / neg_scores."""
    num_pairs: int = 0
    """(query, passage) pairs scored by the teacher."""
    num_resumed: int = 0
    """Lines kept from an earlier run."""
    num_rescored: int = 0
    """Rows that already had pos_scores or neg_scores (replaced)."""
    num_blank_passages: int = 0
    """Blank pos/neg entries: given a placeholder score, dropped with it by make_shards."""
    bad: dict[str, int] = field(default_factory=dict)
    """Bad rows per reason (records.REJECT_REASONS); copied through unchanged."""
    examples: list[RejectExample] = field(default_factory=list)
    """The first MAX_EXAMPLES bad rows: file, 1-based line, reason, detail."""

    @property
    def num_bad(self) -> int:
        return sum(self.bad.values())

    def add_bad(self, file: str, line: int, error: BadRecord) -> None:
        self.bad[error.reason] = self.bad.get(error.reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(RejectExample(file, line, error.reason, error.detail))

    def add(self, other: "ScoreReport") -> None:
        """Fold in the report of a later part of the same file (or of another file)."""
        for name in ("num_lines", "num_rows", "num_pairs", "num_resumed", "num_rescored", "num_blank_passages"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, count in other.bad.items():
            self.bad[reason] = self.bad.get(reason, 0) + count
        self.examples.extend(other.examples[:MAX_EXAMPLES - len(self.examples)])

    def summary(self) -> str:
        lines = [f"{self.num_lines:,} lines: {self.num_rows:,} rows scored ({self.num_pairs:,} pairs), "
                 f"{self.num_bad:,} bad rows copied through unchanged, {self.num_resumed:,} lines kept from an "
                 f"earlier run; scores replaced in {self.num_rescored:,} rows; {self.num_blank_passages:,} blank "
                 "passages (placeholder score, dropped by make_shards)"]
        for reason, count in sorted(self.bad.items()):
            shown = [f"{e.file}:{e.line} ({e.detail})" for e in self.examples if e.reason == reason]
            more = f" and {count - len(shown)} more" if count > len(shown) else ""
            lines.append(f"  bad {reason}: {count:,} at {', '.join(shown) or 'lines not listed'}{more}")
        return "\n".join(lines)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "ScoreReport":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            examples = [RejectExample(**e) for e in data.pop("examples")]
            return cls(**data, examples=examples)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise ValueError(f"{path} is missing or unreadable ({error}); rerun the part that wrote it") from None


def report_path_of(output_path: Path) -> Path:
    return Path(output_path).with_name(Path(output_path).name + ".report.json")
