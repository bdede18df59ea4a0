"""The training stream: plan -> read shards -> decode -> validate -> tokenize -> group -> batch -> collate.

`PairStream` is an IterableDataset over one epoch; run it in a DataLoader with `batch_size=None` and
exactly `cfg.num_workers` workers (0 means the main process is the only worker), so that DataLoader's
round-robin over workers is the order the plan assumes (framework/data/plan.py).
Position state is tiny and exact: (epoch, batches consumed). See `StreamState`.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from framework.data.collate import Batch, Group, choose_group, collate
from framework.data.format import JSON_EXT, TOKENS_EXT, decode_token_ids
from framework.data.plan import Segment, ShardRef, SlotPlan, StreamPlan, build_slot_plan, derive_seed, segments_of
from framework.data.manifest import load_manifest
from framework.data.reader import ShardError, read_segment
from framework.data.records import validate_record


class DataError(RuntimeError):
    """The error budget for bad records was exceeded."""


@dataclass(frozen=True)
class StreamConfig:
    """How the stream plans, samples and batches."""

    batch_sizes: dict[int, int]
    """Length bucket index -> samples per rank in one batch."""
    group_size: int = 8
    """Passages per query (1 positive + G-1 negatives); 1 for the unsupervised stage."""
    seed: int = 0
    """Root of all randomness (shard order, step order, shuffles, group sampling)."""
    num_workers: int = 0
    """DataLoader workers per rank (0: the main process reads)."""
    mix_sources: bool = False
    """Let one batch hold several sources (False: the reference's same-source batches)."""
    source_weights: dict[str, float] = field(default_factory=dict)
    """Fraction (0, 1] of each source kept per epoch, with same-source batches."""
    query_max_length: int = 512
    """Query tokens (specials included) after truncation."""
    passage_max_length: int = 8192
    """Passage tokens (specials included) after truncation."""
    shuffle_window: int = 1024
    """Samples shuffled together within a slot's stream (a window restarts exactly on resume)."""
    sources: tuple[str, ...] = ()
    """Sources of the manifest this stage reads (empty: all of them)."""
    max_bad_fraction: float = 0.01
    """Stop when more than this fraction of the records read were bad."""
    bad_budget_after: int = 1000
    """Records a slot reads before the budget applies (one early bad record must not stop a run)."""

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size={self.group_size}: use >= 1 (1 positive + G-1 negatives)")
        if self.num_workers < 0 or self.shuffle_window < 1:
            raise ValueError("num_workers must be >= 0 and shuffle_window >= 1")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction={self.max_bad_fraction}: use a fraction in [0, 1]")


@dataclass(frozen=True)
class StreamState:
    """Where a stream stands: resuming from it yields exactly the batches that would have come next."""

    epoch: int = 0
    batches: int = 0
    """Batches of this epoch already consumed by the trainer (counted in the main process)."""


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


Validate = Callable[[dict], dict]
"""Record validator: returns the normalised record or raises an exception with `.reason`."""


class PairStream(IterableDataset):
    """One epoch of batches for one rank."""

    reader_class: type = None  # set below to _SlotReader; subclasses (the document stream) swap it

    def __init__(self, shards: list[ShardRef], cfg: StreamConfig, tokenizer, rank: int, world_size: int,
                 validate: Validate, state: StreamState = StreamState()):
        self.shards, self.cfg, self.tokenizer = shards, cfg, tokenizer
        self.rank, self.world_size, self.validate, self.state = rank, world_size, validate, state

    @classmethod
    def from_manifest(cls, manifest_path, cfg: StreamConfig, tokenizer, rank: int, world_size: int,
                      state: StreamState = StreamState()) -> "PairStream":
        """The stream over a manifest's shards, validating records as tools/make_shards.py did."""
        manifest = load_manifest(manifest_path)
        known = set(manifest.samples_by_source())
        unknown = sorted(set(cfg.sources) - known)
        if unknown:
            raise ValueError(f"sources {unknown} are not in {manifest_path} (it has {sorted(known)}); "
                             "fix stream.sources or prepare those shards")
        wanted = set(cfg.sources) or known
        shards = [ShardRef(str(manifest.shard_path(s)), s.num_samples, s.source, s.bucket)
                  for s in manifest.shards if s.source in wanted]
        return cls(shards, cfg, tokenizer, rank, world_size, validate_record, state)

    def plan(self, worker: int) -> SlotPlan:
        return build_slot_plan(self.shards, self.cfg.batch_sizes, self.rank, self.world_size, worker,
                               max(self.cfg.num_workers, 1), self.cfg.seed, self.state.epoch,
                               self.cfg.mix_sources, self.cfg.source_weights or None)

    def schedule_lengths(self) -> list[int]:
        return [len(self.plan(w).schedule) for w in range(max(self.cfg.num_workers, 1))]

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != max(self.cfg.num_workers, 1):
            raise ValueError(f"DataLoader has {info.num_workers} workers but stream.num_workers="
                             f"{self.cfg.num_workers}; they must match for ranks to stay in lock-step")
        done, roles = resume_roles(self.schedule_lengths(), self.state.batches)
        role = roles[worker]
        if role is None:
            return
        plan = self.plan(role)
        skip = done[role]
        reader = self.reader_class(self, plan, role, skip)
        for key in plan.schedule[skip:]:
            yield reader.next_batch(key)


def _overlapping(segments, lo: int, hi: int) -> list:
    """The segments that samples [lo, hi) of their concatenation touch, in order."""
    out, offset = [], 0
    for seg in segments:
        if offset < hi and offset + seg.count > lo:
            out.append(seg)
        offset += seg.count
    return out


class _SlotReader:
    """Reads one slot's streams window by window and turns samples into batches."""

    def __init__(self, stream: PairStream, plan: SlotPlan, worker: int, skip: int):
        self.s, self.plan = stream, plan
        self.slot = stream.rank * max(stream.cfg.num_workers, 1) + worker
        consumed = Counter(plan.schedule[:skip])
        self.iters = {key: self._samples(sp, consumed[key] * sp.batch_size) for key, sp in plan.streams.items()}
        self.stats: Counter = Counter()
        self.num_read = self.num_bad = 0

    def _samples(self, sp: StreamPlan, start: int) -> Iterator[dict]:
        """The slot's samples of one stream from position `start`, shuffled in fixed windows."""
        total, window = sum(seg.count for seg in sp.segments), self.s.cfg.shuffle_window
        first = start - start % window
        for lo in range(first, total, window):
            part = list(self._read_range(sp, lo, min(lo + window, total)))
            rng = np.random.default_rng(derive_seed(self.s.cfg.seed, self.s.state.epoch, "window", *sp.key,
                                                    self.slot, lo))
            order = rng.permutation(len(part))
            for i in order[start - lo:] if lo == first else order:
                yield part[i]

    def _read_range(self, sp: StreamPlan, lo: int, hi: int) -> Iterator[dict]:
        """Samples [lo, hi) of the slot's range, which spans its segments back to back."""
        as_shards = [ShardRef(seg.path, seg.count, "", 0) for seg in sp.segments]
        for sub, seg in zip(segments_of(as_shards, lo, hi), _overlapping(sp.segments, lo, hi)):
            want = sub.count
            try:
                for sample in read_segment(Segment(seg.path, seg.start + sub.start, sub.count)):
                    want -= 1
                    yield sample
            except ShardError as err:
                self._bad("corrupt_shard", err.detail, want)
                continue
            if want:
                self._bad("missing_samples", f"{seg.path} holds fewer samples than its manifest says", want)

    def _bad(self, reason: str, detail: str, count: int = 1) -> None:
        self.stats[reason] += count
        self.num_bad += count
        cfg = self.s.cfg
        if self.num_read + self.num_bad >= cfg.bad_budget_after and self.num_bad > cfg.max_bad_fraction * (self.num_read + self.num_bad):
            raise DataError(f"{self.num_bad} bad records of {self.num_read + self.num_bad} read "
                            f"(> max_bad_fraction={cfg.max_bad_fraction}); last: {reason}: {detail}. "
                            "Fix the shards (tools/make_shards.py reports bad input) or raise the budget.")

    def next_batch(self, key: tuple) -> Batch:
        sp = self.plan.streams[key]
        groups: list[Group] = []
        for sample in self.iters[key]:
            group = self._group(sample)
            if group is not None:
                groups.append(group)
            if len(groups) == sp.batch_size:
                break
        if len(groups) < sp.batch_size:
            self.stats["short_batches"] += 1
        stats, self.stats = dict(self.stats), Counter()
        return collate(groups, self.s.cfg.group_size, self.s.tokenizer.pad_token_id, key, stats)

    def _group(self, sample: dict) -> Group | None:
        try:
            record = self.s.validate(json.loads(sample[JSON_EXT].decode("utf-8")))
            texts = [record["query"], *record["pos"], *record["neg"]]
            ids = self._token_ids(sample, texts)
        except Exception as err:  # noqa: BLE001 -- every bad record is counted by reason, never fatal alone
            self._bad(getattr(err, "reason", type(err).__name__), f"{sample['__shard__']}:{sample['__key__']}")
            return None
        self.num_read += 1
        group = choose_group(record, ids, self.s.cfg.group_size, self.s.cfg.seed, self.s.state.epoch,
                             sample["__key__"])
        if not group.has_negatives:
            self.stats["no_negatives"] += 1
        return group

    def _token_ids(self, sample: dict, texts: list[str]) -> list:
        """Ids per text (arrays from `.tok`, lists from the tokenizer), truncated keeping </s>."""
        cfg = self.s.cfg
        if TOKENS_EXT in sample:
            ids = decode_token_ids(sample[TOKENS_EXT])
            if len(ids) != len(texts):
                raise ValueError(f"{len(ids)} token lists for {len(texts)} texts")
        else:
            ids = self.s.tokenizer(texts, add_special_tokens=True)["input_ids"]
        limits = [cfg.query_max_length] + [cfg.passage_max_length] * (len(texts) - 1)
        out = []
        for seq, limit in zip(ids, limits):
            if len(seq) > limit:
                self.stats["truncated"] += 1
                seq = [*seq[:limit - 1], seq[-1]]
            out.append(seq)
        return out


def loader(stream: PairStream, **kwargs) -> torch.utils.data.DataLoader:
    """A DataLoader whose worker count matches the plan's."""
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=stream.cfg.num_workers,
                                       persistent_workers=False, **kwargs)


class ResumableLoader:
    """Epoch after epoch of a stream, with the exact position as state.

    Counting happens here, in the main process, on batches the trainer actually received: batches that
    DataLoader workers prefetched but nobody consumed are not part of the state, so a resumed run
    re-reads them.
    """

    def __init__(self, make_stream: Callable[[StreamState], PairStream], **loader_kwargs):
        self.make_stream, self.loader_kwargs, self.state = make_stream, loader_kwargs, StreamState()

    def state_dict(self) -> dict:
        return {"epoch": self.state.epoch, "batches": self.state.batches}

    def load_state_dict(self, state: dict) -> None:
        self.state = StreamState(int(state["epoch"]), int(state["batches"]))

    def __iter__(self) -> Iterator[Batch]:
        while True:
            stream = self.make_stream(self.state)
            if not any(stream.schedule_lengths()):
                raise DataError("the stream plans no batch at all: batch sizes exceed what each rank's share "
                                "of the shards holds; lower the batch sizes or add data")
            for batch in loader(stream, **self.loader_kwargs):
                self.state = StreamState(self.state.epoch, self.state.batches + 1)
                yield batch
            self.state = StreamState(self.state.epoch + 1, 0)


PairStream.reader_class = _SlotReader
