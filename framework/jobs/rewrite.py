"""Rewrite a JSONL file line by line, resumably: after kill -9 a rerun gives the uninterrupted file's bytes.

The output is written a chunk of `chunk_size` lines at a time. Chunks sit at fixed line numbers
(chunk k holds 0-based lines k*C .. k*C+C-1), parts are whole runs of chunks, and a rewriter must
make a chunk's output from the chunk alone: then a partly written chunk redone after a crash, a
resumed run, and parts joined by `merge_parts` all equal one uninterrupted run byte for byte (teachers
batch a chunk's pairs together, so the chunk is also the unit of numerical identity).

Next to the output, OUT.state.json records what the output depends on: the input's SHA-256, the
caller's settings, the chunk size and the part's line range. A rerun keeps the output only when they
are equal, re-checks every kept line with the rewriter (which counts it, so reports cover the whole
file), truncates the partly written chunk and appends the rest.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from framework.jobs.lines import count_lines, iter_lines, sha256_of
from framework.jobs.progress import Progress

STATE_FORMAT = "jsonl-rewrite"
STATE_VERSION = 1


class LineRewriter(Protocol):
    """What a tool supplies: the output lines of a chunk, and a check of lines kept from an earlier run."""

    def rewrite(self, first_line: int, raws: list[bytes], progress: Progress) -> list[bytes]:
        """Output lines (no newline) of consecutive input lines starting at 1-based `first_line`.

        Must depend only on these lines (and the settings), never on where the run started.
        """

    def check_kept(self, line: int, in_raw: bytes, out_raw: bytes) -> bool:
        """Whether `out_raw`, kept from an earlier run, is this rewriter's output for input line `line`;
        when it is, count it as if it had just been written."""


@dataclass(frozen=True)
class RewriteJob:
    """One rewrite of one input file, or of one part of it."""

    input_path: Path
    """The JSONL file read (plain or .gz)."""
    output_path: Path
    """The output file; part I of N writes part_path(output_path, I, N) and merge_parts joins them."""
    settings: dict = field(default_factory=dict)
    """JSON-able options the output depends on (model, lengths, device, ...): must match to resume."""
    chunk_size: int = 1024
    """Lines rewritten and written together: the unit of resuming (and of a teacher's batching)."""
    part: int = 0
    """Which part of the input this run rewrites (0-based)."""
    num_parts: int = 1
    """How many parts the input is split into (contiguous runs of whole chunks)."""
    overwrite: bool = False
    """Start again instead of resuming an existing output."""
    progress_seconds: float = 10.0
    """Seconds between progress lines."""
    item_name: str = "lines"
    """Unit of the rate in progress lines (what the rewriter counts with Progress.add_items)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_path", Path(self.input_path))
        object.__setattr__(self, "output_path", Path(self.output_path))
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size}: use a positive number of lines, e.g. 1024")
        if not 0 <= self.part < self.num_parts:
            raise ValueError(f"part={self.part} with num_parts={self.num_parts}: use 0 <= part < num_parts")
        if self.output_path.resolve() == self.input_path.resolve():
            raise ValueError(f"output {self.output_path} is the input file; write to another path")

    @property
    def part_output(self) -> Path:
        return part_path(self.output_path, self.part, self.num_parts)


@dataclass(frozen=True)
class RewriteResult:
    """What one run of a job did."""

    output_path: Path
    """The file written (the part file of a split run)."""
    num_lines: int
    """Lines of the whole input."""
    first_line: int
    """0-based first input line of this part."""
    end_line: int
    """0-based input line this part stops before."""
    num_resumed: int
    """Lines kept from an earlier run."""


def part_path(output_path: Path, part: int, num_parts: int) -> Path:
    """The file part `part` of `num_parts` writes; the output itself when there is one part."""
    output_path = Path(output_path)
    if num_parts == 1:
        return output_path
    return output_path.with_name(f"{output_path.name}.part{part:05d}-of-{num_parts:05d}")


def state_path_of(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".state.json")


def part_lines(num_lines: int, chunk_size: int, part: int, num_parts: int) -> tuple[int, int]:
    """0-based [first, end) input lines of a part: a contiguous run of whole chunks (some may be empty)."""
    num_chunks = -(-num_lines // chunk_size)
    first = part * num_chunks // num_parts * chunk_size
    end = (part + 1) * num_chunks // num_parts * chunk_size
    return min(first, num_lines), min(end, num_lines)


def rewrite_jsonl(job: RewriteJob, rewriter: LineRewriter) -> RewriteResult:
    """Run (or resume) `job`; returns where it wrote and how much it kept."""
    num_lines = count_lines(job.input_path)
    first, end = part_lines(num_lines, job.chunk_size, job.part, job.num_parts)
    state = _state(job, num_lines, first, end)
    out_path = job.part_output
    keep = _resume_point(job, rewriter, state, first, end)
    label = f"part {job.part}/{job.num_parts}: " if job.num_parts > 1 else ""
    progress = Progress(end - first, keep, job.item_name, job.progress_seconds, label)
    with out_path.open("ab") as out:
        for start, raws in _chunks(job.input_path, first + keep, end, job.chunk_size):
            lines = rewriter.rewrite(start + 1, raws, progress)
            assert len(lines) == len(raws), "a rewriter must return one output line per input line"
            out.write(b"".join(line + b"\n" for line in lines))
            out.flush()
            progress.add_lines(len(raws))
    if end - first > keep:
        progress.maybe_print(force=True)
    return RewriteResult(out_path, num_lines, first, end, keep)


def _chunks(path: Path, start: int, end: int, size: int):
    """(0-based first line, raw lines) of the chunks of lines [start, end)."""
    lines = iter_lines(path, start)
    while start < end:
        chunk = [raw for _, raw in zip(range(min(size, end - start)), lines)]
        yield start, chunk
        start += len(chunk)


def _state(job: RewriteJob, num_lines: int, first: int, end: int) -> dict:
    state = {"format": STATE_FORMAT, "version": STATE_VERSION, "input_sha256": sha256_of(job.input_path),
             "num_lines": num_lines, "chunk_size": job.chunk_size, "part": [job.part, job.num_parts],
             "lines": [first, end], "settings": job.settings}
    try:
        return json.loads(json.dumps(state, allow_nan=False))  # tuples become lists, as they come back
    except (TypeError, ValueError) as error:
        raise ValueError(f"RewriteJob.settings must be plain JSON values (str, number, bool, list, dict): {error}") \
            from None


def write_state(path: Path, state: dict) -> None:
    """Atomically, so that a kill leaves the old state or the new one, never half of one."""
    state_path = state_path_of(path)
    tmp = state_path.with_name(state_path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, state_path)


def read_state(path: Path) -> dict | None:
    try:
        state = json.loads(state_path_of(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _resume_point(job: RewriteJob, rewriter: LineRewriter, state: dict, first: int, end: int) -> int:
    """Lines of the part's output to keep (0 for a fresh start); checks and truncates an existing output."""
    out_path = job.part_output
    if job.overwrite or not out_path.exists():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_state(out_path, state)  # state first: a kill before the output exists means a fresh start
        out_path.write_bytes(b"")
        return 0
    _check_state(out_path, read_state(out_path), state)
    with out_path.open("rb") as out:
        num_complete = sum(1 for line in out if line.endswith(b"\n"))
    if num_complete > end - first:
        raise ValueError(f"{out_path} has {num_complete} lines, its part of the input only {end - first}; pass "
                         "--overwrite to start again")
    # A partly written chunk is redone: its lines were made together, so redoing it alone keeps the bytes.
    keep = num_complete if num_complete == end - first else num_complete - num_complete % job.chunk_size
    offset = 0
    with out_path.open("rb") as out:
        kept = zip(range(first + 1, first + keep + 1), iter_lines(job.input_path, first), out)
        for line, in_raw, out_raw in kept:
            if not rewriter.check_kept(line, in_raw, out_raw[:-1]):
                raise ValueError(f"{out_path} line {line - first} is not what input line {line} becomes (another "
                                 "input, or edited); pass --overwrite to start again, or choose another output")
            offset += len(out_raw)
    with out_path.open("r+b") as out:
        out.truncate(offset)
    return keep


def _check_state(out_path: Path, old: dict | None, state: dict) -> None:
    if old == state:
        return
    state_file = state_path_of(out_path).name
    if old is None:
        why = f"{state_file} is missing or unreadable"
    else:
        names = {"input_sha256": "input content", "num_lines": "input length", "chunk_size": "--chunk-size",
                 "part": "--part/--num-parts", "lines": "--part/--num-parts", "format": "format", "version": "format"}
        changed = {name for key, name in names.items() if old.get(key) != state[key]}
        old_settings = old.get("settings") if isinstance(old.get("settings"), dict) else {}
        changed |= {f"--{key.replace('_', '-')}" for key in state["settings"].keys() | old_settings.keys()
                    if old_settings.get(key) != state["settings"].get(key)}
        why = f"it was written with a different {', '.join(sorted(changed))}"
    raise ValueError(f"{out_path} exists but cannot be resumed: {why}; pass --overwrite to start again, or "
                     "choose another output")
