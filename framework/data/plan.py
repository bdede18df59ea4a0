"""The epoch plan: which samples every (rank, worker) slot reads and which bucket every step draws.

Shards are grouped at preparation time by (source, length bucket), as the paper groups its data by
length (section 3.4); a *stream* is the shards of one group (or of one bucket across sources, when
batches may mix sources). The plan is a pure function of the manifest and (seed, epoch, world size,
workers, batch sizes), so every rank computes the same plan without talking to the others:

* Slots. Rank r's DataLoader worker w is slot j = r * W + w of J = R * W. Per epoch, a stream's shards
  are put in a seeded order and its samples (the concatenation) are cut into J contiguous ranges whose
  sizes differ by at most one, so every slot gets an equal share and reads at most two shards partially.
* Steps. A DataLoader with W workers yields worker (s mod W)'s next batch at step s, identically on every
  rank. Worker w's batch sequence is a seeded shuffle (seed, epoch, w) of its per-stream batch counts,
  n[w, k] = min over ranks of (slot range size // per-rank batch size of stream k), so every rank draws
  the same stream (hence the same bucket) at every step and no rank runs out before the others.
* Coverage. Each sample is read by one slot at most once per epoch. What a slot cannot turn into a whole
  lock-step batch (less than one batch + one sample per slot and stream) waits for the next epoch, where
  the shard order and so the ranges change; `Plan.num_left_over` reports it.
* Another layout. A resume on another number of ranks or workers re-splits what the epoch has left
  (framework/data/resplit.py): a slot's share is then a list of `Piece`s of the first layout's read orders.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShardRef:
    """What the plan needs to know about one shard (built from a manifest entry)."""

    path: str
    """Shard file path (absolute, or relative to the working directory)."""
    num_samples: int
    """Samples in the shard."""
    source: str
    """Data source name."""
    bucket: int
    """Index of the shard's length bucket."""


@dataclass(frozen=True)
class Segment:
    """A contiguous run of samples of one shard: samples [start, start + count)."""

    path: str
    start: int
    count: int


@dataclass(frozen=True)
class Piece:
    """Positions [start, start + count) of the read order of one slot of the epoch's first layout."""

    slot: int
    """That slot's index (rank * workers + worker in the first layout): its windows' shuffle seeds."""
    segments: tuple[Segment, ...]
    """That slot's segments (what its read order shuffles)."""
    start: int
    count: int


@dataclass(frozen=True)
class StreamPlan:
    """One stream's share for one slot in one epoch."""

    key: tuple
    """(source, bucket), or ("*", bucket) when batches mix sources."""
    batch_size: int
    """Samples per batch on each rank for this stream."""
    segments: tuple[Segment, ...]
    """What this slot reads, in order."""
    num_batches: int
    """Lock-step batches this slot yields from the stream."""
    pieces: tuple[Piece, ...] = ()
    """After a re-split (resplit.py): what this slot reads, in order, instead of its own `segments`."""


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings: stable across processes and Python versions."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def group_streams(shards: list[ShardRef], mix_sources: bool) -> dict[tuple, list[ShardRef]]:
    streams: dict[tuple, list[ShardRef]] = {}
    for shard in sorted(shards, key=lambda s: (s.source, s.bucket, s.path)):
        key = ("*", shard.bucket) if mix_sources else (shard.source, shard.bucket)
        streams.setdefault(key, []).append(shard)
    return streams


def slot_bounds(num_samples: int, slot: int, num_slots: int) -> tuple[int, int]:
    """[start, end) of the slot-th of num_slots near-equal contiguous ranges."""
    return num_samples * slot // num_slots, num_samples * (slot + 1) // num_slots


def segments_of(shards: list[ShardRef], start: int, end: int) -> tuple[Segment, ...]:
    """The parts of the ordered shards that cover samples [start, end) of their concatenation."""
    out, offset = [], 0
    for shard in shards:
        lo, hi = max(start, offset), min(end, offset + shard.num_samples)
        if lo < hi:
            out.append(Segment(shard.path, lo - offset, hi - lo))
        offset += shard.num_samples
        if offset >= end:
            break
    return tuple(out)


def ordered_shards(shards: list[ShardRef], seed: int, epoch: int, key: tuple) -> list[ShardRef]:
    rng = np.random.default_rng(derive_seed(seed, epoch, "shards", *key))
    return [shards[i] for i in rng.permutation(len(shards))]


def lockstep_batches(num_samples: int, batch_size: int, worker: int, num_workers: int,
                     world_size: int) -> int:
    """n[w, k]: whole batches that every rank's worker w can make from its range of the stream."""
    num_slots = world_size * num_workers
    sizes = [np.subtract(*slot_bounds(num_samples, r * num_workers + worker, num_slots)[::-1])
             for r in range(world_size)]
    return int(min(sizes)) // batch_size


@dataclass(frozen=True)
class SlotPlan:
    """Everything one (rank, worker) slot does in one epoch."""

    streams: dict[tuple, StreamPlan]
    """Per stream key: the slot's segments and lock-step batch count."""
    schedule: tuple[tuple, ...]
    """Stream key of each batch this worker yields, in order (the same on every rank)."""
    num_left_over: int
    """Samples in this slot's ranges that make no whole lock-step batch this epoch."""


def build_slot_plan(shards: list[ShardRef], batch_sizes: dict[int, int], rank: int, world_size: int,
                    worker: int, num_workers: int, seed: int, epoch: int, mix_sources: bool = False,
                    source_weights: dict[str, float] | None = None) -> SlotPlan:
    """The plan of slot (rank, worker). `batch_sizes` maps bucket index -> samples per rank per batch.

    `source_weights` (same-source batching only) keeps that fraction (0 < w <= 1) of a source's samples
    each epoch, so sources are mixed over the epoch's steps in proportion to weight x size.
    """
    _check_plan_args(rank, world_size, worker, num_workers, batch_sizes, shards, mix_sources, source_weights)
    slot, num_slots = rank * num_workers + worker, world_size * num_workers
    streams, counts = {}, {}
    for key, members in group_streams(shards, mix_sources).items():
        ordered = ordered_shards(members, seed, epoch, key)
        weight = 1.0 if mix_sources else (source_weights or {}).get(key[0], 1.0)
        total = int(sum(s.num_samples for s in ordered) * weight)
        start, end = slot_bounds(total, slot, num_slots)
        batch = batch_sizes[key[1]]
        n = lockstep_batches(total, batch, worker, num_workers, world_size)
        streams[key] = StreamPlan(key, batch, segments_of(ordered, start, end), n)
        counts[key] = (n, end - start - n * batch)
    return SlotPlan(streams, schedule(streams, derive_seed(seed, epoch, "steps", worker)),
                    sum(left for _, left in counts.values()))


def schedule(streams: dict[tuple, StreamPlan], rng_seed: int) -> tuple[tuple, ...]:
    """A worker's batch sequence: each stream key as often as its lock-step batches, in a seeded order."""
    keys = sorted(k for k in streams if streams[k].num_batches)
    order = np.repeat(np.arange(len(keys)), [streams[k].num_batches for k in keys])
    np.random.default_rng(rng_seed).shuffle(order)
    return tuple(keys[i] for i in order)


def resume_roles(schedule_lengths: list[int], batches: int) -> tuple[list[int], list[int | None]]:
    """After `batches` steps of DataLoader's round-robin over the plan's workers ("roles"): how many
    batches each role has yielded, and which role each worker of a fresh DataLoader must play.

    A fresh DataLoader starts its round-robin at worker 0, so the live roles are rotated to start at
    the one whose turn is next; workers left without a role yield nothing and drop out at once.
    """
    num = len(schedule_lengths)
    done, pointer = [0] * num, 0
    for _ in range(batches):
        live = [r for r in range(num) if done[r] < schedule_lengths[r]]
        if not live:
            raise ValueError(f"resume position {batches} is past the end of the epoch")
        role = next(r for r in [(pointer + i) % num for i in range(num)] if r in live)
        done[role] += 1
        pointer = (role + 1) % num
    order = [(pointer + i) % num for i in range(num)]
    roles: list[int | None] = [r for r in order if done[r] < schedule_lengths[r]]
    return done, roles + [None] * (num - len(roles))


def _check_plan_args(rank, world_size, worker, num_workers, batch_sizes, shards, mix_sources,
                     source_weights) -> None:
    if not 0 <= rank < world_size or not 0 <= worker < num_workers:
        raise ValueError(f"rank {rank}/{world_size}, worker {worker}/{num_workers}: out of range")
    missing = sorted({s.bucket for s in shards} - set(batch_sizes))
    if missing:
        raise ValueError(f"no batch size for length bucket(s) {missing}; add them to the batch table")
    bad = {b: n for b, n in batch_sizes.items() if n < 1}
    if bad:
        raise ValueError(f"batch sizes must be >= 1 per rank, got {bad}; raise the total batch or "
                         "lower the world size")
    if source_weights:
        if mix_sources:
            raise ValueError("source weights need same-source batches; set mix_sources=false or drop weights")
        wrong = {s: w for s, w in source_weights.items() if not 0 < w <= 1}
        if wrong:
            raise ValueError(f"source weights must be in (0, 1] (fraction kept per epoch), got {wrong}")
