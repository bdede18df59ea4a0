"""Read samples out of WebDataset tar shards by position, surviving corrupt or truncated tars.

A sample is a dict {"__key__": str, "__shard__": path, "__index__": int, <ext>: bytes}. Members of one
sample are consecutive in the tar (WebDataset's convention) and share the key = name up to the first dot
of the basename.
"""
from __future__ import annotations

import tarfile
from collections.abc import Iterator

from framework.data.plan import Segment


class ShardError(Exception):
    """A shard could not be read past some point: the caller counts the samples lost."""

    def __init__(self, path: str, index: int, detail: str):
        super().__init__(f"{path}: unreadable from sample {index} on ({detail})")
        self.path, self.index, self.detail = path, index, detail


def _split_name(name: str) -> tuple[str, str]:
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def iter_samples(path: str) -> Iterator[dict]:
    """All samples of one shard in order; raises ShardError where the tar breaks."""
    index, current = 0, None
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_name(member.name)
                if current is not None and key != current["__key__"]:
                    yield current
                    index += 1
                    current = None
                if current is None:
                    current = {"__key__": key, "__shard__": path, "__index__": index}
                current[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ShardError(path, index, f"{type(err).__name__}: {err}") from err
    if current is not None:
        yield current


def read_segment(segment: Segment) -> Iterator[dict]:
    """Samples [start, start + count) of one shard."""
    end = segment.start + segment.count
    for sample in iter_samples(segment.path):
        if sample["__index__"] >= end:
            return
        if sample["__index__"] >= segment.start:
            yield sample
