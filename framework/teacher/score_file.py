"""Score a pair JSONL file with a teacher: every (query, pos) and (query, neg), written back as
pos_scores / neg_scores, resumably and in parts (framework/jobs).

Output line N is input line N; bad rows are copied through unchanged and counted (report.py). A
chunk's pairs go to the teacher in one call, so they are batched by length across the whole chunk.
The teacher scores the texts as the student will see them: each row's source prompts (the
--source-rules file tools/make_shards.py uses, framework/data/sources.py) and the row's own `prompt`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from framework.data.prepare.inputs import default_source
from framework.data.records import BadRecord
from framework.data.sources import RowPrompter, SourceRules, check_source_rules
from framework.jobs import Progress, RewriteJob, merge_parts, part_path, rewrite_jsonl
from framework.teacher.base import ScorePair, Teacher
from framework.teacher.report import ScoreReport, report_path_of
from framework.teacher.rows import (EMPTY_PASSAGE_SCORE, SCORE_FIELDS, PairRow, is_blank, is_scored_version,
                                    parse_pair_row, render_scored, score_value)


@dataclass(frozen=True)
class ScoreFileConfig:
    """How one file is scored (the teacher is configured apart)."""

    scale: float = 1.0
    """Scores are multiplied by this before writing. Training targets are softmax(scores) over a group with
    no temperature: a reranker's logits fit as they are; an M3 teacher's cosine-range scores give flat targets
    unless scaled (50 = 1/0.02, the training temperature)."""
    chunk_size: int = 1024
    """Rows scored and written together: the unit of resuming and of length batching."""
    part: int = 0
    """Which part of the file this run scores (0-based)."""
    num_parts: int = 1
    """Parts the file is split into (a SLURM array); `merge_scored` joins them."""
    overwrite: bool = False
    """Start again instead of resuming an existing output."""
    progress_seconds: float = 10.0
    """Seconds between progress lines."""
    source_rules: dict[str, SourceRules] = field(default_factory=dict)
    """Per-source prompts put before the texts the teacher scores (the file make_shards --source-rules reads)."""
    source: str | None = None
    """Source of every row (make_shards' --source); None: the row's own, else the file name's."""

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"scale={self.scale}: use a positive factor (1 keeps the teacher's scores)")
        check_source_rules(self.source_rules, "source_rules")


class ScoreRewriter:
    """The LineRewriter of scoring: parses a chunk's rows, scores their pairs in one call, renders them."""

    def __init__(self, teacher: Teacher, scale: float, file: str, report: ScoreReport,
                 prompter: RowPrompter | None = None):
        self.teacher, self.scale, self.file, self.report = teacher, scale, file, report
        self.prompter = prompter or RowPrompter({}, default_source(file))

    def _parse(self, line: int, raw: bytes) -> PairRow | None:
        try:
            return parse_pair_row(raw)
        except BadRecord as error:
            self.report.add_bad(self.file, line, error)
            return None

    def _count(self, row: PairRow) -> None:
        passages = row.pos + row.neg
        self.report.num_rows += 1
        self.report.num_blank_passages += sum(map(is_blank, passages))
        self.report.num_pairs += sum(not is_blank(p) for p in passages)
        self.report.num_rescored += any(field in row.obj for field in SCORE_FIELDS.values())

    def rewrite(self, first_line: int, raws: list[bytes], progress: Progress) -> list[bytes]:
        rows = [self._parse(line, raw) for line, raw in enumerate(raws, start=first_line)]
        prompter = self.prompter
        pairs = [ScorePair(prompter.query(row.obj, row.query), prompter.passage(row.obj, text))
                 for row in rows if row is not None
                 for name in SCORE_FIELDS for text in row.passages(name) if not is_blank(text)]
        scored = self.teacher.score(pairs, on_pairs=progress.add_items)
        assert len(scored) == len(pairs), "a teacher returns one score per pair"
        scores = iter(scored)
        out = []
        for line, raw, row in zip(range(first_line, first_line + len(raws)), raws, rows):
            if row is None:
                out.append(raw)
                continue
            self._count(row)
            written = {name: [EMPTY_PASSAGE_SCORE if is_blank(text) else
                              score_value(next(scores), self.scale, f"{self.file}:{line} {name}[{i}]")
                              for i, text in enumerate(row.passages(name))] for name in SCORE_FIELDS}
            out.append(render_scored(row, written))
        self.report.num_lines += len(raws)
        return out

    def check_kept(self, line: int, in_raw: bytes, out_raw: bytes) -> bool:
        row = self._parse(line, in_raw)
        if row is None:
            ok = out_raw == in_raw
        else:
            ok = is_scored_version(row, out_raw)
            if ok:
                self._count(row)
        self.report.num_lines += ok
        self.report.num_resumed += ok
        return ok


def score_file(input_path: str | Path, output_path: str | Path, teacher: Teacher,
               config: ScoreFileConfig = ScoreFileConfig()) -> ScoreReport:
    """Score (this part of) `input_path` into `output_path`, resuming it; returns and saves the report."""
    input_path = Path(input_path)
    prompter = RowPrompter(config.source_rules, default_source(str(input_path)), config.source)
    settings = {"teacher": teacher.identity(), "scale": config.scale, "prompts": prompter.identity()}
    job = RewriteJob(input_path, Path(output_path), settings, config.chunk_size, config.part, config.num_parts,
                     config.overwrite, config.progress_seconds, item_name="pairs")
    report = ScoreReport()
    # A report belongs to a finished run: an earlier one must not sit next to an output being rewritten.
    report_path_of(job.part_output).unlink(missing_ok=True)
    result = rewrite_jsonl(job, ScoreRewriter(teacher, config.scale, str(input_path), report, prompter))
    report.save(report_path_of(result.output_path))
    return report


def merge_scored(output_path: str | Path, num_parts: int) -> ScoreReport:
    """Join the parts of a split scoring run into `output_path`; returns (and saves) the summed report."""
    output_path = Path(output_path)
    reports = [report_path_of(part_path(output_path, part, num_parts)) for part in range(num_parts)]
    total = ScoreReport()
    for path in reports:
        total.add(ScoreReport.load(path))
    merge_parts(output_path, num_parts)
    total.save(report_path_of(output_path))
    for path in reports:
        path.unlink()
    return total
