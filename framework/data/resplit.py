"""What an epoch has left, re-split for another layout of ranks x workers (a resume on another world size).

An epoch's plan (plan.py) is a function of the world size and the workers per rank, so the position
(epoch, batches) of one layout means other samples in another. Instead an epoch keeps the layouts it ran
under, `Layout(world_size, num_workers, batches)` for each earlier part, and the current layout plans only
what those parts left:

* Remainder. When layout i stopped, slot j (rank * workers + worker) had read the first c x B positions of
  its share of stream k (c: its batches of k, replayed from DataLoader's round-robin with
  plan.resume_roles; B: layout i's per-rank batch of k). The rest of every slot's share, slot after slot,
  is the stream's remainder: a list of pieces of the first layout's read orders (plan.Piece; slots.py
  reads a piece exactly as the first layout's slot read it, window shuffle included).
* Re-split. Layout i + 1 cuts each stream's remainder into its R' x W' slots as plan.py cuts an ordered
  stream (near-equal contiguous ranges), counts lock-step batches the same way (the minimum over ranks,
  so every rank draws the same bucket at every step), and orders each worker's batches with a seed that
  names the layout's place in the epoch.

So over all layouts every sample of the epoch is read at most once, none is read twice, and what the last
layout cannot make into whole lock-step batches (less than one batch and one sample per slot and stream,
as a fresh epoch leaves) waits for the next epoch, which is planned fresh at the current layout. The
per-rank batch of an earlier layout follows from the global batch, which a resume keeps
(framework/train/reshape.py refuses a change): B_i = B x R / R_i.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from framework.data.plan import (Piece, SlotPlan, StreamPlan, derive_seed, lockstep_batches, resume_roles, schedule,
                                 slot_bounds)

# (rank, world_size, worker, num_workers, per-rank batch sizes) -> that slot's fresh plan of the epoch.
FreshPlan = Callable[[int, int, int, int, dict[int, int]], SlotPlan]


@dataclass(frozen=True)
class Layout:
    """One earlier part of an epoch: the layout it ran under and how far it got."""

    world_size: int
    """Ranks."""
    num_workers: int
    """Plan roles per rank (DataLoader workers, or 1 for the main process)."""
    batches: int
    """Batches each rank consumed under this layout (the same on every rank: lock-step)."""


def pieces_length(pieces: tuple[Piece, ...]) -> int:
    return sum(p.count for p in pieces)


def slice_pieces(pieces: tuple[Piece, ...], start: int, end: int) -> tuple[Piece, ...]:
    """Positions [start, end) of the pieces' concatenation, as pieces."""
    out, offset = [], 0
    for piece in pieces:
        lo, hi = max(start, offset), min(end, offset + piece.count)
        if lo < hi:
            out.append(Piece(piece.slot, piece.segments, piece.start + lo - offset, hi - lo))
        offset += piece.count
        if offset >= end:
            break
    return tuple(out)


def share_of(plan: SlotPlan, slot: int, key: tuple) -> tuple[Piece, ...]:
    """A slot's share of a stream as pieces (a fresh plan's share: its whole own read order)."""
    sp = plan.streams[key]
    return sp.pieces or (Piece(slot, sp.segments, 0, sum(s.count for s in sp.segments)),)


def per_rank_batches(batch_sizes: dict[int, int], world_size: int, then: int) -> dict[int, int]:
    """The per-rank batch sizes at `then` ranks that give the same global batch as `batch_sizes` at
    `world_size` ranks."""
    odd = {b: n for b, n in batch_sizes.items() if n * world_size % then}
    if odd:
        raise ValueError(f"per-rank batch sizes {odd} at {world_size} ranks make global batches that {then} ranks "
                         "cannot split evenly; resume on the world size the epoch started with")
    return {b: n * world_size // then for b, n in batch_sizes.items()}


def relaid_plans(fresh: FreshPlan, batch_sizes: dict[int, int], world_size: int, num_workers: int,
                 earlier: tuple[Layout, ...], seed: int, epoch: int) -> list[SlotPlan]:
    """The plan of every slot (index rank * num_workers + worker) of the current layout, which continues
    the epoch after the `earlier` layouts (oldest first; at least one)."""
    first = earlier[0]
    sizes = per_rank_batches(batch_sizes, world_size, first.world_size)
    plans = [fresh(r, first.world_size, w, first.num_workers, sizes)
             for r in range(first.world_size) for w in range(first.num_workers)]
    for index, layout in enumerate(earlier, start=1):
        left = remainder(plans, layout)
        world, workers = ((earlier[index].world_size, earlier[index].num_workers) if index < len(earlier)
                          else (world_size, num_workers))
        sizes = per_rank_batches(batch_sizes, world_size, world)
        plans = split(left, sizes, world, workers, derive_seed(seed, epoch, "layout", index))
    return plans


def remainder(plans: list[SlotPlan], layout: Layout) -> dict[tuple, tuple[Piece, ...]]:
    """Per stream: what the slots of `plans` (one layout, every slot) had not read after layout.batches."""
    lengths = [len(plans[w].schedule) for w in range(layout.num_workers)]  # the same on every rank
    done, _ = resume_roles(lengths, layout.batches)
    left: dict[tuple, list[Piece]] = {}
    for slot, plan in enumerate(plans):
        used = Counter(plan.schedule[:done[slot % layout.num_workers]])
        for key in sorted(plan.streams):
            share = share_of(plan, slot, key)
            read = used[key] * plan.streams[key].batch_size
            left.setdefault(key, []).extend(slice_pieces(share, read, pieces_length(share)))
    return {key: tuple(pieces) for key, pieces in left.items()}


def split(left: dict[tuple, tuple[Piece, ...]], batch_sizes: dict[int, int], world_size: int, num_workers: int,
          rng_seed: int) -> list[SlotPlan]:
    """Every slot's plan over the streams' remainders (plan.py's cut and lock-step count)."""
    plans = []
    for rank in range(world_size):
        for worker in range(num_workers):
            slot, streams, num_left = rank * num_workers + worker, {}, 0
            for key, pieces in sorted(left.items()):
                total, batch = pieces_length(pieces), batch_sizes[key[1]]
                start, end = slot_bounds(total, slot, world_size * num_workers)
                n = lockstep_batches(total, batch, worker, num_workers, world_size)
                streams[key] = StreamPlan(key, batch, (), n, slice_pieces(pieces, start, end))
                num_left += end - start - n * batch
            plans.append(SlotPlan(streams, schedule(streams, derive_seed(rng_seed, "steps", worker)), num_left))
    return plans
