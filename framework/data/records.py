"""Validate and normalise one training record; shared by tools/make_shards.py and the training stream.

Accepted input (one JSON object per JSONL line, or a shard's `.json` member):

  reference rows  {"query": str, "pos": [str, ...], "neg": [str, ...],            # neg optional
                   "pos_scores": [num, ...], "neg_scores": [num, ...],            # optional
                   "prompt": str, "type": str, "source": str, "lang": str}        # optional
  pairs           `pos` (and `neg`) may be a single string instead of a list; the field aliases
                  query <- "text_a" | "anchor", pos <- "passage" | "text_b" | "positive",
                  neg <- "negative" cover the usual pair dumps (title-body, translations, ...).
Other fields are ignored. The output is always the reference form with lists (format.py).

A record that cannot be used raises `BadRecord(reason, detail)`; `reason` is one of REJECT_REASONS
(stable strings that reports count by), or at training time one of STREAM_REASONS (damage found in a
shard after preparation: the stream counts those in its metrics, `records_<reason>`). Repairs that keep the record are listed in `Record.fixes`
(FIX_REASONS): over-long texts are cut to `max_chars` ("too_long"), empty positives and negatives are
dropped with their scores ("empty_pos_dropped", "empty_neg_dropped").
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

REJECT_REASONS = ("blank_line", "non_utf8", "malformed_json", "not_an_object", "missing_field", "conflicting_fields",
                  "wrong_type", "empty_text", "no_positive", "scores_length_mismatch", "bad_score",
                  "bad_source")
# What the training stream counts besides REJECT_REASONS (framework/data/stream.py):
#   corrupt_shard       samples lost where a tar cannot be read on (truncated or damaged file)
#   missing_samples     samples lost because a shard holds fewer than its manifest entry says
#   missing_member      a sample without its .json member
#   bad_tokens          a .tok member that does not decode, or holds a list per text of another count
#   token_out_of_vocab  a token id outside the tokenizer's vocabulary (shards of another tokenizer?)
#   undecodable_sample  any other error turning the sample into a batch row (the detail says which)
STREAM_REASONS = ("corrupt_shard", "missing_samples", "missing_member", "bad_tokens", "token_out_of_vocab",
                  "undecodable_sample")
FIX_REASONS = ("too_long", "empty_pos_dropped", "empty_neg_dropped")
ALIASES = {"query": ("query", "text_a", "anchor"), "pos": ("pos", "passage", "text_b", "positive"),
           "neg": ("neg", "negative")}
OPTIONAL_STRINGS = ("prompt", "type", "source", "lang")
# Source names become sample keys and file names (format.sample_key): no dots, slashes or spaces.
SOURCE_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


class BadRecord(ValueError):
    """A record that cannot be used; `reason` is a stable string from REJECT_REASONS or STREAM_REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in REJECT_REASONS or reason in STREAM_REASONS, f"unknown reject reason {reason!r}"
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RecordConfig:
    """Limits applied while normalising records."""

    max_chars: int = 100_000
    """Texts longer than this many characters are cut to it and counted as "too_long" (not rejected)."""

    def __post_init__(self) -> None:
        if self.max_chars < 1:
            raise ValueError(f"max_chars={self.max_chars}: use a positive character count (e.g. 100000)")


@dataclass(frozen=True)
class Record:
    """One normalised training record (the `.json` member of a shard sample, plus its repairs)."""

    query: str
    """The query text (non-empty)."""
    pos: tuple[str, ...]
    """Positive passages (at least one, none empty)."""
    neg: tuple[str, ...] = ()
    """Negative passages (may be empty)."""
    pos_scores: tuple[float, ...] | None = None
    """Teacher scores of the positives, same length as `pos`."""
    neg_scores: tuple[float, ...] | None = None
    """Teacher scores of the negatives, same length as `neg`."""
    prompt: str | None = None
    """Instruction for the query (used by the trainer, not part of the query text)."""
    type: str | None = None
    """Task type tag of the reference format."""
    source: str | None = None
    """Data source name (dot- and slash-free)."""
    lang: str | None = None
    """Language tag."""
    fixes: tuple[str, ...] = ()
    """Repairs made while normalising (FIX_REASONS, one entry per repair); not serialised."""

    def texts(self) -> list[str]:
        """Query, positives, negatives: the order of a shard's `.tok` member."""
        return [self.query, *self.pos, *self.neg]

    def to_json(self) -> dict:
        """The shard `.json` form: lists, optional fields only when present."""
        out: dict = {"query": self.query, "pos": list(self.pos), "neg": list(self.neg)}
        for name in ("pos_scores", "neg_scores"):
            if getattr(self, name) is not None:
                out[name] = list(getattr(self, name))
        for name in OPTIONAL_STRINGS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def parse_record(payload: bytes | str, config: RecordConfig = RecordConfig()) -> Record:
    """Decode one JSON text (a JSONL line or a `.json` member) and normalise it; raises BadRecord."""
    return normalize_record(load_json_line(payload), config)


def load_json_line(payload: bytes | str):
    """The JSON value of one line (UTF-8 bytes or text); raises BadRecord for non-UTF-8, blank or malformed."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadRecord("non_utf8", f"invalid UTF-8 byte at offset {error.start}") from None
    if not payload.strip():
        raise BadRecord("blank_line", "no JSON on this line")
    try:
        obj = json.loads(payload)
    except json.JSONDecodeError as error:
        raise BadRecord("malformed_json", f"{error.msg} at column {error.colno}") from None
    except RecursionError:
        raise BadRecord("malformed_json", "nesting too deep") from None
    return obj


def normalize_record(obj, config: RecordConfig = RecordConfig()) -> Record:
    """Check a decoded record and return its normalised form; raises BadRecord naming what is wrong."""
    if not isinstance(obj, dict):
        raise BadRecord("not_an_object", f"got a JSON {type(obj).__name__}, need an object with query and pos")
    fixes: list[str] = []
    query = _text("query", _field(obj, "query", required=True), config, fixes)
    if not query.strip():
        raise BadRecord("empty_text", "query is empty")
    pos = _texts("pos", _field(obj, "pos", required=True), config, fixes)
    neg = _texts("neg", _field(obj, "neg", required=False) or [], config, fixes)
    pos_scores = _scores(obj, "pos_scores", len(pos))
    neg_scores = _scores(obj, "neg_scores", len(neg))
    pos, pos_scores = _drop_empty("pos", pos, pos_scores, fixes)
    neg, neg_scores = _drop_empty("neg", neg, neg_scores, fixes)
    if not pos:
        raise BadRecord("no_positive", "pos has no non-empty passage")
    extra = {name: _optional_string(obj, name) for name in OPTIONAL_STRINGS}
    if extra["source"] is not None and not SOURCE_PATTERN.fullmatch(extra["source"]):
        raise BadRecord("bad_source", f"source {extra['source']!r} may only hold letters, digits, '_' and '-'")
    return Record(query, pos, neg, pos_scores, neg_scores, **extra, fixes=tuple(fixes))


def validate_record(obj) -> dict:
    """normalize_record with default limits, returning the `.json` dict."""
    return normalize_record(obj).to_json()


def check_shard_record(obj) -> dict:
    """The stream's validator: what a batch relies on, checked without normalising again.

    make_shards wrote the `.json` member from a normalised record, so re-normalising every sample at
    training time (re-encoding each text to find lone surrogates) only cost time: this checks the
    structure the stream reads (a query string, a non-empty list of positive strings, negative strings,
    finite scores of matching lengths) and raises BadRecord with the reasons normalize_record uses.
    """
    if not isinstance(obj, dict):
        raise BadRecord("not_an_object", f"got a JSON {type(obj).__name__}, need an object with query and pos")
    query, pos, neg = obj.get("query"), obj.get("pos"), obj.get("neg", [])
    if query is None or pos is None:
        raise BadRecord("missing_field", "no query" if query is None else "no pos")
    if not isinstance(query, str) or not isinstance(pos, list) or not isinstance(neg, list) \
            or not set(map(type, pos + neg)) <= {str}:
        raise BadRecord("wrong_type", "query must be a string, pos and neg lists of strings")
    if not query.strip():
        raise BadRecord("empty_text", "query is empty")
    if not pos:
        raise BadRecord("no_positive", "pos is empty")
    for name, texts in (("pos_scores", pos), ("neg_scores", neg)):
        if name in obj:
            _scores(obj, name, len(texts))
    return obj


def _field(obj: dict, name: str, required: bool):
    present = [alias for alias in ALIASES[name] if alias in obj]
    if len(present) > 1:
        raise BadRecord("conflicting_fields", f"fields {present} all give {name}; keep one")
    if not present:
        if required:
            raise BadRecord("missing_field", f"no {name} (accepted names: {', '.join(ALIASES[name])})")
        return None
    return obj[present[0]]


def _text(name: str, value, config: RecordConfig, fixes: list[str]) -> str:
    if not isinstance(value, str):
        raise BadRecord("wrong_type", f"{name} is a JSON {type(value).__name__}, need a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # json.loads accepts lone surrogate escapes like "\ud800"; they cannot be written back as UTF-8.
        raise BadRecord("non_utf8", f"{name} holds a lone surrogate escape") from None
    if len(value) > config.max_chars:
        fixes.append("too_long")
        value = value[:config.max_chars]
    return value


def _texts(name: str, value, config: RecordConfig, fixes: list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise BadRecord("wrong_type", f"{name} is a JSON {type(value).__name__}, need a list of strings")
    return tuple(_text(f"{name}[{i}]", item, config, fixes) for i, item in enumerate(value))


def _scores(obj: dict, name: str, expected: int) -> tuple[float, ...] | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRecord("wrong_type", f"{name} is a JSON {type(value).__name__}, need a list of numbers")
    if len(value) != expected:
        raise BadRecord("scores_length_mismatch", f"{name} has {len(value)} scores for {expected} passages")
    for i, score in enumerate(value):
        # bool is an int subclass in Python, but true/false as a score is a data bug.
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise BadRecord("wrong_type", f"{name}[{i}] is a JSON {type(score).__name__}, need a number")
        if not math.isfinite(score):
            raise BadRecord("bad_score", f"{name}[{i}] is {score}, need a finite number")
    return tuple(float(s) for s in value)


def _drop_empty(name: str, texts: tuple[str, ...], scores: tuple[float, ...] | None, fixes: list[str]):
    keep = [i for i, text in enumerate(texts) if text.strip()]
    if len(keep) == len(texts):
        return texts, scores
    fixes.extend([f"empty_{name}_dropped"] * (len(texts) - len(keep)))
    kept_scores = None if scores is None else tuple(scores[i] for i in keep)
    return tuple(texts[i] for i in keep), kept_scores


def _optional_string(obj: dict, name: str) -> str | None:
    value = obj.get(name)
    if value is None or isinstance(value, str):
        return value
    raise BadRecord("wrong_type", f"{name} is a JSON {type(value).__name__}, need a string")
