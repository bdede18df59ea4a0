"""Are the shards still what their manifest says? Two checks of different cost.

    size_mismatches  one stat per shard: the training stream runs it whenever it opens a manifest and
                     warns about every shard whose size differs (a truncated copy, a partial sync)
    verify_shards    re-hashes every byte against the manifest's SHA-256 (`tools/make_shards.py verify`):
                     run it after copying a shard set, and when the size check warns
"""
from __future__ import annotations

from dataclasses import dataclass

from framework.data.manifest import Manifest, ShardInfo, file_sha256


def size_mismatches(manifest: Manifest, shards=None) -> list[tuple[ShardInfo, int]]:
    """(shard, size on disk) of the shards (default: all) whose size differs from their entry: cheap."""
    shards = manifest.shards if shards is None else shards
    sizes = ((shard, manifest.shard_path(shard).stat().st_size) for shard in shards)
    return [(shard, size) for shard, size in sizes if size != shard.num_bytes]


@dataclass(frozen=True)
class ShardDamage:
    """A shard that differs from its manifest entry."""

    shard: ShardInfo
    """The entry."""
    num_bytes: int
    """Its size on disk."""
    sha256: str
    """Its SHA-256 on disk."""

    def describe(self, manifest: Manifest) -> str:
        size = "size ok" if self.num_bytes == self.shard.num_bytes else \
            f"{self.num_bytes} bytes, manifest says {self.shard.num_bytes}"
        return f"{manifest.shard_path(self.shard)} (sha256 differs; {size})"


def verify_shards(manifest: Manifest) -> list[ShardDamage]:
    """Every shard re-hashed against its entry (reads every byte); the damaged ones."""
    damaged = []
    for shard in manifest.shards:
        location = manifest.shard_path(shard)
        digest = file_sha256(location)
        if digest != shard.sha256:
            damaged.append(ShardDamage(shard, location.stat().st_size, digest))
    return damaged
