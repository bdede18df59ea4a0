"""Read samples out of WebDataset tar shards by position, surviving corrupt or truncated tars.

A sample is a dict {"__key__": str, "__shard__": path, "__index__": int, <ext>: bytes}. Members of one
sample are consecutive in the tar (WebDataset's convention) and share the key = name up to the first dot
of the basename.

Shards are plain (uncompressed) tars, read by framework/data/tar.py (names, sizes and data only:
Python's tarfile was most of a loader worker's time). Members before the wanted range are seeked over,
not read, and a `ShardReader` remembers, per shard, the byte offset where its next unread sample
starts, so that reading a shard window by window costs one pass over it instead of a re-scan from the
start for every window. Compressed tars are read with tarfile's stream mode.
"""
from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator

from framework.data.plan import Segment
from framework.data.tar import TarFormatError, TarReader

_ERRORS = (TarFormatError, tarfile.TarError, OSError, EOFError)


class ShardError(Exception):
    """A shard could not be read past some point: the caller counts the samples lost."""

    def __init__(self, path: str, index: int, detail: str):
        super().__init__(f"{path}: unreadable from sample {index} on ({detail})")
        self.path, self.index, self.detail = path, index, detail


def _split_name(name: str) -> tuple[str, str]:
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


class ShardReader:
    """Reads samples [start, start + count) of shards, resuming each shard where the last read ended."""

    def __init__(self) -> None:
        self.resume_at: dict[str, tuple[int, int]] = {}
        """Shard path -> (index of its next unread sample, byte offset of that sample's first header)."""

    def read(self, path: str, start: int = 0, count: int | None = None) -> Iterator[dict]:
        """The samples of one shard from index `start` (all of them when count is None), in order.

        Raises ShardError where the tar breaks; a shard that simply ends early yields fewer samples.
        """
        end = None if count is None else start + count
        if not path.endswith(".tar"):  # compressed (not what make_shards writes): tarfile, from the start
            yield from _group(path, _compressed_members(path), 0, start, end)
            return
        index, offset = self.resume_at.pop(path, (0, 0))
        if index > start:
            index, offset = 0, 0
        stop = yield from _group(path, _members(path, offset), index, start, end)
        if stop is not None:
            self.resume_at[path] = stop


Members = Iterator[tuple[str, "int | None", Callable[[], bytes]]]
"""(name, offset of its first header, a function reading its data) of each regular member."""


def _members(path: str, offset: int) -> Members:
    with open(path, "rb") as handle:
        handle.seek(offset)
        tar = TarReader(handle, offset)
        for member in tar:
            yield member.name, member.offset, tar.data


def _compressed_members(path: str) -> Members:
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, None, lambda member=member: tar.extractfile(member).read()


def _group(path: str, members: Members, index: int, start: int, end: int | None):
    """Samples from consecutive members (the first one being sample `index`'s); members of samples before
    `start` are not read. Returns (index, header offset) of the first sample at `end` or beyond, if any."""
    current = None
    try:
        for name, offset, read in members:
            key, ext = _split_name(name)
            if current is not None and key != current["__key__"]:
                if current["__index__"] >= start:
                    yield current
                index, current = index + 1, None
            if end is not None and index >= end:
                return None if offset is None else (index, offset)
            if current is None:
                current = {"__key__": key, "__shard__": path, "__index__": index}
            if index >= start:  # members before the range are seeked over, not read
                current[ext] = read()
    except _ERRORS as err:
        raise ShardError(path, index, f"{type(err).__name__}: {err}") from err
    finally:
        members.close()
    if current is not None and current["__index__"] >= start:
        yield current
    return None


def iter_samples(path: str) -> Iterator[dict]:
    """All samples of one shard in order; raises ShardError where the tar breaks."""
    return ShardReader().read(path)


def read_segment(segment: Segment, reader: ShardReader | None = None) -> Iterator[dict]:
    """Samples [start, start + count) of one shard."""
    return (reader or ShardReader()).read(segment.path, segment.start, segment.count)
