"""GPU figures in one command (about 8 minutes on a lent H100/H200): training throughput and MFU of the
bge-m3 shape, the largest batch in 80 GB with and without split-batch, FlagEmbedding's model class on the
same step, dense search of 1M x 1024 vectors, and the framework's gather over a one-rank NCCL group.

    python -m bench.gpu_suite [--out gpu.json] [--budget-s 450] [--sections throughput,max_batch,...]
    python -m bench.gpu_suite --smoke      # small shapes, CPU is fine, well under a minute (the test runs it)

Imports: torch, transformers and the framework modules measured (framework.model, framework.loss,
framework.train.objective, framework.parallel), all but torch lazily; FlagEmbedding, faiss, flash_attn and
deepspeed are optional and a section (or arm) whose package is missing prints why it is skipped. Every
section runs in try/except (a failure is printed and recorded, the next section runs) and checks the
global time budget before it starts; results go to stdout and, with --out, to a JSON file (written after
every section, so a run cut short keeps what it measured).

Sections
  throughput  One training step of M3Objective (all heads, ensemble, self-distillation, group size 1: B
              queries of 64 tokens and B passages of L tokens, B = 65,536 // L) on a randomly initialised
              XLM-R-large (24 layers, hidden 1024, 16 heads, FFN 4096, vocab 250,002, 8,194 positions),
              bf16 weights with fp32 master weights and AdamW moments (what DeepSpeed's bf16 mode keeps;
              DeepSpeed itself when importable and --engine deepspeed), dropout 0.1 as in training, at
              L = 512, 2,048, 8,192, with SDPA and with FlashAttention-2 when flash_attn imports (the
              unpadded encoder's `sdpa` and `flash` kernels, ModelConfig.attention).
              Printed: step time, tokens/s, peak allocated memory and
                MFU = (6 x N x T + 12 x layers x hidden x sum over sequences of length^2) / (step time x peak)
              with N the parameters that take part in matmuls (all but the embedding tables, which are
              lookups), T the tokens of the step (queries + passages), the second term attention's
              QK^T and AV products (forward 4 x L^2 x hidden per layer and sequence, backward twice that),
              and peak the GPU's dense bf16 FLOP/s (H100 SXM / H200: 989e12, H100 PCIe 756e12, A100/A800
              312e12; --peak-tflops for others). Split-batch recompute is not counted as useful work.
  max_batch   The paper's Table 10 on real hardware: the largest B (queries of 64 tokens + passages of L
              tokens, the same step with its optimizer) that fits in --memory-cap-gib (80; the allocator
              is capped with torch.cuda.set_per_process_memory_fraction), at L = 1,024, 4,096, 8,192,
              without split-batch and with it (sub-batches of 32,768 tokens, each under checkpointing:
              framework/train/split_batch.py). Two small batches give a line peak(B); its prediction is
              then run, and bisected down when it does not fit.
  flag_ratio  The same step (same batch, same encoder weights and optimizer) through FlagEmbedding's
              EncoderOnlyEmbedderM3Model, at the throughput lengths with B = 8,192 // L: FlagEmbedding / ours
              step-time ratio. Its sparse head builds a (B, L, 250,002) tensor (4 GiB in bf16 at 8,192
              passage tokens, three times that with its scatter copy and gradient; at the throughput
              section's 65,536 tokens it would need ~100 GB): a batch where it runs out of memory says so.
  search      Exact dense top-100 over 1M x 1024 normalised fp16 vectors for 1,024 queries on the GPU:
              faiss-gpu when importable, else chunked torch matmul + top-k; against faiss-cpu
              (IndexFlatIP, fp32, 256 queries) when importable; top-10 agreement between them.
  gather      A one-rank process group (NCCL on GPU, gloo on CPU) running framework.parallel's
              gather_with_grad and gather on (64, 1024) bf16 embeddings: correctness and time per call.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GIB = 2 ** 30
SECTIONS = ("throughput", "max_batch", "flag_ratio", "search", "gather")
# Dense bf16 tensor-core peaks (no sparsity) by device-name fragment, most specific first.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12), ("A100", 312e12),
             ("A800", 312e12), ("L40S", 362e12))
# HF attention implementation of an arm -> framework/model/attention.py's kernel for the unpadded encoder.
UNPADDED_ATTENTION = {"sdpa": "sdpa", "flash_attention_2": "flash"}
SPECIAL_IDS = [0, 1, 2, 3]  # XLM-R's <s>, <pad>, </s>, <unk>: no lexical weight


@dataclass(frozen=True)
class Shapes:
    """Model and workload sizes of one mode (full GPU run or CPU smoke test)."""

    hidden: int
    """Encoder width."""
    layers: int
    """Encoder layers."""
    heads: int
    """Attention heads."""
    ffn: int
    """Feed-forward width."""
    vocab: int
    """Vocabulary (word-embedding rows)."""
    positions: int
    """Position-embedding rows (XLM-R: longest input + 2)."""
    lengths: tuple[int, ...]
    """Passage lengths of the throughput and flag_ratio sections."""
    step_tokens: int
    """Passage tokens per step (B = step_tokens // L)."""
    flag_step_tokens: int
    """Passage tokens per step of the flag_ratio section (FlagEmbedding's sparse tensor is B x L x vocab)."""
    query_len: int
    """Tokens per query."""
    max_batch_lengths: tuple[int, ...]
    """Passage lengths of the max_batch section."""
    sub_batch_tokens: int
    """Split-batch sub-batch size in passage tokens."""
    memory_cap: int
    """Bytes a max_batch step may use."""
    search_n: int
    """Corpus vectors of the search section."""
    search_d: int
    """Vector width."""
    search_q: int
    """Queries searched on the device."""
    search_q_cpu: int
    """Queries searched by faiss-cpu (it is ~100x slower)."""
    dtype: str
    """Training dtype: bf16 on the GPU; fp32 for the CPU smoke test (CPU bf16 matmuls are slow)."""
    min_timed_steps: int
    """Timed steps per measurement (after warm-up)."""
    max_probes: int
    """Steps the largest-batch search may run per (length, method)."""


FULL = Shapes(hidden=1024, layers=24, heads=16, ffn=4096, vocab=250_002, positions=8194, lengths=(512, 2048, 8192),
              step_tokens=65_536, flag_step_tokens=8192, query_len=64, max_batch_lengths=(1024, 4096, 8192),
              sub_batch_tokens=32_768, memory_cap=80 * GIB, search_n=1_000_000, search_d=1024, search_q=1024,
              search_q_cpu=256, dtype="bfloat16", min_timed_steps=3, max_probes=9)
SMOKE = Shapes(hidden=32, layers=2, heads=2, ffn=64, vocab=1000, positions=514, lengths=(32, 64), step_tokens=256,
               flag_step_tokens=128, query_len=8, max_batch_lengths=(64,), sub_batch_tokens=128,
               memory_cap=24 * 2 ** 20, search_n=4096, search_d=32, search_q=32, search_q_cpu=16, dtype="float32",
               min_timed_steps=1, max_probes=5)


def say(text: str) -> None:
    print(text, flush=True)


class Suite:
    """Device, time budget and the results of every section."""

    def __init__(self, args, shapes: Shapes):
        import torch

        self.args, self.shapes, self.torch = args, shapes, torch
        self.start = time.monotonic()
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.results: dict = {"environment": self.environment()}
        self.write()

    def environment(self) -> dict:
        torch = self.torch
        import transformers

        env = {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": self.cuda,
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke": self.args.smoke}
        if self.cuda:
            props = torch.cuda.get_device_properties(0)
            env.update(device=props.name, memory_gib=round(props.total_memory / GIB, 1),
                       cuda_runtime=torch.version.cuda)
        env["peak_flops"] = self.peak_flops(env.get("device", ""))
        say(f"environment: {json.dumps(env)}")
        return env

    def peak_flops(self, name: str) -> float | None:
        if self.args.peak_tflops:
            return self.args.peak_tflops * 1e12
        return next((value for key, value in PEAK_BF16 if key in name), None)

    def remaining(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def write(self) -> None:
        if self.args.out:
            self.args.out.parent.mkdir(parents=True, exist_ok=True)
            self.args.out.write_text(json.dumps(self.results, indent=2, default=str))

    def run(self, name: str, fn) -> None:
        """One section: skipped past the budget, failures printed and recorded, results saved."""
        if self.remaining() <= 0:
            self.results[name] = {"skipped": "time budget spent"}
            say(f"\n[{name}] skipped: the {self.args.budget_s:.0f} s budget is spent")
            return
        say(f"\n[{name}] ({self.remaining():.0f} s of the budget left)")
        began = time.monotonic()
        try:
            self.results[name] = fn(self)
        except Exception as err:  # noqa: BLE001 -- one section's failure must not stop the others
            traceback.print_exc()
            self.results[name] = {"error": f"{type(err).__name__}: {err}"}
            say(f"[{name}] failed: {type(err).__name__}: {err}")
        finally:
            self.results.setdefault(name, {})
            if isinstance(self.results[name], dict):
                self.results[name]["section_s"] = round(time.monotonic() - began, 1)
            self.free()
            self.write()

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def free(self) -> None:
        import gc

        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------- the step

class MasterAdamW:
    """AdamW for bf16 parameters with fp32 master weights and moments (DeepSpeed's bf16 mode at ZeRO-0)."""

    def __init__(self, params, lr: float = 1e-5):
        import torch

        self.params = [p for p in params if p.requires_grad]
        self.master = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        try:
            self.opt = torch.optim.AdamW(self.master, lr=lr, weight_decay=0.01, fused=True)
        except (RuntimeError, TypeError):  # a torch without fused AdamW for this device
            self.opt = torch.optim.AdamW(self.master, lr=lr, weight_decay=0.01)

    def step(self) -> None:
        import torch

        for p, m in zip(self.params, self.master):
            m.grad = None if p.grad is None else p.grad.float()
        self.opt.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.master):
                p.copy_(m)
                m.grad = None

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


@dataclass
class Trainable:
    """The objective and how one step drives it (plain torch, or DeepSpeed's engine around it)."""

    objective: object
    """M3Objective (its .sub_batch_tokens switches split-batch on and off)."""
    forward: object
    """Callable(q_ids, q_mask, p_ids, p_mask, group_size, step) -> named loss terms."""
    backward: object
    step: object
    matmul_params: int
    """Parameters that take part in matmuls (all but the embedding tables)."""
    engine: str


def build_trainable(suite: Suite, attn: str) -> Trainable:
    """M3Objective on a randomly initialised XLM-R of the suite's shape, bf16, with its optimizer."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from framework.loss import LossConfig
    from framework.model import M3Model, ModelConfig
    from framework.train.objective import M3Objective

    s = suite.shapes
    config = XLMRobertaConfig(vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.layers,
                              num_attention_heads=s.heads, intermediate_size=s.ffn, max_position_embeddings=s.positions,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    config._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device(suite.device):
        encoder = XLMRobertaModel(config, add_pooling_layer=False)
    dtype = getattr(torch, s.dtype)
    # The unpadded encoder (main's default) runs its own attention: the arm names its kernel (the batches
    # have no padding, so packing costs only the index bookkeeping).
    unpadded = ModelConfig(attention=UNPADDED_ATTENTION[attn])
    model = M3Model(encoder, SPECIAL_IDS, unpadded).to(device=suite.device, dtype=dtype)
    objective = M3Objective(model, LossConfig.preset("reference")).train()
    matmul = sum(p.numel() for name, p in objective.named_parameters() if "embeddings" not in name)
    if suite.args.engine == "deepspeed":
        try:
            engine = _deepspeed_engine(objective)
            return Trainable(objective, engine, engine.backward, engine.step, matmul, "deepspeed zero-0 bf16")
        except ImportError as err:
            say(f"  deepspeed is not importable ({err}): torch AdamW with fp32 master weights instead")
    opt = MasterAdamW(objective.parameters())

    def step() -> None:
        opt.step()
        opt.zero_grad()

    return Trainable(objective, objective, lambda loss: loss.backward(), step, matmul, "torch, fp32 master AdamW")


def _deepspeed_engine(objective):
    """framework.train.engine's DeepSpeed engine (ds_configs/zero0.json, bf16) around the objective."""
    import torch

    from framework.parallel import init_distributed
    from framework.train.batching import BatchPlan
    from framework.train.config import EngineConfig, OptimConfig
    from framework.train.engine import build_engine, resolve_ds_config

    init_distributed()
    optim = OptimConfig(lr=1e-5, warmup_steps=0, schedule="constant")
    plan = BatchPlan({0: 1}, 1, 1, 10 ** 6)
    precision = "bf16" if next(objective.parameters()).dtype == torch.bfloat16 else "fp32"
    ds = resolve_ds_config(EngineConfig(deepspeed_config=str(REPO / "ds_configs" / "zero0.json")), plan, optim,
                           precision)
    return build_engine(objective, optim, plan, ds)[0]


def make_batch(suite: Suite, num: int, length: int):
    """num queries of query_len tokens and num passages of `length` tokens (group size 1), random ids, no
    padding: a framework Batch on the suite's device."""
    import torch

    from framework.data.batch import Batch

    g = torch.Generator(device=suite.device).manual_seed(num * 100_003 + length)
    q = torch.randint(5, suite.shapes.vocab, (num, suite.shapes.query_len), device=suite.device, generator=g)
    p = torch.randint(5, suite.shapes.vocab, (num, length), device=suite.device, generator=g)
    valid = torch.ones(num, dtype=torch.bool, device=suite.device)
    return Batch.of(q, torch.ones_like(q), p, torch.ones_like(p), group_size=1, passage_valid_P=valid)


def train_step(t: Trainable, batch) -> None:
    """Forward (M3Objective: encode, score every head, the loss; group size 1, step 0), backward, update."""
    terms = t.forward(batch=batch, step=0).terms
    t.backward(terms["loss"])
    t.step()


def step_flops(matmul_params: int, layers: int, hidden: int, seqs: list[tuple[int, int]]) -> float:
    """6 x N x tokens + 12 x layers x hidden x sum(length^2), seqs = [(count, length), ...]."""
    tokens = sum(c * n for c, n in seqs)
    return 6 * matmul_params * tokens + 12 * layers * hidden * sum(c * n * n for c, n in seqs)


def time_steps(suite: Suite, fn, warmup: int = 2, min_steps: int | None = None, min_seconds: float = 2.0) -> float:
    """Mean seconds per call after warm-up (CUDA synchronised): at least min_steps calls (default: the
    shapes' min_timed_steps) and, on the GPU, at least min_seconds."""
    min_steps = suite.shapes.min_timed_steps if min_steps is None else min_steps
    if not suite.cuda:
        warmup, min_seconds = min(warmup, 1), 0.0  # the CPU smoke test checks the code, not the speed
    for _ in range(warmup):
        fn()
    suite.sync()
    start, n = time.perf_counter(), 0
    while n < min_steps or (time.perf_counter() - start < min_seconds and n < 20):
        fn()
        n += 1
        suite.sync()
    return (time.perf_counter() - start) / n


def is_oom(err: BaseException) -> bool:
    return "out of memory" in str(err).lower()


def peak_allocated(suite: Suite) -> float | None:
    return suite.torch.cuda.max_memory_allocated() / GIB if suite.cuda else None


def attention_kinds(suite: Suite) -> list[str]:
    kinds = ["sdpa"]
    if suite.cuda and importlib.util.find_spec("flash_attn") is not None:
        kinds.append("flash_attention_2")
    else:
        why = "flash_attn is not importable" if suite.cuda else "no CUDA device"
        say(f"  FlashAttention-2: skipped ({why})")
    return kinds


# ----------------------------------------------------------------------------------------- sections

def section_throughput(suite: Suite) -> dict:
    s, out = suite.shapes, {"flop_formula": "6 x N x tokens + 12 x layers x hidden x sum(length^2); N = parameters "
                                            "outside the embedding tables"}
    for attn in attention_kinds(suite):
        t = build_trainable(suite, attn)
        rows = out.setdefault(attn, {"engine": t.engine, "matmul_parameters": t.matmul_params})
        for length in s.lengths:
            if suite.remaining() <= 0:
                rows[str(length)] = {"skipped": "time budget spent"}
                continue
            num = max(1, s.step_tokens // length)
            batch = make_batch(suite, num, length)
            if suite.cuda:
                suite.torch.cuda.reset_peak_memory_stats()
            try:
                seconds = time_steps(suite, lambda: train_step(t, batch))
            except RuntimeError as err:
                if not is_oom(err):
                    raise
                rows[str(length)] = {"batch": num, "error": "out of memory"}
                say(f"  {attn:<18} L={length:>5} B={num:>4}: out of memory")
                continue
            flops = step_flops(t.matmul_params, s.layers, s.hidden, [(num, s.query_len), (num, length)])
            peak = suite.results["environment"]["peak_flops"]
            row = {"batch": num, "step_s": seconds, "tokens_per_s": num * (s.query_len + length) / seconds,
                   "tflops": flops / seconds / 1e12, "mfu": flops / seconds / peak if peak else None,
                   "peak_gib": peak_allocated(suite)}
            rows[str(length)] = row
            mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
            mem = f"{row['peak_gib']:.1f} GiB" if row["peak_gib"] is not None else "n/a"
            say(f"  {attn:<18} L={length:>5} B={num:>4}: {seconds * 1000:8.1f} ms/step {row['tokens_per_s']:>11,.0f} "
                f"tok/s {row['tflops']:7.1f} TFLOP/s MFU {mfu:>6} peak {mem}")
        del t
        suite.free()
    return out


def probe(suite: Suite, t: Trainable, num: int, length: int, cap: int) -> tuple[bool, float | None]:
    """Does one step of `num` sequences fit? (fits, peak bytes). CUDA: the capped allocator decides. CPU: the
    bytes of tensors the step creates (bench/split_batch_memory.py's tracker) plus the resident weights and
    optimizer state must stay under `cap` -- so that --smoke exercises the search."""
    torch = suite.torch
    batch = make_batch(suite, num, length)
    try:
        if suite.cuda:
            torch.cuda.reset_peak_memory_stats()
            train_step(t, batch)
            suite.sync()
            return True, float(torch.cuda.max_memory_allocated())
        from bench.split_batch_memory import LiveTensorBytes

        tracker = LiveTensorBytes()
        with tracker.mode:
            train_step(t, batch)
        static = sum(p.numel() * (p.element_size() + 12) for p in t.objective.parameters())
        peak = float(tracker.peak + static)
        return peak <= cap, peak
    except RuntimeError as err:
        if not is_oom(err):
            raise
        return False, None
    finally:
        del batch
        for p in t.objective.parameters():
            p.grad = None
        suite.free()


def largest_batch(suite: Suite, t: Trainable, length: int, unit: int, cap: int) -> dict:
    """Largest fitting batch: a line through two probes predicts it, a probe checks, bisection narrows it.

    The prediction is clamped to 16x the larger probe, and a probe whose time (extrapolated from the
    previous ones, linear in the batch) would exceed the remaining budget is not run. On the CPU a batch
    whose line estimate exceeds the cap is not run either (it counts as not fitting): there the cap is
    checked after the step, and a step far over it would take the host's memory, not just fail.
    `bound` is "exact" when a batch within 1/32 above the result was run and did not fit.
    """
    probes, line = [], None

    def fits(num: int) -> bool | None:
        timed = [p for p in probes if p.get("seconds")]
        if timed and timed[-1]["seconds"] * num / timed[-1]["batch"] > suite.remaining():
            return None
        if not suite.cuda and line is not None and line(num) > cap:
            probes.append({"batch": num, "fits": False, "estimated_gib": round(line(num) / GIB, 3)})
            return False
        began = time.perf_counter()
        ok, peak = probe(suite, t, num, length, cap)
        probes.append({"batch": num, "fits": ok, "peak_gib": None if peak is None else round(peak / GIB, 3),
                       "peak": peak, "seconds": round(time.perf_counter() - began, 2)})
        return ok

    small, large, predicted = unit, 4 * unit, None
    if not fits(small):
        return {"max_batch": 0, "line_prediction": None, "probes": probes, "bound": "exact"}
    lo, hi = small, None
    if fits(large):
        lo = large
        p1, p2 = probes[0]["peak"], probes[1]["peak"]
        slope = max((p2 - p1) / (large - small), 1.0)
        line = lambda num: p2 + slope * (num - large)  # noqa: E731
        predicted = min(16 * large, max(large + 1, large + int((0.98 * cap - p2) / slope)))
        verdict = fits(predicted)
        lo, hi = (predicted, None) if verdict else (lo, predicted if verdict is False else None)
    else:
        hi = large
    while hi is not None and hi - lo > max(1, lo // 32) and len(probes) < suite.shapes.max_probes:
        mid = (lo + hi) // 2
        verdict = fits(mid)
        if verdict is None:
            break
        lo, hi = (mid, hi) if verdict else (lo, mid)
    for row in probes:
        row.pop("peak", None)
    exact = hi is not None and hi - lo <= max(1, lo // 32)
    return {"max_batch": lo, "line_prediction": predicted, "probes": probes, "bound": "exact" if exact else "lower"}


def section_max_batch(suite: Suite) -> dict:
    s, torch = suite.shapes, suite.torch
    cap = int(suite.args.memory_cap_gib * GIB) if suite.args.memory_cap_gib else s.memory_cap
    if suite.cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
    t = build_trainable(suite, "sdpa")
    train_step(t, make_batch(suite, 2, s.query_len))  # warm-up: optimizer state and kernel workspaces exist
    out = {"memory_cap_gib": round(cap / GIB, 1), "sub_batch_tokens": s.sub_batch_tokens}
    try:
        for length in s.max_batch_lengths:
            for split in (False, True):
                name = f"{length}{' split-batch' if split else ''}"
                if suite.remaining() <= 0:
                    out[name] = {"skipped": "time budget spent"}
                    continue
                sub = max(1, s.sub_batch_tokens // length)
                t.objective.sub_batch_tokens = s.sub_batch_tokens if split else None
                out[name] = largest_batch(suite, t, length, sub if split else 1, cap)
                method = "split-batch" if split else "no split   "
                found = out[name]
                say(f"  L={length:>5} {method}: max batch {found['max_batch']:>5} ({found['bound']} bound; line "
                    f"predicted {found['line_prediction']}; {len(found['probes'])} probes, "
                    f"{sum(p.get('seconds', 0) for p in found['probes']):.0f} s)")
            plain, split = out.get(str(length), {}), out.get(f"{length} split-batch", {})
            if plain.get("max_batch") and split.get("max_batch"):
                say(f"  L={length:>5} split-batch / no split: {split['max_batch'] / plain['max_batch']:.1f}x "
                    "(paper's Table 10 on A800 80GB: 1024: 262 -> 855, 4096: 25 -> 258, 8192: 6 -> 130)")
    finally:
        t.objective.sub_batch_tokens = None
        if suite.cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
    return out


def flag_model(t: Trainable):
    """FlagEmbedding's EncoderOnlyEmbedderM3Model around the same encoder and heads (shared parameters)."""
    import importlib
    from types import SimpleNamespace

    modeling = importlib.import_module("FlagEmbedding.finetune.embedder.encoder_only.m3.modeling")
    m3 = t.objective.model
    tokenizer = SimpleNamespace(cls_token_id=0, pad_token_id=1, eos_token_id=2, unk_token_id=3, padding_side="right")
    base = {"model": m3.encoder, "colbert_linear": m3.colbert_linear, "sparse_linear": m3.sparse_linear}
    return modeling.EncoderOnlyEmbedderM3Model(base, tokenizer=tokenizer, temperature=0.02, normalize_embeddings=True,
                                               unified_finetuning=True, use_self_distill=True,
                                               kd_loss_type="kl_div").train()


def section_flag_ratio(suite: Suite) -> dict:
    if importlib.util.find_spec("FlagEmbedding") is None:
        say("  skipped: FlagEmbedding is not installed")
        return {"skipped": "FlagEmbedding is not installed"}
    s = suite.shapes
    t = build_trainable(suite, "sdpa")
    if t.engine.startswith("deepspeed"):
        return {"skipped": "--engine deepspeed: the FlagEmbedding arm needs the plain torch optimizer"}
    flag = flag_model(t)

    def flag_step(batch) -> None:
        queries = {"input_ids": batch.q_ids_QL, "attention_mask": batch.q_mask_QL}
        flag(queries, {"input_ids": batch.p_ids_PL, "attention_mask": batch.p_mask_PL}).loss.backward()
        t.step()

    out = {}
    for length in s.lengths:
        if suite.remaining() <= 0:
            out[str(length)] = {"skipped": "time budget spent"}
            continue
        num = max(1, s.flag_step_tokens // length)
        batch = make_batch(suite, num, length)
        row = {"batch": num, "sparse_tensor_gib": num * length * s.vocab * (2 if s.dtype == "bfloat16" else 4) / GIB}
        for arm, fn in (("ours", lambda: train_step(t, batch)), ("flag", lambda: flag_step(batch))):
            try:
                row[f"{arm}_step_s"] = time_steps(suite, fn, warmup=1, min_steps=2, min_seconds=1.0)
            except RuntimeError as err:
                if not is_oom(err):
                    raise
                row[f"{arm}_step_s"] = None
                row[f"{arm}_error"] = "out of memory"
                for p in t.objective.parameters():
                    p.grad = None
                suite.free()
        if row.get("ours_step_s") and row.get("flag_step_s"):
            row["ratio_flag_over_ours"] = row["flag_step_s"] / row["ours_step_s"]
        out[str(length)] = row
        times = {arm: "OOM" if row[f"{arm}_step_s"] is None else f"{row[f'{arm}_step_s'] * 1000:.1f} ms"
                 for arm in ("ours", "flag")}
        say(f"  L={length:>5} B={num:>4}: ours {times['ours']}, FlagEmbedding {times['flag']} (its (B, L, vocab) "
            f"sparse tensor: {row['sparse_tensor_gib']:.2f} GiB); FlagEmbedding / ours step time "
            f"{row.get('ratio_flag_over_ours', float('nan')):.2f}")
    return out


def topk_search(queries, corpus, k: int, chunk: int = 131_072):
    """Exact inner-product top-k over corpus rows, chunked so the score block stays small."""
    import torch

    values, indices = [], []
    for start in range(0, corpus.shape[0], chunk):
        top = (queries @ corpus[start:start + chunk].T).topk(min(k, corpus.shape[0] - start), dim=1)
        values.append(top.values)
        indices.append(top.indices + start)
    best = torch.cat(values, dim=1).topk(k, dim=1)
    return best.values, torch.cat(indices, dim=1).gather(1, best.indices)


def _normalised(suite: Suite, rows: int, dim: int, seed: int, dtype):
    torch = suite.torch
    g = torch.Generator(device=suite.device).manual_seed(seed)
    out = torch.empty(rows, dim, device=suite.device, dtype=dtype)
    for start in range(0, rows, 131_072):
        block = torch.randn(min(131_072, rows - start), dim, device=suite.device, generator=g)
        out[start:start + block.shape[0]] = torch.nn.functional.normalize(block, dim=1).to(dtype)
    return out


def section_search(suite: Suite) -> dict:
    torch, s, k = suite.torch, suite.shapes, 100
    dtype = torch.float16 if suite.cuda else torch.float32
    corpus = _normalised(suite, s.search_n, s.search_d, 1, dtype)
    queries = _normalised(suite, s.search_q, s.search_d, 2, dtype)
    seconds = time_steps(suite, lambda: topk_search(queries, corpus, k), warmup=1, min_steps=3, min_seconds=1.0)
    _, ids_torch = topk_search(queries, corpus, k)
    out = {"corpus": [s.search_n, s.search_d], "queries": s.search_q, "k": k,
           "torch_topk": {"ms": seconds * 1000, "queries_per_s": s.search_q / seconds, "dtype": str(dtype)}}
    say(f"  torch matmul top-{k} ({dtype}, {suite.device.type}): {seconds * 1000:.1f} ms for {s.search_q} queries "
        f"({s.search_q / seconds:,.0f} queries/s)")
    if importlib.util.find_spec("faiss") is None:
        say("  faiss: skipped (not importable)")
        out["faiss"] = {"skipped": "faiss is not importable"}
        return out
    import faiss

    host = corpus.float().cpu().numpy()
    host_queries = queries.float().cpu().numpy()
    if suite.cuda and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.GpuIndexFlatIP(faiss.StandardGpuResources(), s.search_d)
        index.add(host)
        index.search(host_queries[:8], k)
        start = time.perf_counter()
        index.search(host_queries, k)
        gpu_s = time.perf_counter() - start
        out["faiss_gpu"] = {"ms": gpu_s * 1000, "queries_per_s": s.search_q / gpu_s}
        say(f"  faiss-gpu IndexFlatIP (fp32): {gpu_s * 1000:.1f} ms for {s.search_q} queries")
        del index
    else:
        say("  faiss-gpu: skipped (" + ("no CUDA device" if not suite.cuda else "this faiss has no GPU support") + ")")
    index = faiss.IndexFlatIP(s.search_d)
    index.add(host)
    num_cpu = min(s.search_q_cpu, s.search_q)
    start = time.perf_counter()
    _, ids_cpu = index.search(host_queries[:num_cpu], k)
    cpu_s = time.perf_counter() - start
    overlap = float((torch.from_numpy(ids_cpu[:, :10])[:, :, None] == ids_torch[:num_cpu, :10].cpu()[:, None, :])
                    .any(dim=2).float().mean())
    out["faiss_cpu"] = {"ms": cpu_s * 1000, "queries": num_cpu, "queries_per_s": num_cpu / cpu_s,
                        "top10_agreement_with_torch": overlap, "threads": faiss.omp_get_max_threads()}
    say(f"  faiss-cpu IndexFlatIP (fp32, {faiss.omp_get_max_threads()} threads): {cpu_s * 1000:.1f} ms for {num_cpu} "
        f"queries ({num_cpu / cpu_s:,.0f} queries/s); torch on {suite.device.type} / faiss-cpu queries/s "
        f"{(s.search_q / seconds) / (num_cpu / cpu_s):.0f}x; top-10 agreement {overlap:.3f}")
    return out


def section_gather(suite: Suite) -> dict:
    torch = suite.torch
    from framework.parallel import (DistEnv, free_port, gather, gather_with_grad, init_distributed, is_initialized,
                                    shutdown)

    backend = "nccl" if suite.cuda else "gloo"
    created = not is_initialized()
    if created:
        init_distributed(DistEnv(0, 1, 0, 1, "127.0.0.1", free_port(), "single"), backend)
    try:
        x = torch.randn(64, 1024, device=suite.device, dtype=torch.bfloat16, requires_grad=True)
        weight = torch.randn(64, 1024, device=suite.device, dtype=torch.bfloat16)
        got = gather_with_grad(x, rescale_grad=True)
        (got.tensor * weight).sum().backward()
        ok = (torch.equal(got.tensor.detach(), x.detach()) and torch.equal(x.grad, weight)
              and torch.equal(gather(x.detach()).tensor, x.detach()) and got.offset == 0)

        def with_grad() -> None:
            gather_with_grad(x).tensor.sum().backward()

        per_call = time_steps(suite, with_grad, warmup=3, min_steps=20, min_seconds=0.5)
        plain = time_steps(suite, lambda: gather(x.detach()), warmup=3, min_steps=20, min_seconds=0.5)
        x.grad = None
    finally:
        if created:
            shutdown()
    say(f"  {backend}, 1 rank: gather_with_grad forward+backward {per_call * 1e3:.3f} ms, gather {plain * 1e3:.3f} ms "
        f"per call on (64, 1024) bf16; values and gradient {'correct' if ok else 'WRONG'}")
    if not ok:
        raise AssertionError("one-rank gather changed the values or the gradient")
    return {"backend": backend, "correct": ok, "with_grad_ms": per_call * 1e3, "gather_ms": plain * 1e3}


SECTION_FUNCTIONS = {"throughput": section_throughput, "max_batch": section_max_batch,
                     "flag_ratio": section_flag_ratio, "search": section_search, "gather": section_gather}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small shapes (CPU is fine), well under a minute")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--budget-s", type=float, help="stop starting sections after this (default 450; smoke 300)")
    parser.add_argument("--memory-cap-gib", type=float, help="max_batch memory cap (default 80; smoke 0.023)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when not in the table")
    parser.add_argument("--engine", choices=("torch", "deepspeed"), default="torch",
                        help="optimizer: torch AdamW with fp32 master weights, or DeepSpeed's engine (ZeRO-0 bf16)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here (after every section)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections.split(",")) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {SECTIONS}")
    if args.budget_s is None:
        # The smoke test checks that every section runs: its budget only guards against a hang.
        args.budget_s = 300.0 if args.smoke else 450.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        say("no CUDA device: run this on a GPU machine, or pass --smoke for the small CPU version")
        return 2
    suite = Suite(args, SMOKE if args.smoke else FULL)
    for name in args.sections.split(","):
        suite.run(name, SECTION_FUNCTIONS[name])
    failed = [name for name, result in suite.results.items() if isinstance(result, dict) and "error" in result]
    say(f"\ndone in {time.monotonic() - suite.start:.0f} s" + (f"; failed sections: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
