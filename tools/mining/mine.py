"""The mining job: per chunk, rank the queries over the pool, apply the choosing rules (rescoring the
candidates with a teacher when asked), draw seeded negatives, write; resumable and split into parts by
framework/jobs (a chunk's lines and counts depend on that chunk alone)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from framework.data.prepare.inputs import default_source
from framework.data.records import Record
from framework.data.sources import RowPrompter
from framework.jobs import Progress, RewriteJob, rewrite_jsonl, sha256_of, state_path_of
from framework.teacher import BatchingConfig, CrossEncoderConfig, M3TeacherConfig, RuntimeConfig, ScorePair
from framework.teacher import Teacher, TeacherConfig, detect_kind, load_teacher
from framework.teacher.rows import score_value
from .choose import Candidates, apply_margins, draw, window_candidates
from .config import BadRow, MiningConfig
from .rankers import RETRIEVERS, Ranking, Retriever, resolve_device
from .report import ChunkCounts, MiningReport, counts_path_of, report_path_of
from .rows import Pool, neg_field, parse_row, pos_entries, read_corpus, render_row, scan_input


def teacher_config(config: MiningConfig) -> TeacherConfig | None:
    """The rescoring teacher's config (a cross-encoder or an M3 model, told apart by its config.json)."""
    if config.rescore_with is None:
        return None
    runtime = RuntimeConfig(device=config.device)
    batching = BatchingConfig(batch_tokens=config.rescore_batch_tokens)
    if detect_kind(config.rescore_with) == "cross_encoder":
        return CrossEncoderConfig(config.rescore_with, config.rescore_max_length, runtime, batching)
    return M3TeacherConfig(config.rescore_with, max_query_length=config.max_query_length,
                           max_passage_length=config.max_passage_length, runtime=runtime, batching=batching)


def run_settings(config: MiningConfig, corpus_path: Path | None, teacher: TeacherConfig | None) -> dict:
    """What the output depends on besides the input (framework/jobs keeps the input hash and chunk size)."""
    settings = asdict(config)
    settings.pop("chunk_size")
    settings.update(settings.pop("rules"))  # flat, so that a refusal names --absolute-margin, not --rules
    settings["model"] = str(Path(config.model).resolve())
    if config.method == "dense":  # the dense scores' last bits depend on the device
        settings["device"] = resolve_device(config.device)
    settings["rescore_with"] = teacher.identity() if teacher is not None else None
    settings["corpus_sha256"] = corpus_path and sha256_of(corpus_path)
    return settings


class MineRewriter:
    """framework/jobs' LineRewriter of mining; builds the retriever and the teacher on the first chunk."""

    def __init__(self, config: MiningConfig, pool: Pool, teacher: TeacherConfig | None, prompter: RowPrompter,
                 counts: ChunkCounts, num_lines: int):
        self.config, self.pool, self.teacher_config, self.prompter = config, pool, teacher, prompter
        # The dense retriever sees the texts as the student will (prompts); BM25 ranks words, which prompts
        # would only add to every query. The teacher always sees them, as tools/score_pairs.py's does.
        self.shows_prompts = config.method == "dense"
        self.counts, self.num_lines = counts, num_lines
        self.retrieve: Retriever | None = None
        self.teacher: Teacher | None = None

    def _start(self, first_line: int) -> None:
        config = self.config
        print(f"{'resuming at line ' + str(first_line) if first_line > 1 else 'mining'} of {self.num_lines} lines, "
              f"{config.method} retrieval over {len(self.pool.texts)} pool passages"
              + (f", rescored by {config.rescore_with}" if config.rescore_with else ""), flush=True)
        self.retrieve = RETRIEVERS[config.method](config, self.pool.shown)
        if self.teacher_config is not None:
            self.teacher = load_teacher(self.teacher_config)

    def rewrite(self, first_line: int, raws: list[bytes], progress: Progress) -> list[bytes]:
        report = MiningReport(num_lines=len(raws))
        rows: list[tuple[int, dict, Record]] = []
        for line, raw in enumerate(raws, start=first_line):
            try:
                rows.append((line, *parse_row(raw)))
            except BadRow as error:
                report.add_bad(error, line)
        out = list(raws)  # bad rows are copied through unchanged
        if rows:
            if self.retrieve is None:
                self._start(first_line)
            for (line, row, record), text in zip(rows, self._mine(rows, report)):
                out[line - first_line] = text
        self.counts.record(first_line - 1, report)  # before the lines: a kept chunk always has its counts
        progress.add_items(len(rows))
        return out

    def _mine(self, rows: list[tuple[int, dict, Record]], report: MiningReport) -> list[bytes]:
        config, pool = self.config, self.pool
        shown = self.prompter if self.shows_prompts else None
        queries = [record.query if shown is None else shown.query(row, record.query) for _, row, record in rows]
        positives = [record.pos if shown is None else [shown.passage(row, text) for text in record.pos]
                     for _, row, record in rows] if config.needs_positive_scores else None
        ranking: Ranking = self.retrieve(queries, positives)
        candidates = [window_candidates(ids_K, scores_K, pool.ids_of([*record.pos, record.query]), config)
                      for (_, _, record), ids_K, scores_K in zip(rows, ranking.ids_QK, ranking.scores_QK)]
        positive_scores = (self._rescore(rows, candidates, report) if self.teacher is not None
                           else ranking.positive_scores)
        out = []
        for i, ((line, row, record), found) in enumerate(zip(rows, candidates)):
            if positive_scores is not None:
                found = apply_margins(found, positive_scores[i], config.rules)
            chosen = draw(found, config, line)
            report.add_row(self.prompter.source(row), chosen.counts)
            scores = None
            if config.output_scores:
                where = f"line {line}"
                scores = ([score_value(s, config.scale, f"{where} pos") for s in positive_scores[i]],
                          [score_value(s, config.scale, f"{where} neg") for s in chosen.scores_C])
            out.append(render_row(row, [pool.texts[j] for j in chosen.ids_C], report, scores))
        return out

    def _rescore(self, rows: list[tuple[int, dict, Record]], candidates: list[Candidates],
                 report: MiningReport) -> list[np.ndarray]:
        """Replaces the candidates' scores with the teacher's (one call per chunk, batched by length);
        returns the teacher's scores of each row's positives."""
        prompter = self.prompter
        pairs = [ScorePair(prompter.query(row, record.query), prompter.passage(row, text))
                 for (_, row, record), found in zip(rows, candidates)
                 for text in [*record.pos, *(self.pool.texts[j] for j in found.ids_C)]]
        scores = self.teacher.score(pairs)
        report.num_teacher_pairs += len(pairs)
        positive_scores, start = [], 0
        for (line, _, record), found in zip(rows, candidates):
            mine = scores[start:start + len(record.pos) + len(found.ids_C)]
            if not np.isfinite(mine).all():
                raise ValueError(f"the teacher {self.config.rescore_with} scored a pair of line {line} as "
                                 f"{mine[~np.isfinite(mine)][0]}; check the teacher, or run it in float32")
            positive_scores.append(mine[:len(record.pos)])
            found.scores_C = mine[len(record.pos):].astype(np.float32)
            start += len(mine)
        return positive_scores

    def check_kept(self, line: int, in_raw: bytes, out_raw: bytes) -> bool:
        """Whether a kept output line is its input line with mined negatives (and scores, when asked)."""
        try:
            row, _ = parse_row(in_raw)
        except BadRow:
            return out_raw == in_raw
        try:
            out = json.loads(out_raw)
        except (ValueError, RecursionError):
            return False
        neg = neg_field(row)
        rewritten = {neg, "neg_scores"} | ({"pos_scores"} if self.config.output_scores else set())
        if not isinstance(out, dict) or not isinstance(out.get(neg), list) or \
                _identity(out, rewritten) != _identity(row, rewritten):
            return False
        if self.config.output_scores:
            return (isinstance(out.get("pos_scores"), list) and len(out["pos_scores"]) == len(pos_entries(row))
                    and isinstance(out.get("neg_scores"), list) and len(out["neg_scores"]) == len(out[neg]))
        return True


def _identity(row: dict, rewritten: set[str]) -> str:
    """A row's content apart from what mining rewrites (canonical JSON, so NaN equals NaN)."""
    return json.dumps({k: v for k, v in row.items() if k not in rewritten}, sort_keys=True)


def refuse_old_state(output_path: Path) -> None:
    """A state file of the mining tool before framework/jobs has another format: say so, not "different format"."""
    try:
        old = json.loads(state_path_of(output_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(old, dict) and "format" not in old and "settings" in old and "input_sha256" in old:
        raise ValueError(f"{output_path} was written by an earlier version of the mining tool, whose "
                         f"{state_path_of(output_path).name} cannot be resumed by this one; pass --overwrite to mine "
                         "it again (or keep that file under another name: its finished lines are valid rows)")


def mine(input_path: str | Path, output_path: str | Path, config: MiningConfig,
         corpus_path: str | Path | None = None, overwrite: bool = False, part: int = 0, num_parts: int = 1,
         progress_seconds: float = 10.0) -> MiningReport:
    """Write (part `part` of `num_parts` of) `input_path`'s rows with mined negatives to `output_path`,
    resuming it; returns the report (saved as OUT.report.json next to the part's output)."""
    input_path, output_path = Path(input_path), Path(output_path)
    corpus_path = Path(corpus_path) if corpus_path is not None else None
    teacher = teacher_config(config)
    job = RewriteJob(input_path, output_path, run_settings(config, corpus_path, teacher), config.chunk_size, part,
                     num_parts, overwrite, progress_seconds, item_name="rows")
    out_path = job.part_output
    if not overwrite and out_path.exists():
        refuse_old_state(out_path)
    prompter = RowPrompter(config.source_rules, default_source(str(input_path)), config.source)
    shown = prompter if config.method == "dense" else None
    num_lines, pool = scan_input(input_path, config, fill_pool=corpus_path is None, prompter=shown)
    corpus_bad: dict[str, int] = {}
    if corpus_path is not None:
        pool = read_corpus(corpus_path, corpus_bad, shown)
    counts = ChunkCounts(counts_path_of(out_path), fresh=overwrite or not out_path.exists())
    # A report belongs to a finished run: an earlier one must not sit next to an output being rewritten.
    report_path_of(out_path).unlink(missing_ok=True)
    rewriter = MineRewriter(config, pool, teacher, prompter, counts, num_lines)
    result = rewrite_jsonl(job, rewriter)
    report = counts.total(result.first_line, result.end_line, config.chunk_size)
    report.num_resumed, report.pool_size, report.corpus_bad = result.num_resumed, len(pool.texts), corpus_bad
    report.save(report_path_of(out_path))
    print(report.summary(), flush=True)
    return report
