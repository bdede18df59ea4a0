"""Pair rows in and out: what can be scored in a JSONL row, and the row written back with its scores.

A row is valid when framework/data/records.py would accept its texts (the same field aliases: query
<- text_a | anchor, pos <- passage | text_b | positive, neg <- negative; `pos`/`neg` may be one string);
its other fields are not judged here. It is written back with every field as it was and
`pos_scores` / `neg_scores` (one number per entry of pos / neg, replaced in place when present, else
appended). A blank entry of pos/neg has nothing to score: it gets EMPTY_PASSAGE_SCORE, and make_shards
drops blank passages together with their score, so that number never reaches training.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from framework.data.records import ALIASES, BadRecord, load_json_line, normalize_record

SCORE_FIELDS = {"pos": "pos_scores", "neg": "neg_scores"}
EMPTY_PASSAGE_SCORE = 0.0


@dataclass(frozen=True)
class PairRow:
    """One valid input row."""

    obj: dict
    """The decoded JSON object, every field as it was."""
    query: str
    """The query text."""
    pos: tuple[str, ...]
    """Every entry of the positive field, blank ones included (their positions carry scores)."""
    neg: tuple[str, ...]
    """Every entry of the negative field (empty when the row has none)."""

    def passages(self, name: str) -> tuple[str, ...]:
        return getattr(self, name)


def parse_pair_row(raw: bytes) -> PairRow:
    """The row of one JSONL line; raises BadRecord (records.REJECT_REASONS) when it cannot be scored."""
    obj = load_json_line(raw)
    if not isinstance(obj, dict):
        raise BadRecord("not_an_object", f"a JSON {type(obj).__name__}, need an object with query and pos")
    # Only the texts are validated: scores are about to be replaced, and prompt/source/... are make_shards'.
    texts = {alias: obj[alias] for aliases in ALIASES.values() for alias in aliases if alias in obj}
    normalize_record(texts)
    field = {name: next((a for a in ALIASES[name] if a in obj), None) for name in ALIASES}
    return PairRow(obj, obj[field["query"]], _as_tuple(obj[field["pos"]]),
                   _as_tuple(obj.get(field["neg"]) if field["neg"] else None))


def _as_tuple(value) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def is_blank(text: str) -> bool:
    return not text.strip()


def score_value(score: np.float32, scale: float, where: str) -> float:
    """A score as written: scaled in float32, then the shortest decimal that reads back as that float32."""
    value = np.float32(score) * np.float32(scale)
    if not math.isfinite(value):
        raise ValueError(f"the teacher scored {where} as {float(score)} (x scale {scale}); a broken model or an "
                         "overflowing precision: check the teacher, or run it with --dtype float32")
    return float(str(value))


def render_scored(row: PairRow, scores: dict[str, list[float]]) -> bytes:
    """The row with its score fields set, other fields untouched, as one UTF-8 JSON line."""
    out = dict(row.obj)
    for name, field in SCORE_FIELDS.items():
        out[field] = scores[name]
    try:
        return json.dumps(out, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate escape in some other field: keep it escaped, as the input had it.
        return json.dumps(out).encode("ascii")


def is_scored_version(row: PairRow, out_raw: bytes) -> bool:
    """Whether `out_raw` is `row` with well-formed score fields (a line kept from an earlier run)."""
    try:
        out = json.loads(out_raw)
    except (ValueError, RecursionError):
        return False
    if not isinstance(out, dict) or _identity(out) != _identity(row.obj):
        return False
    for name, field in SCORE_FIELDS.items():
        scores = out.get(field)
        if not isinstance(scores, list) or len(scores) != len(row.passages(name)):
            return False
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
            return False
    return True


def _identity(obj: dict) -> str:
    """A row's content apart from its scores (canonical JSON, so NaN equals NaN and key order is ignored)."""
    return json.dumps({k: v for k, v in obj.items() if k not in SCORE_FIELDS.values()}, sort_keys=True)
