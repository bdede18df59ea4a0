"""Writing side of shard preparation: deterministic tar shards, one open shard per (source, bucket).

The training stream draws each batch from one length bucket of one source, so samples go to shards by
(source, bucket). A shard is closed and the next one opened once it holds `shard_size` samples or
`shard_max_bytes` bytes. Shard names and sample keys depend only on the part and input order, and tar
members carry a fixed mtime, owner and mode, so the bytes are a function of the inputs and options.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import webdataset as wds

from framework.data.format import JSON_EXT, TOKENS_EXT, sample_key
from framework.data.manifest import ShardInfo
from framework.data.prepare.encode import Sample


class HashingFile:
    """A write-only file that hashes and counts what passes through (the tar stream is written once)."""

    def __init__(self, path: Path):
        self.handle = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.num_bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.num_bytes += len(data)
        return self.handle.write(data)

    def close(self) -> None:
        self.handle.close()


class OpenShard:
    """One tar shard being written, with what its ShardInfo will say."""

    def __init__(self, path: Path, source: str, bucket: int):
        self.path, self.source, self.bucket = path, source, bucket
        self.file = HashingFile(path)
        # Fixed mtime/owner/mode make the tar bytes a function of the samples alone. An int mtime: a float
        # one makes tarfile write a pax header (two more blocks to read) before every member.
        self.tar = wds.TarWriter(self.file, user="m3", group="m3", mode=0o444, mtime=0, encoder=False)
        self.num_samples, self.langs, self.pretokenized = 0, set(), None

    def tar_bytes(self) -> int:
        # The tar stream buffers its output, so bytes written to the file lag; the archive offset does not.
        return self.tar.tarstream.offset

    def close(self, out_dir: Path) -> ShardInfo:
        self.tar.close()
        self.file.close()
        lang = next(iter(self.langs)) if len(self.langs) == 1 else None
        return ShardInfo(self.path.relative_to(out_dir).as_posix(), self.num_samples, self.file.num_bytes,
                         self.file.sha256.hexdigest(), self.source, self.bucket, lang, bool(self.pretokenized))


class ShardSet:
    """The open shards of one part, one per (source, bucket), rotated by sample count and size."""

    def __init__(self, out_dir: Path, part: int, shard_size: int, shard_max_bytes: int):
        self.out_dir, self.part = out_dir, part
        self.shard_size, self.shard_max_bytes = shard_size, shard_max_bytes
        self.open: dict[tuple[str, int], OpenShard] = {}
        self.sequence: Counter = Counter()
        self.next_index: Counter = Counter()
        self.done: list[ShardInfo] = []
        self.created: list[Path] = []

    def add(self, sample: Sample) -> None:
        shard = self._shard_for(sample.source, sample.bucket)
        members = {"__key__": sample_key(sample.source, self.part, self.next_index[sample.source]),
                   JSON_EXT: sample.json_bytes}
        if sample.token_bytes is not None:
            members[TOKENS_EXT] = sample.token_bytes
        self.next_index[sample.source] += 1
        shard.tar.write(members)
        shard.num_samples += 1
        shard.langs.add(sample.lang)
        shard.pretokenized = sample.token_bytes is not None

    def _shard_for(self, source: str, bucket: int) -> OpenShard:
        """The open shard of (source, bucket), after closing it and opening the next one when full."""
        key = (source, bucket)
        shard = self.open.get(key)
        if shard is not None and (shard.num_samples >= self.shard_size or shard.tar_bytes() >= self.shard_max_bytes):
            self.done.append(shard.close(self.out_dir))
            shard = None
        if shard is None:
            name = f"{source}.b{bucket:02d}.p{self.part:05d}.{self.sequence[key]:05d}.tar"
            self.sequence[key] += 1
            shard = self.open[key] = OpenShard(self.out_dir / name, source, bucket)
            self.created.append(shard.path)
        return shard

    def close(self) -> tuple[ShardInfo, ...]:
        self.done.extend(shard.close(self.out_dir) for shard in self.open.values())
        self.open.clear()
        return tuple(sorted(self.done, key=lambda s: s.path))

    def discard(self) -> None:
        """Close and delete every shard this run wrote (after a failure: no manifest will list them)."""
        self.close()
        for path in self.created:
            path.unlink(missing_ok=True)
