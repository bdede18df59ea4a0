"""Input rows and candidate pools: parsing a JSONL line, rendering it back (with scores), and the pool.

A row is parsed by framework/data/records.py, as tools/make_shards.py parses it (the same aliases,
reasons and checks), so a row mined here is one the shards accept; texts are not cut (max_chars), since
mining writes them back.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from framework.data.records import ALIASES, BadRecord, Record, RecordConfig, load_json_line, normalize_record
from framework.data.sources import RowPrompter
from framework.jobs import iter_lines
from framework.teacher.rows import EMPTY_PASSAGE_SCORE
from .config import BadRow, MiningConfig
from .report import MiningReport

CORPUS_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


def text_ok(value) -> bool:
    """A usable passage: a non-blank string that can be written as UTF-8 (json allows lone surrogates)."""
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Mining writes the row's texts back as they were: no cutting of long texts.
UNCUT = RecordConfig(max_chars=sys.maxsize)


def parse_row(raw: bytes) -> tuple[dict, Record]:
    """(the row as read, its normalised record) of one input line; raises BadRow naming what is wrong."""
    try:
        row = load_json_line(raw)
        return row, normalize_record(row, UNCUT)
    except BadRecord as error:
        raise BadRow(error.reason, error.detail) from None


def neg_field(row: dict) -> str:
    """The field that holds the row's negatives ("neg", or its alias "negative"), "neg" when none does."""
    return next((name for name in ALIASES["neg"] if name in row), "neg")


def pos_entries(row: dict) -> list[str]:
    """Every entry of the row's positive field as written (blank ones included: scores follow entries)."""
    value = row[next(name for name in ALIASES["pos"] if name in row)]
    return [value] if isinstance(value, str) else list(value)


def render_row(row: dict, negatives: list[str], report: MiningReport,
               scores: tuple[list[float], list[float]] | None = None) -> bytes:
    """The row with its negatives replaced (in place when present, else appended as `neg`); with `scores`
    (pos_scores of the record's non-blank positives, neg_scores of `negatives`) both score fields are set,
    a blank positive getting EMPTY_PASSAGE_SCORE as tools/score_pairs.py gives it, else stale neg_scores
    are dropped."""
    out = dict(row)
    if scores is not None:
        pos_scores = iter(scores[0])
        out["pos_scores"] = [next(pos_scores) if text.strip() else EMPTY_PASSAGE_SCORE for text in pos_entries(row)]
        out["neg_scores"] = list(scores[1])
        report.num_scores_written += 1
    elif "neg_scores" in out:
        del out["neg_scores"]
        report.num_neg_scores_dropped += 1
    out[neg_field(row)] = negatives
    try:
        return json.dumps(out, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate escape in some other field: keep it escaped, as the input had it.
        return json.dumps(out).encode("ascii")


class Pool:
    """Distinct candidate passages; duplicates are found after stripping surrounding whitespace. Each keeps
    the text written back (`texts`) and the text the retriever encodes (`shown`: with its passage prompt)."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.shown: list[str] = []
        self.id_of: dict[str, int] = {}

    def add(self, text: str, shown: str | None = None) -> None:
        if text_ok(text) and text.strip() not in self.id_of:
            self.id_of[text.strip()] = len(self.texts)
            self.texts.append(text)
            self.shown.append(text if shown is None else shown)

    def ids_of(self, texts: list[str]) -> set[int]:
        return {self.id_of[t.strip()] for t in texts if t.strip() in self.id_of}


def scan_input(path: Path, config: MiningConfig, fill_pool: bool, prompter: RowPrompter | None = None
               ) -> tuple[int, Pool]:
    """(line count, pool of the file's positives, each shown with its row's passage prompt) in one pass;
    bad rows are counted later."""
    pool, num_lines = Pool(), 0
    for raw in iter_lines(path):
        num_lines += 1
        if not fill_pool:
            continue
        try:
            row, record = parse_row(raw)
        except BadRow:
            continue
        for text in record.pos + (record.neg if config.pool_with_neg else ()):
            pool.add(text, None if prompter is None else prompter.passage(row, text))
    return num_lines, pool


def read_corpus(path: Path, bad: dict[str, int], prompter: RowPrompter | None = None) -> Pool:
    """Pool from --corpus: JSONL strings or {"text": ...} objects, or plain lines; bad lines are counted in
    `bad` by reason ("unreadable", "no_text"). Passages are shown with the passage prompt of their object's
    "source" (else --source, else the default)."""
    pool, is_jsonl = Pool(), path.name.endswith(CORPUS_JSONL_SUFFIXES)
    for raw in iter_lines(path):
        try:
            text = raw.decode("utf-8")
            item = json.loads(text) if is_jsonl else text.removesuffix("\r")
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            bad["unreadable"] = bad.get("unreadable", 0) + 1
            continue
        row = item if isinstance(item, dict) else {}
        item = item.get("text") if isinstance(item, dict) else item
        if not text_ok(item):
            bad["no_text"] = bad.get("no_text", 0) + 1
            continue
        pool.add(item, None if prompter is None else prompter.passage(row, item))
    if not pool.texts:
        raise ValueError(f"corpus {path} holds no usable passage; give one passage per line (or JSONL with 'text')")
    return pool
