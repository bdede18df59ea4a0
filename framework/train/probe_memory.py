"""Peak memory of one training step, per device: what the batch-size probe (probe.py) compares with its budget.

    CudaMeter  torch.cuda.max_memory_allocated over the step: every tensor the caching allocator handed out
               (parameters, gradients, optimizer states, DeepSpeed's buffers, activations), not what it
               reserved; the probe's safety margin covers fragmentation and what lives outside torch
               (NCCL, cuBLAS workspaces).
    CpuMeter   the same quantity on CPU, where torch keeps no such count: the bytes of every live tensor
               storage. A session starts from every tensor Python can reach (gc: parameters, gradients,
               optimizer states, DeepSpeed's flat buffers and gradient buckets), then a TorchDispatchMode
               adds the storage of every tensor an op of the step reads or produces, and a weak reference
               on each storage takes its bytes off when it dies; the running maximum is the peak.

Why this on CPU, and not the others (bench/probe_meters.py measures both points):
  - torch's profiler with profile_memory replays the c10 allocator's allocations and frees, which also
    sees the scratch memory kernels allocate internally; but it records only on the thread that started
    it. DeepSpeed's ZeRO-2 with overlap_comm can release a gradient bucket from gloo's thread, and such a
    free is lost: the bucket stays counted for good and sizes near the budget come out differently from
    run to run (seen once in three runs while this meter was chosen; the bench's recorded run, three fresh
    runs per ZeRO stage, did not show it). profile_all_threads=True records no memory events at all in
    torch 2.13.
  - RSS counts what the kernel maps, not what the step holds: glibc keeps freed pages, untouched
    `torch.empty` pages are not resident (the gradient buckets are allocated whole and written only as
    far as the gradients go), and the interpreter and libraries count too.
  The dispatch mode's gap, kernel-internal scratch, is transient and small next to the activations
  autograd keeps: the allocator's count of a step's rise was 1.0000 to 1.0025 times this meter's on the
  tiny model at ZeRO-0 and ZeRO-2 (bench/probe_meters.py); the safety margin covers it. Storage deaths are
  seen on whatever thread they happen.
"""
from __future__ import annotations

import contextlib
import gc
import os
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GB = 1 << 30


@dataclass
class Peak:
    """Filled in when a meter's session ends."""

    bytes: int = 0
    """Highest allocated bytes on the device during the session (everything live, not only the step's)."""


class StorageLedger:
    """Bytes of the tensor storages registered and still alive; each leaves when it dies (on any thread)."""

    def __init__(self) -> None:
        self.live_bytes = self.peak_bytes = 0
        self._refs: dict[int, weakref.ref] = {}
        # Re-entrant: a storage can die (and its callback run) while this thread is inside add().
        self._lock = threading.RLock()

    def add(self, tensor: torch.Tensor) -> None:
        if tensor.device.type != "cpu" or tensor.is_meta or tensor.layout != torch.strided:
            return
        # One Python object per storage for as long as it lives (torch preserves it), so its id is the key.
        storage = tensor.untyped_storage()
        key = id(storage)
        with self._lock:
            if key in self._refs or storage.nbytes() == 0:
                return
            size = storage.nbytes()
            self._refs[key] = weakref.ref(storage, lambda _, key=key, size=size: self._gone(key, size))
            self.live_bytes += size
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def _gone(self, key: int, size: int) -> None:
        with self._lock:
            if self._refs.pop(key, None) is not None:
                self.live_bytes -= size

    def close(self) -> None:
        """Forget every storage (their callbacks no longer fire)."""
        with self._lock:
            self._refs.clear()


class _Registering(TorchDispatchMode):
    """Adds the storage of every tensor an op reads or returns to the ledger."""

    def __init__(self, ledger: StorageLedger):
        super().__init__()
        self.ledger = ledger

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves((out, args, kwargs)):
            if isinstance(leaf, torch.Tensor):
                self.ledger.add(leaf)
        return out


def reachable_tensors() -> Iterator[torch.Tensor]:
    """Every tensor Python holds, and the gradients of parameters (which may have no Python object yet)."""
    for obj in gc.get_objects():
        # type(), not isinstance(): isinstance reads __class__, which some modules' lazy deprecated names
        # answer with a FutureWarning.
        kind = type(obj)
        if issubclass(kind, torch.Tensor):
            yield obj
            if issubclass(kind, torch.nn.Parameter) and obj.grad is not None:
                yield obj.grad


class CpuMeter:
    """Live tensor-storage bytes on the CPU: what Python held at the last walk, and what the steps touch.

    The ledger lives across sessions (a storage's death is seen whenever it happens); what is born outside
    a session is seen at the next walk, so a caller that runs anything outside a session (building an
    engine, an unmeasured step) calls rescan() afterwards. A walk costs a full gc pass (about a second with
    transformers and DeepSpeed loaded), which is why it is not done at every session.
    """

    device = torch.device("cpu")

    def __init__(self) -> None:
        self._ledger: StorageLedger | None = None

    def rescan(self) -> None:
        """Walk every tensor again at the next session (tensors were made outside the sessions)."""
        if self._ledger is not None:
            self._ledger.close()
        self._ledger = None

    def _current(self) -> StorageLedger:
        if self._ledger is None:
            gc.collect()
            self._ledger = StorageLedger()
            for tensor in reachable_tensors():
                self._ledger.add(tensor)
        return self._ledger

    @property
    def live_bytes(self) -> int:
        """Bytes of the tensor storages alive now."""
        return self._current().live_bytes

    @contextlib.contextmanager
    def session(self) -> Iterator[Peak]:
        peak, ledger = Peak(), self._current()
        ledger.peak_bytes = ledger.live_bytes
        try:
            with _Registering(ledger):
                yield peak
        finally:
            peak.bytes = ledger.peak_bytes

    def physical_bytes(self, local_ranks: int = 1) -> int:
        """This rank's share of what the machine can still give, plus what this process's tensors hold."""
        return available_ram() // max(1, local_ranks) + self.live_bytes

    def release(self) -> None:
        gc.collect()

    def synchronize(self) -> None:
        """Nothing to wait for on CPU."""


class CudaMeter:
    """torch.cuda.max_memory_allocated of the current device over each session."""

    def __init__(self) -> None:
        self.device = torch.device("cuda", torch.cuda.current_device())

    @property
    def live_bytes(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    @contextlib.contextmanager
    def session(self) -> Iterator[Peak]:
        peak = Peak()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield peak
        finally:
            torch.cuda.synchronize(self.device)
            peak.bytes = torch.cuda.max_memory_allocated(self.device)

    def physical_bytes(self, local_ranks: int = 1) -> int:
        """The device's memory (each rank has its own device)."""
        return torch.cuda.get_device_properties(self.device).total_memory

    def release(self) -> None:
        """Give the cached blocks of a failed (out-of-memory) step back, so the next try starts clean."""
        gc.collect()
        torch.cuda.empty_cache()

    def rescan(self) -> None:
        """Nothing to do: CUDA's allocator counts every allocation."""

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


Meter = CpuMeter | CudaMeter


def make_meter() -> Meter:
    """The meter of the device training runs on (the CUDA device init_distributed chose, else the CPU)."""
    return CudaMeter() if torch.cuda.is_available() else CpuMeter()


def available_ram() -> int:
    """MemAvailable of /proc/meminfo in bytes (what Linux can give without swapping); total RAM elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
