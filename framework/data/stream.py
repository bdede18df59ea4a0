"""The training stream: plan -> read shards -> decode -> validate -> tokenize -> group -> batch -> collate.

One slot stream serves every kind of sample: `SlotStream` owns the epoch plan (plan.py), exact resume
(StreamState, resume_roles) and the slot readers (slots.py: windows, shuffle, error budget, each batch
exactly its planned sample positions); what a sample becomes is its kind's decoder (decode.py's
contract): pairs -> groups -> `Batch` (pairs.py, `PairStream`), documents -> `TextBatch`
(text_stream.py, `TextStream`). Those two only bind a decoder to the slot stream.

Run a stream in a DataLoader with `batch_size=None` and exactly `data.num_workers` workers (0 means the
main process is the only worker), so that DataLoader's round-robin over workers is the order the plan
assumes (framework/data/plan.py). Position state is tiny and exact: (epoch, batches consumed), plus the
earlier layouts of the epoch when a resume changed the ranks or workers (framework/data/resplit.py).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset, get_worker_info

from framework.data.budget import DataError, ErrorBudgetExceeded  # noqa: F401 -- the stream's errors
from framework.data.config import DataConfig, StreamConfig  # noqa: F401 -- the stream's config
from framework.data.decode import SampleDecoder, Validate
from framework.data.integrity import size_mismatches
from framework.data.manifest import load_manifest
from framework.data.pairs import PairDecoder
from framework.data.plan import ShardRef, SlotPlan, build_slot_plan, resume_roles
from framework.data.records import check_shard_record
from framework.data.resplit import Layout, relaid_plans
from framework.data.slots import SlotReader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamState:
    """Where a stream stands: resuming from it yields exactly the batches that would have come next."""

    epoch: int = 0
    batches: int = 0
    """Batches of this epoch already consumed by the trainer under the current layout (counted in the main
    process)."""
    layouts: tuple[Layout, ...] = ()
    """Earlier layouts of this epoch (ranks x workers), oldest first: the current one re-splits what they left."""


def manifest_shards(manifest_path, cfg: StreamConfig, rank: int) -> list[ShardRef]:
    """The shards of cfg.data.sources (or all) in a manifest; refuses unknown sources and empty sets and
    warns (rank 0) about shards whose size differs from their manifest entry."""
    manifest = load_manifest(manifest_path)
    known = set(manifest.samples_by_source())
    unknown = sorted(set(cfg.data.sources) - known)
    if unknown:
        raise ValueError(f"sources {unknown} are not in {manifest_path} (it has {sorted(known)}); "
                         "fix data.sources or prepare those shards")
    wanted = set(cfg.data.sources) or known
    chosen = [s for s in manifest.shards if s.source in wanted]
    if not sum(s.num_samples for s in chosen):
        which = f" of sources {sorted(wanted)}" if cfg.data.sources else ""
        raise ValueError(f"manifest {manifest_path} holds no samples{which}: its preparation kept none; re-run "
                         "tools/make_shards.py on inputs that hold records (its summary lists what it rejected)")
    if rank == 0:
        for shard, actual in size_mismatches(manifest, chosen):
            log.warning("shard %s has %d bytes, its manifest %s says %d: it was truncated or changed after "
                        "preparation; the samples it cannot give are counted as lost (records_corrupt_shard, "
                        "records_missing_samples). Check the set with `python tools/make_shards.py verify %s` "
                        "and re-create or restore the shard.", manifest.shard_path(shard), actual, manifest_path,
                        shard.num_bytes, manifest_path)
    return [ShardRef(str(manifest.shard_path(s)), s.num_samples, s.source, s.bucket) for s in chosen]


class SlotStream(IterableDataset):
    """One epoch of batches for one rank, for any kind of sample (its decoder)."""

    def __init__(self, shards: list[ShardRef], cfg: StreamConfig, decoder: SampleDecoder, rank: int,
                 world_size: int, state: StreamState = StreamState()):
        self.shards, self.cfg, self.decoder = shards, cfg, decoder
        self.rank, self.world_size, self.state = rank, world_size, state
        self._relaid: list[SlotPlan] | None = None

    @property
    def num_workers(self) -> int:
        """Plan roles per rank (DataLoader workers, or the main process alone)."""
        return max(self.cfg.data.num_workers, 1)

    def plan(self, worker: int) -> SlotPlan:
        if self.state.layouts:
            if self._relaid is None:
                self._relaid = relaid_plans(self._fresh_plan, self.cfg.batch_sizes, self.world_size, self.num_workers,
                                            self.state.layouts, self.cfg.seed, self.state.epoch)
            return self._relaid[self.rank * self.num_workers + worker]
        return self._fresh_plan(self.rank, self.world_size, worker, self.num_workers, self.cfg.batch_sizes)

    def _fresh_plan(self, rank: int, world_size: int, worker: int, num_workers: int,
                    batch_sizes: dict[int, int]) -> SlotPlan:
        data = self.cfg.data
        return build_slot_plan(self.shards, batch_sizes, rank, world_size, worker, num_workers, self.cfg.seed,
                               self.state.epoch, data.mix_sources, dict(data.source_weights) or None)

    def schedule_lengths(self) -> list[int]:
        return [len(self.plan(w).schedule) for w in range(self.num_workers)]

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_workers:
            raise ValueError(f"DataLoader has {info.num_workers} workers but data.num_workers="
                             f"{self.cfg.data.num_workers}; they must match for ranks to stay in lock-step")
        done, roles = resume_roles(self.schedule_lengths(), self.state.batches)
        role = roles[worker]
        if role is None:
            return
        plan, skip = self.plan(role), done[role]
        reader = SlotReader(plan, self.cfg, self.state.epoch, self.rank * self.num_workers + role, self.decoder,
                            skip)
        for key in plan.schedule[skip:]:
            yield reader.next_batch(key)


class PairStream(SlotStream):
    """The slot stream of query/passage groups (the contrastive stages): SlotStream + PairDecoder."""

    def __init__(self, shards: list[ShardRef], cfg: StreamConfig, tokenizer, rank: int, world_size: int,
                 validate: Validate = check_shard_record, state: StreamState = StreamState()):
        super().__init__(shards, cfg, PairDecoder(cfg, tokenizer, validate, state.epoch), rank, world_size, state)

    @classmethod
    def from_manifest(cls, manifest_path, cfg: StreamConfig, tokenizer, rank: int, world_size: int,
                      state: StreamState = StreamState()) -> "PairStream":
        """The stream over a manifest's shards (the sources of data.sources, or all)."""
        return open_manifest(cls, manifest_path, cfg, tokenizer, rank, world_size, state)


def open_manifest(stream_class, manifest_path, cfg: StreamConfig, tokenizer, rank: int, world_size: int,
                  state: StreamState):
    """A stream class that binds a decoder (PairStream, TextStream), over a manifest's shards; its
    decoder refuses shards of another kind before any step."""
    stream = stream_class(manifest_shards(manifest_path, cfg, rank), cfg, tokenizer, rank, world_size, state=state)
    stream.decoder.check_shards(stream.shards, manifest_path)
    return stream


def loader(stream: SlotStream, **kwargs) -> torch.utils.data.DataLoader:
    """A DataLoader whose worker count matches the plan's."""
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=stream.cfg.data.num_workers,
                                       persistent_workers=False, **kwargs)


class ResumableLoader:
    """Epoch after epoch of a stream, with the exact position as state.

    Counting happens here, in the main process, on batches the trainer actually received: batches that
    DataLoader workers prefetched but nobody consumed are not part of the state, so a resumed run
    re-reads them. The state names the layout (ranks, workers) it was counted under; loading a state of
    another layout continues the epoch re-split for this one (framework/data/resplit.py).
    """

    def __init__(self, make_stream: Callable[[StreamState], SlotStream], **loader_kwargs):
        self.make_stream, self.loader_kwargs, self.state = make_stream, loader_kwargs, StreamState()
        self._layout: tuple[int, int] | None = None

    @property
    def layout(self) -> tuple[int, int]:
        """(world size, workers per rank) of the streams make_stream builds."""
        if self._layout is None:
            probe = self.make_stream(StreamState())
            self._layout = (probe.world_size, probe.num_workers)
        return self._layout

    def state_dict(self) -> dict:
        world_size, num_workers = self.layout
        return {"epoch": self.state.epoch, "batches": self.state.batches, "world_size": world_size,
                "num_workers": num_workers,
                "layouts": [[x.world_size, x.num_workers, x.batches] for x in self.state.layouts]}

    def load_state_dict(self, state: dict) -> None:
        """A saved state; one without its layout (written before layouts were kept) is taken as this layout's."""
        layouts = tuple(Layout(*map(int, x)) for x in state.get("layouts", ()))
        saved = (int(state.get("world_size", self.layout[0])), int(state.get("num_workers", self.layout[1])))
        batches = int(state["batches"])
        if saved != self.layout and batches:
            layouts, batches = layouts + (Layout(*saved, batches),), 0
        self.state = StreamState(int(state["epoch"]), batches, layouts)

    def __iter__(self) -> Iterator:
        while True:
            stream = self.make_stream(self.state)
            if not any(stream.schedule_lengths()):
                if not self.state.layouts:
                    raise DataError("the stream plans no batch at all: batch sizes exceed what each rank's share "
                                    "of the shards holds; lower the batch sizes or add data")
                log.info("epoch %d: what the earlier layouts left makes no whole batch at this one; next epoch",
                         self.state.epoch)
            for batch in loader(stream, **self.loader_kwargs):
                self.state = StreamState(self.state.epoch, self.state.batches + 1, self.state.layouts)
                yield batch
            self.state = StreamState(self.state.epoch + 1, 0)
