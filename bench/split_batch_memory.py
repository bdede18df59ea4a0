"""Largest batch of long sequences in a fixed activation-memory budget: split-batch and its alternatives.

    python -m bench.split_batch_memory [--length 4096 --hidden 768 --layers 2 --budget-gib G --heads all]

Methods (one training step each: B queries x --query-length tokens and B passages x --length tokens,
group size 1, the M3 loss of framework.loss with all heads, ensemble and self-distillation, one backward):
  plain       (a) no split-batch, no checkpointing.
  split       (b) split-batch as the framework does it (framework/train/split_batch.py through
              M3Objective's sub_batch): each sub-batch's whole forward under non-reentrant checkpointing.
  gradcache   (c) GradCache two-pass, implemented here as a reference only: a no-grad pass over all
              sub-batches, the loss and its gradient w.r.t. the cached head outputs, then per sub-batch a
              re-forward with grad and a backward seeded with the cached gradient (dropout RNG replayed).
  layer-ckpt  (d) HF per-layer non-reentrant checkpointing (ModelConfig(gradient_checkpointing=True)), no split.
  split+layer (optional, --methods) (b) with (d) inside: the paper's Algorithm 1 taken literally.

Memory is measured, not computed. Every (method, batch) point runs in a fresh subprocess: build the model,
run a short warm-up step of the same method (it also allocates every parameter's .grad, then zeroed in
place, so parameter gradients are a baseline, not activation memory), then one measured step.
`live` (used for every fit): the peak over forward + backward of the bytes of the tensor storages created
during the step and still alive, counted by a TorchDispatchMode that sees every op's outputs, checkpoint
recomputation and autograd-saved tensors included (views share a storage and count once; scratch memory
inside a single kernel is not counted). On CPU it is exact and repeatable: torch has no CPU counterpart of
torch.cuda.max_memory_allocated, and the process RSS depends on the allocator's history.
`rss` (cross-check): VmHWM - VmRSS of the same step after resetting the kernel's peak counter (5 ->
/proc/self/clear_refs), with MALLOC_MMAP_THRESHOLD_ fixed so that glibc unmaps freed tensors at once (its
default threshold drifts up to 32 MiB and then keeps freed blocks resident). rss adds oneDNN/MKL scratch
and allocator slack.

Fitting. For a fixed length memory is linear in the batch only piece by piece: the peak moves between
phases whose per-sequence costs differ (for split-batch, one sub-batch's recompute has a large constant
and a small slope; the loss, where every sequence's head outputs and their gradients coexist, has no
constant and a larger slope). So the tracker keeps one peak per phase (forward / loss + backward /
re-forward, the last being split-batch's recompute or GradCache's second pass), each phase's peak is fitted
as intercept + slope x B over two (--num-points) batch sizes, and the max batch is the largest B that
every phase line allows. The multi-vector score adds a term that two small batches cannot show:
colbert_scores builds a (Q, Lq, 32, M) similarity block per 32-passage chunk (quadratic in B below 32
passages, linear above) plus block-sized buffers in its backward. It is measured on its own ("loss
alone": the framework loss, forward + backward, on leaf tensors shaped like the heads' outputs at
B = 1 ... 40, far cheaper than full steps at those batches) and added to each method's live bytes at the
start of the loss (a line fitted like the others): the line "loss @ large B", interpolated between the
measured batches and extended linearly past the last two. The table also gives the max batch without
that line, i.e. what the encoder side alone would allow.

Budget: --budget-gib, or by default --budget-factor (6) x the peak of (a) at B=1, so that plain training
fits ~6 sequences as in the paper's Table 10 row for 8192 tokens. Time per sequence: the measured steps'
process CPU time (less sensitive than wall time to other jobs on the machine) / B, over a method's points;
on a shared machine it still varies by +-30% between runs, while (b), (c) and (d) each cost one extra
forward, i.e. ~1.33x (a)'s compute.

The model: XLM-R's shape (hidden 768, 12 heads, FFN 3072, GELU, post-LN, vocab 8000 here) in fp32 and
train mode (hidden dropout 0.1) with 2 layers instead of 12/24 so that a 4096-token step runs on 2 cores.
Attention dropout is 0: with dropout, CPU SDPA falls back to the math kernel, which keeps (heads, L, L)
probabilities (3 GiB per sequence and layer at 4096), while on GPU the flash/memory-efficient kernels apply
dropout without them; without it CPU SDPA uses its flash kernel and attention memory is O(L) as on GPU.
Length: 8192 would take about 4x as long (attention time is quadratic in L), so the default is 4096.
With O(L) attention each per-sequence term is proportional to L (encoder activations and head outputs
L x H, the colbert block Q x Lq x 32 x L), so every slope doubles from 4096 to 8192 and a budget that
scales with (a)'s per-sequence memory (the default) gives the same max-batch ratios at 8192. (The paper's
ratio growing with L, 3.3x at 1024 -> 21x at 8192, needs a baseline term growing faster than L, such as
materialised attention probabilities.)
Depth changes the ratios: (a)'s slope grows with the layers, split-batch's does not. The bytes one layer
keeps per sequence are measured as well (live bytes across the encoder stack in the first passage forward
of (a) and (d)), and a second table re-derives every line for --target-layers (24, bge-m3's depth):
unsplit methods' slopes += extra layers x that layer figure; split methods' re-forward intercept += extra
layers x (a)'s layer figure x sub-batch. That table is an extrapolation and is labelled as one.

Result at the defaults (live figures repeat to the byte between runs; the CPU times do not, on a shared
machine): budget 3.54 GiB; max batch (a) 6, (b) 26, (c) 26, (d) 12. Split-batch alone would allow 121
(20x) and GradCache 97, but at group size 1 with all heads the colbert block binds both at 26 (4.3x). At
24 layers (extrapolated, budget 31.4 GiB): (a) 6, (b) 197 (33x), (c) 197, (d) 57; without the block
(b) 1092, (c) 878. (b) never needs more memory than (c) and needs a single backward (ZeRO-2/3).

Shape legend: B sequences (passages; as many queries), L passage tokens, Lq query tokens, M = L - 1.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

from bench.proc_memory import reset_peak, status_kib

REPO = Path(__file__).resolve().parents[1]
MIB, GIB = 2 ** 20, 2 ** 30
GROUP_SIZE = 1
# step > LossConfig.self_distill_start_step (-1), so the self-distillation terms are part of the loss.
STEP = 0
# Fixed, so that glibc returns every freed tensor of >= 128 KiB to the kernel (see the docstring). Passive
# OpenMP waits: on a shared machine spinning threads burn the other core and inflate wall and CPU time.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "MALLOC_TRIM_THRESHOLD_": str(128 * 1024),
              "OMP_WAIT_POLICY": "PASSIVE"}
# Batch sizes of the loss-alone measurement. Below colbert_scores' 32-passage chunk its similarity block
# grows as B^2 (queries x passages); from the second chunk on as B (queries x 32). The last two points fix
# the slope used past them: measured at the defaults, 36/40/44/48 give 5,414/6,016/6,617/7,219 MiB, i.e.
# exactly linear (150 MiB per sequence), while 32 -> 36 is steeper (the second chunk appears).
LOSS_POINTS = (1, 4, 8, 16, 24, 32, 36, 40)
FORWARD, LOSS, REFORWARD, LOSS_LARGE = "forward", "loss+backward", "re-forward", "loss @ large B"

# method -> (label, splits the batch, per-layer checkpointing inside the model)
METHODS = {
    "plain": ("(a) no split-batch", False, False),
    "split": ("(b) split-batch", True, False),
    "gradcache": ("(c) GradCache 2-pass", True, False),
    "layer-ckpt": ("(d) HF per-layer ckpt", False, True),
    "split+layer": ("(b)+(d) Algorithm 1", True, True),
}
DEFAULT_METHODS = "plain,split,gradcache,layer-ckpt"


# ----------------------------------------------------------------------------- worker side

class LiveTensorBytes:
    """Bytes of the tensor storages created under `mode` and still alive: overall and per-phase peaks."""

    def __init__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for item in tree_flatten(out)[0]:
                    if isinstance(item, torch.Tensor):
                        tracker._track(item.untyped_storage())
                return out

        self.mode = Mode()
        self.live, self.peak, self._seen = 0, 0, set()
        self.phase, self.phase_peaks, self.phase_start = FORWARD, {FORWARD: 0}, {FORWARD: 0}

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.phase_start.setdefault(phase, self.live)
        self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0), self.live)

    def _track(self, storage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._seen:
            return
        self._seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        self.phase_peaks[self.phase] = max(self.phase_peaks[self.phase], self.live)
        # torch keeps a storage's Python object alive as long as the C++ storage, so this fires at the free.
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.discard(key)


class PhaseHooks:
    """Moves the tracker through the phases from M3Model calls, and measures the encoder stack's growth.

    The loss starts after the last forward of the first pass (queries then passages, whole or in
    sub-batches); a model call after that is a re-forward (checkpoint recompute, GradCache's pass 2).
    """

    def __init__(self, model, tracker: LiveTensorBytes, num_forwards: int, length: int):
        self.tracker, self.num_forwards, self.length, self.calls = tracker, num_forwards, length, 0
        self.stack_before = self.stack_after = None
        stack = model.encoder.encoder
        self.handles = [model.register_forward_pre_hook(self._model_pre),
                        model.register_forward_hook(self._model_post),
                        stack.register_forward_pre_hook(self._stack_pre, with_kwargs=True),
                        stack.register_forward_hook(self._stack_post, with_kwargs=True)]

    def _model_pre(self, module, args):
        if self.tracker.phase == LOSS:
            self.tracker.set_phase(REFORWARD)

    def _model_post(self, module, args, output):
        self.calls += 1
        if self.tracker.phase == FORWARD and self.calls == self.num_forwards:
            self.tracker.set_phase(LOSS)

    def _is_passage(self, args, kwargs) -> bool:
        hidden = args[0] if args else kwargs.get("hidden_states")
        return getattr(hidden, "dim", lambda: 0)() == 3 and hidden.shape[1] == self.length

    def _stack_pre(self, module, args, kwargs):
        if self.stack_before is None and self._is_passage(args, kwargs):
            self.stack_before = self.tracker.live

    def _stack_post(self, module, args, kwargs, output):
        if self.stack_after is None and self.stack_before is not None and self._is_passage(args, kwargs):
            self.stack_after = self.tracker.live

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _configs(args, layer_ckpt: bool):
    """(ModelConfig, LossConfig) for --heads: all three heads, or the dense head alone."""
    from framework.loss import LossConfig
    from framework.model import ModelConfig

    dense_only = args.heads == "dense"
    model_cfg = ModelConfig(sparse=not dense_only, colbert=not dense_only, gradient_checkpointing=layer_ckpt)
    return model_cfg, LossConfig.preset("reference", use_sparse=not dense_only, use_colbert=not dense_only)


def _make_model(args, model_cfg):
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from framework.model import M3Model

    config = XLMRobertaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
        max_position_embeddings=args.length + 2, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, layer_norm_eps=1e-5, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa")
    torch.manual_seed(args.seed)
    return M3Model(XLMRobertaModel(config, add_pooling_layer=False), [0, 1, 2, 3], model_cfg).train()


def _make_batch(num: int, q_len: int, p_len: int, vocab: int, seed: int):
    """(q_ids, q_mask, p_ids, p_mask), no padding; ids from a small range so that queries and passages
    share terms and the sparse score is not empty."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    q_ids = torch.randint(5, min(vocab, 2000), (num, q_len), generator=gen)
    p_ids = torch.randint(5, min(vocab, 2000), (num, p_len), generator=gen)
    q_ids[:, 0], p_ids[:, 0], q_ids[:, -1], p_ids[:, -1] = 0, 0, 2, 2
    return q_ids, torch.ones_like(q_ids), p_ids, torch.ones_like(p_ids)


def _m3_loss(q, p, loss_cfg):
    from framework.loss import m3_loss
    from framework.train.objective import head_scores

    return m3_loss(head_scores(q, p, loss_cfg), GROUP_SIZE, STEP, loss_cfg)["loss"]


def objective_step(model, loss_cfg, batch, sub_batch: int | None) -> None:
    """(a), (b), (d): the framework's M3Objective, in checkpointed sub-batches when sub_batch is set."""
    from framework.data.batch import Batch
    from framework.train.objective import M3Objective

    inputs = Batch.of(*batch, group_size=GROUP_SIZE)
    M3Objective(model, loss_cfg, sub_batch=sub_batch)(batch=inputs, step=STEP).terms["loss"].backward()


def gradcache_step(model, loss_cfg, batch, sub_batch: int) -> None:
    """(c) GradCache. Pass 1 keeps only the head outputs (no graph); the loss's gradient w.r.t. them is
    cached; pass 2 re-runs each sub-batch with grad (the RNG state is replayed, so the dropout masks are
    the same) and backpropagates its slice of the cached gradient. That is one backward per sub-batch,
    which ZeRO-2/3's gradient partitioning (one backward per step) does not allow."""
    import torch

    from framework.train.split_batch import concat_outputs

    chunks = [[(ids[i:i + sub_batch], mask[i:i + sub_batch]) for i in range(0, ids.shape[0], sub_batch)]
              for ids, mask in (batch[0:2], batch[2:4])]
    rng_states = []

    def first_pass(side):   # a function, so that the per-sub-batch parts are freed once concatenated
        parts = []
        for ids, mask in side:
            rng_states.append(torch.get_rng_state())
            parts.append(model(ids, mask))
        return concat_outputs(parts)

    with torch.no_grad():
        cached = [first_pass(side) for side in chunks]
    names = [n for n in ("dense_BD", "sparse_BL", "colbert_BLC") if getattr(cached[0], n) is not None]
    leaves = [[getattr(out, n).requires_grad_() for n in names] for out in cached]
    _m3_loss(cached[0], cached[1], loss_cfg).backward()
    grads = [[leaf.grad for leaf in side] for side in leaves]
    del cached, leaves
    rng_iter = iter(rng_states)
    for side, side_grads in zip(chunks, grads):
        start = 0
        for ids, mask in side:
            torch.set_rng_state(next(rng_iter))
            out, end = model(ids, mask), start + ids.shape[0]
            torch.autograd.backward([getattr(out, n) for n in names], [g[start:end] for g in side_grads])
            start = end


def _step_worker(args) -> dict:
    """One measured step of method args.worker at batch args.batch, in this fresh process."""
    import resource

    import torch

    torch.set_num_threads(args.threads)
    _, splits, layer_ckpt = METHODS[args.worker]
    model_cfg, loss_cfg = _configs(args, layer_ckpt)
    model = _make_model(args, model_cfg)
    step = gradcache_step if args.worker == "gradcache" else objective_step
    sub_batch = args.sub_batch if splits else None
    # Warm-up: the libraries' first-use allocations, and every parameter's .grad (kept, zeroed in place).
    step(model, loss_cfg, _make_batch(2, 16, 64, args.vocab, args.seed), 1 if splits else None)
    model.zero_grad(set_to_none=False)
    batch = _make_batch(args.batch, args.query_length, args.length, args.vocab, args.seed)
    tracker = LiveTensorBytes()
    hooks = PhaseHooks(model, tracker, 2 * math.ceil(args.batch / (sub_batch or args.batch)), args.length)
    exact = reset_peak()
    rss_before = status_kib("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    with tracker.mode:
        step(model, loss_cfg, batch, sub_batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rss_peak = status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hooks.remove()
    growth = None if hooks.stack_after is None else hooks.stack_after - hooks.stack_before
    return {"live": tracker.peak, "rss": (rss_peak - rss_before) * 1024, "exact_rss_reset": exact,
            "wall": wall, "cpu": cpu, "phase_peaks": tracker.phase_peaks,
            "loss_start": tracker.phase_start.get(LOSS), "stack_growth": growth}


def _loss_worker(args) -> dict:
    """The framework loss alone (forward + backward) on leaf tensors shaped like the heads' outputs, at
    each of --loss-points; the tracker counts only what the loss allocates (the outputs' gradients too)."""
    import torch
    import torch.nn.functional as F

    from framework.model import M3Output

    torch.set_num_threads(args.threads)
    _, loss_cfg = _configs(args, False)
    gen = torch.Generator().manual_seed(args.seed)

    def outputs(ids_BL, mask_BL):
        num, length = ids_BL.shape
        return M3Output(ids_BL, mask_BL,
                        F.normalize(torch.randn(num, args.hidden, generator=gen), dim=-1).requires_grad_(),
                        torch.rand(num, length, generator=gen).requires_grad_(),
                        F.normalize(torch.randn(num, length - 1, args.hidden, generator=gen), dim=-1).requires_grad_(),
                        mask_BL[:, 1:])

    points = []
    for batch in map(int, args.loss_points.split(",")):
        q_ids, q_mask, p_ids, p_mask = _make_batch(batch, args.query_length, args.length, args.vocab, args.seed)
        q, p = outputs(q_ids, q_mask), outputs(p_ids, p_mask)
        tracker = LiveTensorBytes()
        with tracker.mode:
            _m3_loss(q, p, loss_cfg).backward()
        points.append((batch, tracker.peak))
        del q, p
    return {"points": points}


# ----------------------------------------------------------------------------- driver side

def _measure(worker: str, batch: int, args, extra: tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, __file__, "--worker", worker, "--batch", str(batch), *extra]
    for name in ("length", "hidden", "layers", "query_length", "sub_batch", "vocab", "threads", "seed", "heads"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = {**os.environ, **WORKER_ENV, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"worker {worker} B={batch} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fit(batches: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of value = intercept + slope * B."""
    mean_b, mean_v = sum(batches) / len(batches), sum(values) / len(values)
    slope = sum((b - mean_b) * (v - mean_v) for b, v in zip(batches, values)) / sum((b - mean_b) ** 2
                                                                                    for b in batches)
    return slope, mean_v - slope * mean_b


@dataclass(frozen=True)
class Line:
    """Bytes at batch B: intercept + slope * B, plus (for the large-batch loss line) the measured
    loss-alone peaks, interpolated linearly between their batch sizes and extended past the last two."""

    slope: float
    intercept: float
    points: tuple[tuple[int, float], ...] = ()

    def at(self, batch: int) -> float:
        return self.intercept + self.slope * batch + self._interpolate(batch)

    def _interpolate(self, batch: int) -> float:
        if not self.points:
            return 0.0
        pts = self.points
        pairs = list(zip(pts, pts[1:]))
        (b0, v0), (b1, v1) = next(((lo, hi) for lo, hi in pairs if batch <= hi[0]), pairs[-1])
        return v0 + (v1 - v0) * (batch - b0) / (b1 - b0)


def _points(method: str, args) -> list[int]:
    """Batch sizes to measure: 1, 2, ... unsplit; from two sub-batches on when split (B = sub_batch
    would not split at all)."""
    if METHODS[method][1]:
        return [args.sub_batch * (k + 2) for k in range(args.num_points)]
    return [k + 1 for k in range(args.num_points)]


def _measure_method(method: str, loss_points: tuple | None, args) -> dict:
    """Rows at each batch size and the phase lines fitted through them."""
    rows = {b: _measure(method, b, args) for b in _points(method, args)}
    batches = sorted(rows)
    phases = sorted({p for row in rows.values() for p in row["phase_peaks"]},
                    key=[FORWARD, LOSS, REFORWARD].index)
    lines = {p: Line(*_fit(batches, [rows[b]["phase_peaks"].get(p, 0) for b in batches])) for p in phases}
    if loss_points:
        lines[LOSS_LARGE] = Line(*_fit(batches, [rows[b]["loss_start"] for b in batches]), loss_points)
    growth = [rows[b]["stack_growth"] / b for b in batches if rows[b]["stack_growth"] is not None]
    print(f"  {method}: " + ", ".join(f"B={b} live {rows[b]['live'] / MIB:,.0f} MiB, {rows[b]['cpu']:.0f} cpu-s"
                                      for b in batches), flush=True)
    return {"rows": rows, "lines": lines, "per_layer": max(growth) / args.layers if growth else None,
            "rss_line": Line(*_fit(batches, [rows[b]["rss"] for b in batches])),
            "cpu_per_seq": sum(rows[b]["cpu"] for b in batches) / sum(batches)}


def _measure_loss(args) -> tuple | None:
    """((B, loss-alone peak bytes), ...) over LOSS_POINTS, all in one subprocess."""
    if args.heads != "all":
        return None   # the dense-only loss is (Q, P) scores: nothing in it grows like the colbert block
    rows = _measure("loss", 0, args, ("--loss-points", ",".join(map(str, LOSS_POINTS))))["points"]
    print("  loss alone: " + ", ".join(f"B={b} {v / MIB:,.0f} MiB" for b, v in rows), flush=True)
    return tuple((int(b), float(v)) for b, v in rows)


def max_batch(lines: dict, budget: float, skip: tuple[str, ...] = (), cap: int = 1 << 20) -> tuple[int, str]:
    """Largest B (<= cap) that every line allows, and the line that stops B + 1."""
    kept = {name: line for name, line in lines.items() if name not in skip}
    low, high = 0, cap
    while low < high:   # every line grows with B, so the feasible batches are 0..max
        mid = (low + high + 1) // 2
        if all(line.at(mid) <= budget for line in kept.values()):
            low = mid
        else:
            high = mid - 1
    return low, max(kept, key=lambda name: kept[name].at(low + 1))


def _peak(lines: dict, batch: int) -> float:
    return max(line.at(batch) for line in lines.values())


def _budget(args, plain_lines: dict) -> tuple[float, str]:
    if args.budget_gib is not None:
        return args.budget_gib * GIB, f"{args.budget_gib:g} GiB (--budget-gib)"
    budget = args.budget_factor * _peak(plain_lines, 1)
    return budget, f"{budget / GIB:.2f} GiB = {args.budget_factor:g} x the peak of (a) at B=1"


def _extrapolate(results: dict, args) -> dict:
    """Every method's lines at --target-layers, from the measured per-layer bytes (see the docstring)."""
    extra = args.target_layers - args.layers
    per_layer = {False: results["plain"]["per_layer"], True: results.get("layer-ckpt", {}).get("per_layer")}
    out = {}
    for method, r in results.items():
        _, splits, layer_ckpt = METHODS[method]
        if per_layer[layer_ckpt] is None:
            continue
        if splits:   # only the one sub-batch being recomputed holds a whole stack's activations
            grow = extra * per_layer[layer_ckpt] * args.sub_batch
            out[method] = {name: replace(line, intercept=line.intercept + grow) if name == REFORWARD else line
                           for name, line in r["lines"].items()}
        else:        # every sequence holds them
            grow = extra * per_layer[layer_ckpt]
            out[method] = {name: replace(line, slope=line.slope + grow) for name, line in r["lines"].items()}
    return out


def _print_points(results: dict, loss_points: tuple | None) -> None:
    print("\nMeasured points (MiB; the phase columns are each phase's live peak):")
    head = f"{'method':<22} {'B':>3} {'live':>7} {'rss':>7} {FORWARD:>9} {LOSS:>14} {REFORWARD:>11} {'cpu s':>6}"
    print(head + "\n" + "-" * len(head))
    for method, r in results.items():
        for b, row in sorted(r["rows"].items()):
            cells = [row["phase_peaks"].get(p) for p in (FORWARD, LOSS, REFORWARD)]
            cells = [f"{v / MIB:,.0f}" if v is not None else "-" for v in cells]
            print(f"{METHODS[method][0]:<22} {b:>3} {row['live'] / MIB:>7,.0f} {row['rss'] / MIB:>7,.0f} "
                  f"{cells[0]:>9} {cells[1]:>14} {cells[2]:>11} {row['cpu']:>6.1f}")
    if loss_points:
        print("loss alone, forward + backward on given head outputs (MiB at B): "
              + " ".join(f"{b}:{v / MIB:,.0f}" for b, v in loss_points))


def _print_fits(title: str, all_lines: dict, results: dict, args, with_time: bool) -> None:
    budget, how = _budget(args, all_lines["plain"])
    print(f"\n{title}. Budget: {how}.")
    head = (f"{'method':<22} {'peak B=1':>8} {'max B':>6} {'vs (a)':>7} {'vs (d)':>7} {'binding line':<14} "
            f"{'MiB/seq there':>13} {'max B w/o loss@large':>20}"
            + (f" {'cpu s/seq':>9} {'time vs (a)':>11}" if with_time else ""))
    print(head + "\n" + "-" * len(head))
    best = {m: max_batch(lines, budget) for m, lines in all_lines.items()}
    for method, lines in all_lines.items():
        num, name = best[method]
        marginal = lines[name].at(num + 1) - lines[name].at(num)
        without = max_batch(lines, budget, skip=(LOSS_LARGE,))[0] if LOSS_LARGE in lines else num
        row = (f"{METHODS[method][0]:<22} {_peak(lines, 1) / MIB:>8,.0f} {num:>6} {_ratio(num, best['plain'][0]):>7} "
               f"{_ratio(num, best.get('layer-ckpt', (0,))[0]):>7} {name:<14} {marginal / MIB:>13,.1f} {without:>20}")
        if with_time:
            cpu = results[method]["cpu_per_seq"]
            row += f" {cpu:>9.1f} {cpu / results['plain']['cpu_per_seq']:>11.2f}"
        print(row)


def _print_lines(all_lines: dict) -> None:
    print("\nPhase lines (MiB = intercept + slope x B; loss @ large B adds the loss-alone points):")
    for method, lines in all_lines.items():
        print(f"  {METHODS[method][0]:<22} " + "; ".join(
            f"{name} {line.intercept / MIB:,.0f} + {line.slope / MIB:,.1f} B" for name, line in lines.items()))


def _ratio(value: int, reference: int) -> str:
    return f"{value / reference:.1f}x" if reference else "-"


def _report(args) -> None:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(m not in METHODS for m in methods) or "plain" not in methods:
        raise ValueError(f"--methods {args.methods!r}: use names from {sorted(METHODS)}, plain included "
                         "(the reference of every ratio)")
    start = time.perf_counter()
    print(f"Split-batch memory: XLM-R shape hidden {args.hidden}, {args.hidden // 64} heads, FFN {4 * args.hidden}, "
          f"{args.layers} layers, fp32, train mode (hidden dropout 0.1, attention dropout 0, SDPA); B passages x "
          f"{args.length} tokens + B queries x {args.query_length}, group {GROUP_SIZE}, heads: {args.heads}, "
          f"self-distillation on; sub-batch {args.sub_batch}; {args.threads} threads")
    loss_points = _measure_loss(args)
    results = {m: _measure_method(m, loss_points, args) for m in methods}
    _print_points(results, loss_points)
    measured = {m: r["lines"] for m, r in results.items()}
    _print_lines(measured)
    _print_fits(f"Measured at {args.layers} layers, L={args.length}", measured, results, args, True)
    budget, _ = _budget(args, measured["plain"])
    print("rss cross-check, max B from one line through each method's overall rss peaks (no phases, no loss "
          "@ large B): " + ", ".join(f"{m} {max_batch({'rss': r['rss_line']}, budget)[0]}" for m, r in results.items()))
    per_d = results.get("layer-ckpt", {}).get("per_layer")
    _print_fits(f"Extrapolated to {args.target_layers} layers, L={args.length} (not measured; per layer and sequence "
                f"(a) keeps {results['plain']['per_layer'] / MIB:,.1f} MiB"
                + (f", (d) {per_d / MIB:,.1f} MiB" if per_d else "") + ")",
                _extrapolate(results, args), results, args, False)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=4096, help="passage length in tokens")
    parser.add_argument("--hidden", type=int, default=768, help="hidden size, a multiple of 64")
    parser.add_argument("--layers", type=int, default=2, help="encoder layers actually run")
    parser.add_argument("--target-layers", type=int, default=24, help="depth of the extrapolated table")
    parser.add_argument("--query-length", type=int, default=64)
    parser.add_argument("--heads", choices=("all", "dense"), default="all",
                        help="all: M3 fine-tuning loss; dense: dense head and loss only (unsupervised stage)")
    parser.add_argument("--sub-batch", type=int, default=1, help="sequences per sub-batch for (b)/(c)")
    parser.add_argument("--budget-gib", type=float, default=None, help="fixed activation budget in GiB")
    parser.add_argument("--budget-factor", type=float, default=6.0,
                        help="without --budget-gib: budget = this x the peak of (a) at B=1")
    parser.add_argument("--num-points", type=int, default=2, help="batch sizes measured per method (>= 2)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma list from {sorted(METHODS)}")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=sorted(METHODS) + ["loss"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--loss-points", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hidden % 64 or args.num_points < 2 or args.sub_batch < 1 or args.target_layers < args.layers:
        raise ValueError("use --hidden a multiple of 64, --num-points >= 2, --sub-batch >= 1 and "
                         "--target-layers >= --layers")
    if args.worker == "loss":
        print(json.dumps(_loss_worker(args)))
    elif args.worker:
        print(json.dumps(_step_worker(args)))
    else:
        _report(args)


if __name__ == "__main__":
    main()
