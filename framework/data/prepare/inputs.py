"""Input side of shard preparation: the files to read, their lines, and the lines of one part.

Inputs are JSONL files (plain or .gz), directories (every *.jsonl and *.jsonl.gz below them, plus *.txt
and *.txt.gz when preparing plain documents) or globs, read in sorted order. A run prepares one part of
the input: every N-th line (split "lines": balanced, but every part reads all input) or every N-th file
(split "files": no extra reading, for many input files).
"""
from __future__ import annotations

import glob
import gzip
import os
import re
import zlib
from pathlib import Path
from typing import Iterator, NamedTuple

INPUT_SUFFIXES = (".jsonl", ".jsonl.gz")
SPLITS = ("lines", "files")


def expand_inputs(inputs: list[str | Path], suffixes: tuple[str, ...] = INPUT_SUFFIXES) -> list[str]:
    """Files from files, directories (files ending in `suffixes` below them) and globs; sorted, no repeats."""
    found: dict[str, str] = {}
    for item in map(str, inputs):
        if os.path.isdir(item):
            matches = [str(p) for p in Path(item).rglob("*") if p.is_file() and p.name.endswith(suffixes)]
        elif glob.has_magic(item):
            matches = [m for m in glob.glob(item, recursive=True) if os.path.isfile(m)]
        elif os.path.isfile(item):
            matches = [item]
        else:
            raise ValueError(f"input {item} does not exist; pass JSONL files, directories or globs")
        if not matches:
            raise ValueError(f"input {item} matches no files (directories are searched for {suffixes})")
        for match in matches:
            found.setdefault(os.path.abspath(match), match)
    return sorted(found.values())


def default_source(path: str) -> str:
    """The file name without .gz / .jsonl / .json / .txt, made a valid source name."""
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json", ".txt"):
        name = name.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "data"


def iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without the line end) of a plain or gzip JSONL file."""
    opener = gzip.open if path.endswith(".gz") else open
    line_no = 0
    try:
        with opener(path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # a UTF-8 byte order mark, as some editors write
                yield line_no, raw.rstrip(b"\r\n")
    except (EOFError, OSError, zlib.error) as error:
        raise ValueError(f"cannot read {path} after line {line_no}: {error}; the file is truncated or not "
                         "gzip; re-create it") from None


class Chunk(NamedTuple):
    """Consecutive lines of one input file for one worker task."""

    file_index: int
    lines: list[tuple[int, bytes]]


def part_files(files: list[str], part: int, num_parts: int, split: str) -> list[str]:
    """The files this part reads: every num_parts-th with split "files", else all of them."""
    if split == "files":
        return files[part::num_parts]
    return files


def part_chunks(files: list[str], part: int, num_parts: int, split: str, chunk_size: int) -> Iterator[Chunk]:
    """This part's lines of `files` (already part_files), in chunks of at most chunk_size lines of one file."""
    counter = 0
    for file_index, path in enumerate(files):
        lines: list[tuple[int, bytes]] = []
        for line_no, raw in iter_lines(path):
            # Lines are dealt out across all files, so parts stay balanced however files differ in size.
            mine = split == "files" or counter % num_parts == part
            counter += 1
            if not mine:
                continue
            lines.append((line_no, raw))
            if len(lines) == chunk_size:
                yield Chunk(file_index, lines)
                lines = []
        if lines:
            yield Chunk(file_index, lines)
