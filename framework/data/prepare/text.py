"""Plain documents for the pre-training stage (RetroMAE): their records, their inputs, and kind detection.

A text shard sample has the same members as a pair sample (framework/data/format.py), with

  <key>.json  {"text": str, "source": str, "lang": str}      # lang optional
  <key>.tok   optional ids of the one text (specials included), encode_token_ids([ids])

Inputs: JSONL rows {"text": ...} ("content" and "contents", as in WuDao and Pyserini dumps, are accepted
too; optional "source" and "lang"; other fields are ignored), or plain .txt / .txt.gz files with one
document per line. Blank lines of a .txt file separate documents and are not records; a blank or broken
JSONL row is a rejected record, counted by reason as for pairs (records.REJECT_REASONS).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from framework.data.prepare.inputs import iter_lines
from framework.data.records import SOURCE_PATTERN, BadRecord, RecordConfig, load_json_line

KINDS = ("auto", "pairs", "text")
TEXT_SUFFIXES = (".txt", ".txt.gz")
TEXT_FIELDS = ("text", "content", "contents")
PAIR_FIELDS = ("query", "text_a", "anchor")
# Rows a kind detection looks at in each JSONL file before giving up (broken first rows are possible).
DETECT_ROWS = 100


@dataclass(frozen=True)
class TextRecord:
    """One normalised document (the `.json` member of a text shard sample, plus its repairs)."""

    text: str
    """The document (non-empty)."""
    source: str | None = None
    """Data source name (dot- and slash-free)."""
    lang: str | None = None
    """Language tag."""
    fixes: tuple[str, ...] = ()
    """Repairs made while normalising ("too_long"); not serialised."""

    def texts(self) -> list[str]:
        """The texts of the sample, in `.tok` order: just the document."""
        return [self.text]

    def to_json(self) -> dict:
        out: dict = {"text": self.text}
        for name in ("source", "lang"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def _cut(text: str, config: RecordConfig) -> tuple[str, tuple[str, ...]]:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRecord("non_utf8", "text holds a lone surrogate escape") from None
    if not text.strip():
        raise BadRecord("empty_text", "text is empty")
    return (text[:config.max_chars], ("too_long",)) if len(text) > config.max_chars else (text, ())


def normalize_text_record(obj, config: RecordConfig = RecordConfig()) -> TextRecord:
    """Check a decoded text row and return its normalised form; raises BadRecord naming what is wrong."""
    if not isinstance(obj, dict):
        raise BadRecord("not_an_object", f"got a JSON {type(obj).__name__}, need an object with text")
    present = [name for name in TEXT_FIELDS if name in obj]
    if len(present) > 1:
        raise BadRecord("conflicting_fields", f"fields {present} all give the text; keep one")
    if not present:
        raise BadRecord("missing_field", f"no text (accepted names: {', '.join(TEXT_FIELDS)})")
    value = obj[present[0]]
    if not isinstance(value, str):
        raise BadRecord("wrong_type", f"{present[0]} is a JSON {type(value).__name__}, need a string")
    text, fixes = _cut(value, config)
    extra = {}
    for name in ("source", "lang"):
        extra[name] = obj.get(name)
        if extra[name] is not None and not isinstance(extra[name], str):
            raise BadRecord("wrong_type", f"{name} is a JSON {type(extra[name]).__name__}, need a string")
    if extra["source"] is not None and not SOURCE_PATTERN.fullmatch(extra["source"]):
        raise BadRecord("bad_source", f"source {extra['source']!r} may only hold letters, digits, '_' and '-'")
    return TextRecord(text, **extra, fixes=fixes)


def parse_text_row(payload: bytes, config: RecordConfig = RecordConfig()) -> TextRecord:
    """One JSONL line -> TextRecord; raises BadRecord."""
    return normalize_text_record(load_json_line(payload), config)


def parse_text_line(payload: bytes, config: RecordConfig = RecordConfig()) -> TextRecord | None:
    """One .txt line -> TextRecord, or None for a blank line (a separator, not a record)."""
    text = _decode(payload)
    if not text.strip():
        return None
    text, fixes = _cut(text, config)
    return TextRecord(text, fixes=fixes)


def _decode(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRecord("non_utf8", f"invalid UTF-8 byte at offset {error.start}") from None


def validate_text_record(obj) -> dict:
    """normalize_text_record with default limits, returning the `.json` dict (the text stream's validator)."""
    return normalize_text_record(obj).to_json()


def is_text_file(path: str) -> bool:
    return path.endswith(TEXT_SUFFIXES)


def file_kind(path: str) -> str:
    """"text" for .txt files and JSONL files whose first readable object is a text row, else "pairs"."""
    if is_text_file(path):
        return "text"
    for line_no, raw in iter_lines(path):
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            return "text" if any(f in obj for f in TEXT_FIELDS) and not any(f in obj for f in PAIR_FIELDS) \
                else "pairs"
        if line_no >= DETECT_ROWS:
            break
    return "pairs"


def resolve_kind(kind: str, files: list[str]) -> str:
    """The kind of a run: `kind` itself, or with "auto" the one kind all files agree on."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: use one of {', '.join(KINDS)}")
    if kind != "auto" or not files:
        return "pairs" if kind == "auto" else kind
    kinds = {path: file_kind(path) for path in files}
    if len(set(kinds.values())) > 1:
        example = {k: next(p for p, v in kinds.items() if v == k) for k in sorted(set(kinds.values()))}
        raise ValueError(f"inputs mix query/passage pairs ({example['pairs']}) and plain documents "
                         f"({example['text']}); prepare them in separate runs (--kind pairs / --kind text)")
    return next(iter(kinds.values()))
