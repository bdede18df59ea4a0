"""Resuming an interrupted run: OUT.state.json records the options and input, kept lines are re-checked.

A partly written chunk is redone, so a resumed file equals an uninterrupted one byte for byte.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from .config import BadRow, MiningConfig, MiningReport
from .rows import iter_lines, neg_field, parse_row


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_path_of(output_path: Path) -> Path:
    return output_path.with_name(output_path.name + ".state.json")


def run_state(input_path: Path, corpus_path: Path | None, config: MiningConfig) -> dict:
    """What must be equal for an output to be resumed: input and corpus content, and every option."""
    settings = asdict(config)
    settings["model"] = str(Path(config.model).resolve())
    state = {"input_sha256": sha256_of(input_path), "corpus_sha256": corpus_path and sha256_of(corpus_path),
             "settings": settings}
    return json.loads(json.dumps(state))


def _check_state(output_path: Path, state: dict) -> None:
    path = state_path_of(output_path)
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if old == state:
        return
    if not isinstance(old, dict):
        why = f"{path.name} is missing or unreadable"
    else:
        changed = [name for key, name in (("input_sha256", "input content"), ("corpus_sha256", "--corpus"))
                   if old.get(key) != state[key]]
        changed += [f"--{key.replace('_', '-')}" for key, value in state["settings"].items()
                    if (old.get("settings") or {}).get(key) != value]
        why = f"it was written with a different {', '.join(changed)}"
    raise ValueError(f"{output_path} exists but cannot be resumed: {why}; pass --overwrite to start again, "
                     "or choose another --out")


def _identity(row: dict, neg: str) -> str:
    """A row's content apart from what mining rewrites (canonical JSON, so NaN equals NaN)."""
    return json.dumps({k: v for k, v in row.items() if k not in (neg, "neg_scores")}, sort_keys=True)


def _check_kept_line(line: int, in_raw: bytes, out_raw: bytes, config: MiningConfig, report: MiningReport) -> bool:
    """Whether output line `line` is input line `line` after mining; counts it in the report."""
    try:
        row, _ = parse_row(in_raw)
    except BadRow as error:
        report.add_bad(error, line)
        return out_raw == in_raw
    try:
        out = json.loads(out_raw)
    except (ValueError, RecursionError):
        return False
    neg = neg_field(row)
    if not isinstance(out, dict) or not isinstance(out.get(neg), list) or _identity(out, neg) != _identity(row, neg):
        return False
    report.add_mined(len(out[neg]), config.num_neg)
    report.num_neg_scores_dropped += "neg_scores" in row
    return True


def resume_point(input_path: Path, output_path: Path, state: dict, config: MiningConfig, overwrite: bool,
                 report: MiningReport) -> int:
    """Lines of the output to keep (0 for a fresh start); checks and truncates an existing output."""
    if overwrite or not output_path.exists():
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_bytes(b"")
        state_path_of(output_path).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        return 0
    _check_state(output_path, state)
    with output_path.open("rb") as out:
        num_complete = sum(1 for line in out if line.endswith(b"\n"))
    if num_complete > report.num_lines:
        raise ValueError(f"{output_path} has {num_complete} lines, its input only {report.num_lines}; pass "
                         "--overwrite to start again")
    # Chunks are the unit of retrieval: redoing a partly written one keeps batches, hence results, identical.
    keep = num_complete if num_complete == report.num_lines else num_complete - num_complete % config.chunk_size
    offset = 0
    with output_path.open("rb") as out:
        for line, in_raw, out_raw in zip(range(1, keep + 1), iter_lines(input_path), out):
            if not _check_kept_line(line, in_raw, out_raw[:-1], config, report):
                raise ValueError(f"{output_path} line {line} is not input line {line} with mined negatives (another "
                                 "input, or edited); pass --overwrite to start again, or choose another --out")
            offset += len(out_raw)
    with output_path.open("r+b") as out:
        out.truncate(offset)
    report.num_resumed = keep
    return keep
