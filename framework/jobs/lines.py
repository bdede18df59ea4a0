"""Reading input lines as raw bytes (plain or .gz) and fingerprinting files."""
from __future__ import annotations

import gzip
import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path


def iter_lines(path: Path, start: int = 0) -> Iterator[bytes]:
    """Raw lines from 0-based line `start` on, without their newline; .gz files are decompressed.

    Bytes, not text: a line that is not UTF-8 is still a line (a bad row copied through unchanged).
    """
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for line in itertools.islice(handle, start, None):
            yield line[:-1] if line.endswith(b"\n") else line


def count_lines(path: Path) -> int:
    """Lines of a file; a last line without a newline counts."""
    return sum(1 for _ in iter_lines(path))


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (compressed bytes for .gz)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
