"""Join the part outputs of a split rewrite (--part I --num-parts N) into the one output, in line order.

Parts are contiguous runs of whole chunks (rewrite.part_lines), so the joined file is byte for byte
what one run without parts writes. Every part must be complete and come from the same input and
settings; the merged output gets the state of a finished single run, so rerunning the job without
parts finds nothing left to do. The part files are removed once the merged file is in place.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from framework.jobs.rewrite import part_lines, part_path, read_state, state_path_of, write_state

SHARED_KEYS = ("format", "version", "input_sha256", "num_lines", "chunk_size", "settings")


def merge_parts(output_path: Path, num_parts: int) -> Path:
    """Concatenate the `num_parts` part files of `output_path` into it; returns output_path."""
    output_path = Path(output_path)
    if num_parts < 2:
        raise ValueError(f"num_parts={num_parts}: merging needs the parts of a split run (2 or more)")
    paths = [part_path(output_path, part, num_parts) for part in range(num_parts)]
    states = [_part_state(path, part, num_parts) for part, path in enumerate(paths)]
    for part, state in enumerate(states[1:], start=1):
        differ = [key for key in SHARED_KEYS if state.get(key) != states[0].get(key)]
        if differ:
            raise ValueError(f"{paths[part]} and {paths[0]} were written with different {', '.join(differ)} "
                             "(another input or other options); rerun the parts with the same command")
    for part, (path, state) in enumerate(zip(paths, states)):
        first, end = part_lines(state["num_lines"], state["chunk_size"], part, num_parts)
        if state.get("lines") != [first, end]:
            raise ValueError(f"{state_path_of(path)} records lines {state.get('lines')}, part {part} of {num_parts} "
                             f"must hold [{first}, {end}); rerun that part with --overwrite")
        with path.open("rb") as handle:
            num_complete = sum(1 for line in handle if line.endswith(b"\n"))
        if num_complete != end - first or path.stat().st_size and not _ends_with_newline(path):
            raise ValueError(f"{path} holds {num_complete} of its {end - first} lines: part {part} has not "
                             f"finished; rerun it (--part {part} --num-parts {num_parts}) and merge again")
    _concatenate(paths, output_path)
    state = {**states[0], "part": [0, 1], "lines": [0, states[0]["num_lines"]]}
    write_state(output_path, state)
    for path in paths:
        path.unlink()
        state_path_of(path).unlink()
    return output_path


def _part_state(path: Path, part: int, num_parts: int) -> dict:
    if not path.exists():
        raise ValueError(f"{path} is missing: part {part} of {num_parts} has not run; run it (--part {part} "
                         f"--num-parts {num_parts}) and merge again")
    state = read_state(path)
    if state is None or not isinstance(state.get("num_lines"), int) or not isinstance(state.get("chunk_size"), int):
        raise ValueError(f"{state_path_of(path)} is missing or unreadable; rerun part {part} with --overwrite")
    return state


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _concatenate(paths: list[Path], output_path: Path) -> None:
    """Into a temporary file renamed at the end: a kill leaves the parts intact and no half output."""
    tmp = output_path.with_name(output_path.name + ".merging")
    with tmp.open("wb") as out:
        for path in paths:
            with path.open("rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
    os.replace(tmp, output_path)
