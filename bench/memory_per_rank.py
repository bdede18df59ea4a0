"""Where a training rank's memory goes, against the weights + optimizer-state floor.

    python -m bench.memory_per_rank [--models tiny,e5-small] [--zero 0,2,3] [--procs 1,2] [--stage warmup]
        [--steps 3] [--out results.json]
    python -m bench.memory_per_rank --models e5-small --zero 2 --procs 1 --stage warmup,unified [--keep-engines]
        [--malloc-return]                                   # the demo's stage change, as the Trainer runs it
    what-if arms: --ds-config-dir DIR (other zero<N>.json files), --bucket-elements N (every bucket size = N),
        --override stages.warmup.freeze=[] (any dotted run-config override, repeatable)

Each (model, ZeRO stage, process count) is one launch (torchrun with gloo for 2 processes) of this script's
--worker mode. With one --stage it builds what framework/train/stage.py's StageRun builds, in the same order,
and runs --steps optimizer steps of that stage of the demo curriculum (configs/demo.yaml; for e5-small with
framework/demo.py's overrides: frozen word embeddings, tokens_per_rank 2048), measuring on every rank:
  RSS           the resident set after each phase and its peak within the phase (VmHWM, reset before each
                phase through /proc/self/clear_refs). Phases: runtime (imports and the process group),
                weights (the model loaded, frozen parameters marked), engine (deepspeed.initialize: ZeRO's
                flat groups, fp32 partitions), loader (stream and first batch), then each step's forward,
                backward and optimizer step (AdamW's moments appear in step 1's).
  live tensors  during the last step: bytes of tensor storages created in the step and still alive
                (bench/split_batch_memory.py's TorchDispatchMode tracker), at the end of encoding (the
                activations autograd keeps for backward), at the loss's peak (score blocks on top), in
                backward (ZeRO's gradient buckets included, allocated size) and in the optimizer step.
With several stages (--stage warmup,unified) it runs the real Trainer over them and reports, per stage, the
RSS at its start and end, its peak, and how many earlier stages' DeepSpeed engines are still alive when it
starts; --keep-engines makes StageRun.close a no-op (the trainer before it released each stage's engine), and
--malloc-return runs the workers with glibc thresholds that hand freed memory back at once, which separates
memory the allocator keeps from memory in use.
Floor per rank: fp32 weights 4N + gradients 4T + AdamW moments 8T bytes (N parameters, T trainable), the part
a ZeRO stage shards divided by the world size (stage 1: moments, 2: + gradients, 3: + weights). "Runtime" is
the process before any model exists (Python, torch, transformers, DeepSpeed): it is not part of the floor.

DeepSpeed's buffers that depend on ds_configs/*.json: with contiguous_gradients ZeRO-1/2 take a fresh
reduce_bucket_size-element buffer at every micro-batch (two with overlap_comm) and the gradients live in it;
ZeRO-3 sizes its gradient, prefetch and live-parameter buffers from reduce_bucket_size,
stage3_prefetch_bucket_size and stage3_max_live_parameters. On the CPU, allocated pages that are never
written are not resident, so the RSS shows only what the gradients fill (the live-tensor figure shows the
allocation); a CUDA caching allocator holds the whole allocation.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from bench.proc_memory import reset_peak, status_kib

REPO = Path(__file__).resolve().parents[1]

MIB, GIB = 2 ** 20, 2 ** 30
BUCKET_KEYS = ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size")
# glibc keeps freed heap memory resident (its mmap threshold grows up to 32 MiB, and top-of-heap memory is
# trimmed only past 128 KiB of free space at the top): fixed thresholds make it return every freed block of
# 128 KiB or more at once, which tells retained-but-free memory apart from live memory.
MALLOC_RETURN_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "MALLOC_TRIM_THRESHOLD_": str(128 * 1024)}


# ----------------------------------------------------------------------------------------- worker side

class RSSPhases:
    """Resident set after each phase and its peak within it."""

    def __init__(self):
        self.rows: list[dict] = []
        self.exact = reset_peak()
        """False where the kernel refuses to reset VmHWM: each peak is then the peak so far."""

    @contextmanager
    def phase(self, name: str):
        reset_peak()
        start = time.perf_counter()
        yield
        self.rows.append({"phase": name, "rss": status_kib("VmRSS") * 1024, "peak": status_kib("VmHWM") * 1024,
                          "seconds": round(time.perf_counter() - start, 2)})


class EncodingMarks:
    """Forward hooks on the M3 model: the live-tensor tracker is in 'forward' while the encoder runs and in
    'loss' after it; `encoded` is the live bytes when the last encoding of the forward pass ended."""

    def __init__(self, model, tracker):
        self.tracker, self.encoded = tracker, 0
        self.handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def _pre(self, module, args):
        if self.tracker.phase == "loss":
            self.tracker.set_phase("forward")

    def _post(self, module, args, output):
        if self.tracker.phase == "forward":
            self.encoded = self.tracker.live
            self.tracker.set_phase("loss")

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _shapes(batch) -> dict:
    """What the batch holds (padded shapes where the batch has them: the unpadded layout may not)."""
    out = {"tokens": int(batch.num_tokens), "padded": int(batch.num_padded_tokens), "keys": len(batch.keys)}
    for name, field in (("queries", "q_ids_QL"), ("passages", "p_ids_PL")):
        if getattr(batch, field, None) is not None:
            out[name] = list(getattr(batch, field).shape)
    return out


def _build(spec: dict, phases: RSSPhases):
    """StageRun.build()'s steps, one phase each; returns (run, task, engine, batches, counts)."""
    import torch

    from framework.data.manifest import load_manifest
    from framework.parallel import rank, world_size
    from framework.train.batching import plan_batches
    from framework.train.config import load_run_config
    from framework.train.engine import build_engine, freeze, resolve_ds_config, resolve_precision, size_buckets
    from framework.train.tasks import TASKS
    from bench.vs_flagembedding import our_loader

    run = load_run_config(None, data=spec["run"])
    stage = run.stages[0]
    plan = plan_batches(stage, world_size(), load_manifest(stage.data.manifest).length_edges)
    torch.manual_seed(run.seed)
    with phases.phase("weights"):
        task = TASKS[stage.kind](run, stage, Path(run.model.path))
        freeze(task.objective, stage.freeze)
    params = list(task.objective.parameters())
    counts = {"parameters": sum(p.numel() for p in params),
              "trainable": sum(p.numel() for p in params if p.requires_grad)}
    with phases.phase("engine"):
        ds = size_buckets(resolve_ds_config(run.engine, plan, stage.optim, resolve_precision(run.engine.precision)),
                          counts["trainable"])
        counts["buckets"] = {k: v for k, v in ds["zero_optimization"].items() if k in BUCKET_KEYS}
        engine, _, _ = build_engine(task.objective, stage.optim, plan, ds)
        task.after_engine(ds["zero_optimization"].get("stage", 0))
    engine.train()
    with phases.phase("loader"):
        batches = iter(our_loader(run, 0, plan, task.tokenizer, rank(), world_size()))
        first = next(batches)
    return task, engine, first, batches, counts


def _step(task, engine, batch, step: int, phases: RSSPhases, tracker) -> dict:
    marks = EncodingMarks(task.model, tracker) if tracker is not None else None
    with tracker.mode if tracker is not None else nullcontext():
        with phases.phase(f"step {step + 1} forward"):
            terms = task.forward(engine, batch.to(engine.device), step).terms
        if tracker is not None:
            tracker.set_phase("backward")
        with phases.phase(f"step {step + 1} backward"):
            engine.backward(terms["loss"])
        if tracker is not None:
            tracker.set_phase("optimizer")
        with phases.phase(f"step {step + 1} optimizer"):
            engine.step()
    if tracker is None:
        return {}
    marks.remove()
    peaks = tracker.phase_peaks
    return {"encoded": marks.encoded, "loss_peak": peaks.get("loss", 0), "backward_peak": peaks.get("backward", 0),
            "optimizer_peak": peaks.get("optimizer", 0), "step_peak": tracker.peak}


def curriculum_worker(spec: dict) -> None:
    """The real Trainer over consecutive stages: RSS at each stage's start and end, its peak, and how many
    earlier stages' DeepSpeed engines are still alive when it starts (--keep-engines: as before
    StageRun.close released them)."""
    import gc
    import weakref

    from framework.parallel import init_distributed, rank, shutdown, world_size
    from framework.tracking import NullTracker
    from framework.train.config import load_run_config
    from framework.train.stage import StageRun
    from framework.train.trainer import Trainer

    init_distributed()
    rows, engines, original = [], [], StageRun.run

    def measured_run(self):  # instrumentation only: the stage runs exactly as in training
        gc.collect()
        reset_peak()
        row = {"stage": self.stage.name, "rss_start": status_kib("VmRSS") * 1024,
               "earlier_engines_alive": sum(ref() is not None for ref in engines)}
        try:
            return original(self)
        finally:
            row.update(peak=status_kib("VmHWM") * 1024, rss_end=status_kib("VmRSS") * 1024,
                       buckets={k: v for k, v in self.ds_config["zero_optimization"].items() if k in BUCKET_KEYS})
            rows.append(row)
            engines.append(weakref.ref(self.engine))

    StageRun.run = measured_run
    if spec["keep_engines"]:  # the trainer as it was: no engine released at a stage's end
        StageRun.close = lambda self: None
    Trainer(load_run_config(None, data=spec["run"]), NullTracker()).train()
    gc.collect()
    out = {"rank": rank(), "world": world_size(), "stages": rows, "peak": max(r["peak"] for r in rows),
           "engines_alive_at_end": sum(ref() is not None for ref in engines)}
    Path(spec["out"]).with_suffix(f".rank{rank()}.json").write_text(json.dumps(out))
    shutdown()


def worker(spec_path: Path) -> None:
    if json.loads(spec_path.read_text()).get("curriculum"):
        curriculum_worker(json.loads(spec_path.read_text()))
        return
    phases = RSSPhases()
    with phases.phase("runtime"):
        import deepspeed  # noqa: F401  (its import is part of every rank's runtime)
        import torch  # noqa: F401

        from framework.parallel import init_distributed, rank, shutdown, world_size
        from bench.split_batch_memory import LiveTensorBytes

        init_distributed()
    spec = json.loads(spec_path.read_text())
    task, engine, batch, batches, counts = _build(spec, phases)
    steps, live = [], {}
    for step in range(spec["steps"]):
        batch = batch if step == 0 else next(batches)
        steps.append(_shapes(batch))
        tracker = LiveTensorBytes() if step == spec["steps"] - 1 else None
        live = _step(task, engine, batch, step, phases, tracker) or live
    out = {"rank": rank(), "world": world_size(), "counts": counts, "phases": phases.rows, "exact": phases.exact,
           "live": live, "batches": steps, "peak": max(row["peak"] for row in phases.rows)}
    Path(spec["out"]).with_suffix(f".rank{rank()}.json").write_text(json.dumps(out))
    shutdown()


# ----------------------------------------------------------------------------------------- parent side

def stage_config(model: str, model_dir: Path, manifest: Path, stages: list[str], zero: int, ds_config: Path,
                 steps: int, out_dir: Path, extra: list[str] = ()) -> dict:
    """Stages of configs/demo.yaml as the demo runs them (framework/demo.py's e5-small overrides included)."""
    from framework.config import apply_overrides, read_yaml
    from framework.demo import CONFIG, E5_OVERRIDES

    raw = read_yaml(CONFIG)
    names = [s["name"] for s in raw["stages"]]
    unknown = sorted(set(stages) - set(names))
    if unknown:
        raise SystemExit(f"--stage {unknown}: configs/demo.yaml has {names}")
    overrides = [f"output_dir={out_dir}", f"model.path={model_dir}", "tracking.enabled=false",
                 f"engine.deepspeed_config={ds_config}", f"engine.zero_stage={zero}", "checkpoint.every_steps=0"]
    for stage in stages:
        overrides += [f"stages.{stage}.steps={steps}", f"stages.{stage}.data.manifest={manifest}"]
        if model == "e5-small":
            overrides += [o.format(stage=stage) for o in E5_OVERRIDES]
    raw = apply_overrides(raw, overrides + list(extra))
    raw["stages"] = [s for s in raw["stages"] if s["name"] in stages]
    return raw


def ds_config_file(zero: int, bucket_elements: int | None, work: Path, config_dir: Path) -> Path:
    """<config_dir>/zero<N>.json, or a copy with every bucket size set to `bucket_elements`."""
    shipped = config_dir / f"zero{zero}.json"
    if bucket_elements is None:
        return shipped
    ds = json.loads(shipped.read_text())
    zero_section = ds.setdefault("zero_optimization", {})
    keys = BUCKET_KEYS[0::2] if zero_section.get("stage", 0) >= 3 else BUCKET_KEYS[:2]
    zero_section.update({key: bucket_elements for key in keys})
    path = work / f"zero{zero}-buckets{bucket_elements}.json"
    path.write_text(json.dumps(ds, indent=2))
    return path


def floor_bytes(counts: dict, zero: int, world: int) -> dict:
    """fp32 weights, gradients and AdamW moments per rank at this ZeRO stage (the minimum a rank holds)."""
    n, t = counts["parameters"], counts["trainable"]
    weights, grads, moments = 4 * n, 4 * t, 8 * t
    if zero >= 1:
        moments /= world
    if zero >= 2:
        grads /= world
    if zero >= 3:
        weights /= world
    return {"weights": weights, "gradients": grads, "moments": moments, "total": weights + grads + moments}


def measure(model: str, model_dir: Path, manifest: Path, zero: int, nproc: int, args) -> list[dict]:
    """One launch; the ranks' results."""
    from bench.vs_flagembedding import LOW_MEMORY_EXIT, launch, launcher

    tag = (f"{model}-zero{zero}-{nproc}proc-{args.stage.replace(',', '+')}-{args.ds_config_dir.name}"
           + (f"-buckets{args.bucket_elements}" if args.bucket_elements else "")
           + ("-keep" if args.keep_engines else "") + ("-malloc" if args.malloc_return else "")
           + (f"-{len(args.override)}overrides" if args.override else ""))
    out = args.work_dir / "runs" / tag
    shutil.rmtree(out / "run", ignore_errors=True)  # the curriculum mode's Trainer would resume an old run
    out.mkdir(parents=True, exist_ok=True)
    ds_config = ds_config_file(zero, args.bucket_elements, args.work_dir, args.ds_config_dir)
    stages = args.stage.split(",")
    spec = {"run": stage_config(model, model_dir, manifest, stages, zero, ds_config, args.steps, out / "run",
                                args.override),
            "steps": args.steps, "out": str(out / "result"), "curriculum": len(stages) > 1,
            "keep_engines": args.keep_engines}
    (out / "spec.json").write_text(json.dumps(spec))
    for old in out.glob("result.rank*.json"):
        old.unlink()
    log_path = out / "worker.log"
    rc, _, wall = launch([*launcher(nproc), "-m", "bench.memory_per_rank", "--worker", str(out / "spec.json")],
                         args.threads, log_path, extra_env=MALLOC_RETURN_ENV if args.malloc_return else None)
    if rc != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        why = ("stopped: the machine ran low on memory" if rc == LOW_MEMORY_EXIT else
               f"worker failed (exit {rc}{'; -9 is the OOM killer' if rc == -9 else ''})")
        print(f"{tail}\n  {tag}: {why}; log {log_path}", flush=True)
        return []
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("result.rank*.json"))]
    for r in ranks:
        r.update(model=model, zero=zero, nproc=nproc, wall_s=wall, bucket_elements=args.bucket_elements,
                 ds_config=str(ds_config),
                 keep_engines=args.keep_engines, malloc_return=args.malloc_return, overrides=args.override)
        if "counts" in r:
            r["floor"] = floor_bytes(r["counts"], zero, nproc)
    return ranks


def _short(path: str) -> str:
    return "/".join(Path(path).parts[-2:])


def _buckets(buckets: dict) -> str:
    return ", ".join(f"{k.replace('_bucket_size', '')} {v:.3g}" for k, v in buckets.items()) or "none (ZeRO-0)"


def _gb(value: float) -> str:
    return f"{value / GIB:6.2f}"


def print_curriculum(ranks: list[dict]) -> None:
    """Per stage of the curriculum run: RSS at start and end, peak, earlier engines still alive."""
    r0 = ranks[0]
    print(f"\n{r0['model']}, ZeRO-{r0['zero']}, {r0['nproc']} proc, {_short(r0['ds_config'])}, curriculum "
          f"{'+'.join(row['stage'] for row in r0['stages'])}"
          f"{', engines kept (StageRun.close a no-op)' if r0['keep_engines'] else ''}"
          f"{', glibc returns freed memory' if r0['malloc_return'] else ''}"
          f", buckets {_buckets(r0['stages'][0]['buckets'])}: "
          f"peak RSS per rank {_gb(max(r['peak'] for r in ranks)).strip()} GB", flush=True)
    for i, row in enumerate(r0["stages"]):
        peaks = ", ".join(_gb(r["stages"][i]["peak"]).strip() for r in ranks)
        print(f"  {row['stage']:<12} start {_gb(row['rss_start'])} GB  peak {_gb(row['peak'])} GB (ranks: {peaks})  "
              f"end {_gb(row['rss_end'])} GB  earlier stages' engines alive at its start: "
              f"{row['earlier_engines_alive']}", flush=True)
    print(f"  engines alive after the run: {r0['engines_alive_at_end']} of {len(r0['stages'])}", flush=True)


def print_result(ranks: list[dict]) -> None:
    """Phases of rank 0, the largest peak over ranks, the floor and the live-tensor split of the last step."""
    r0 = ranks[0]
    rows, prev = [], 0
    for row in r0["phases"]:
        rows.append(f"{row['phase']} {_gb(row['rss'] - prev).strip()}/{_gb(row['peak']).strip()}")
        prev = row["rss"]
    floor, live = r0["floor"], r0["live"]
    peak = max(r["peak"] for r in ranks)
    runtime = r0["phases"][0]["rss"]
    print(f"\n{r0['model']}, ZeRO-{r0['zero']}, {r0['nproc']} proc, {_short(r0['ds_config'])}"
          f"{', buckets ' + format(r0['bucket_elements'], ',') if r0['bucket_elements'] else ''}"
          f"{', glibc returns freed memory' if r0['malloc_return'] else ''}"
          f"{', overrides ' + ' '.join(r0['overrides']) if r0['overrides'] else ''}: "
          f"{r0['counts']['parameters'] / 1e6:.1f}M parameters, {r0['counts']['trainable'] / 1e6:.1f}M trainable; "
          f"buckets {_buckets(r0['counts']['buckets'])}; "
          f"batches (rank 0) {[b.get('passages', b['keys']) for b in r0['batches']]}", flush=True)
    print(f"  peak RSS per rank {_gb(peak)} GB (ranks: {', '.join(_gb(r['peak']).strip() for r in ranks)}) | floor "
          f"{_gb(floor['total']).strip()} GB (weights {_gb(floor['weights']).strip()}, gradients "
          f"{_gb(floor['gradients']).strip()}, moments {_gb(floor['moments']).strip()}) + runtime "
          f"{_gb(runtime).strip()}"
          f" = {_gb(floor['total'] + runtime).strip()} GB; peak / (floor + runtime) "
          f"{peak / (floor['total'] + runtime):.2f}", flush=True)
    print("  rank 0 phases, GB (RSS growth in the phase / peak within it): " + "; ".join(rows), flush=True)
    if live:
        print(f"  last step, live tensors created in it: activations kept at the end of encoding "
              f"{_gb(live['encoded']).strip()} GB, loss peak {_gb(live['loss_peak']).strip()} (score blocks "
              f"{_gb(live['loss_peak'] - live['encoded']).strip()}), backward peak "
              f"{_gb(live['backward_peak']).strip()}, "
              f"optimizer step peak {_gb(live['optimizer_peak']).strip()}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,e5-small", help="comma list of tiny, e5-small")
    parser.add_argument("--zero", default="0,2,3", help="ZeRO stages, comma list")
    parser.add_argument("--procs", default="1,2", help="process counts, comma list")
    parser.add_argument("--stage", default="warmup",
                        help="stage of configs/demo.yaml (unified: split-batch + self-distillation); a comma list "
                             "(warmup,unified) runs them in order through the real Trainer and reports per stage")
    parser.add_argument("--override", action="append", default=[],
                        help="a dotted run-config override applied after the demo's, e.g. "
                             "stages.warmup.freeze=[] or stages.warmup.data.buckets.tokens_per_rank=512 (repeatable)")
    parser.add_argument("--malloc-return", action="store_true",
                        help="run the workers with glibc thresholds that return freed memory to the system at once")
    parser.add_argument("--keep-engines", action="store_true",
                        help="with several stages: keep every stage's engine alive (StageRun.close a no-op), as "
                             "the trainer did before it released them")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per launch (>= 2: the last is measured "
                                                             "with the live-tensor tracker)")
    parser.add_argument("--bucket-elements", type=int, help="set every bucket size of the ds_configs to this")
    parser.add_argument("--ds-config-dir", type=Path, default=REPO / "ds_configs",
                        help="directory of zero<N>.json files (e.g. an older version of ds_configs/)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process")
    parser.add_argument("--model-dir", type=Path, help="use this HF model directory for 'tiny' (e.g. a test fixture)")
    parser.add_argument("--rows", type=int, default=0,
                        help="shard only the first N DDTP train rows (0: all of them, as the demo does)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "memory_per_rank")
    parser.add_argument("--out", type=Path, help="also write every rank's results as JSON here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    from framework.demo import prepare_shards
    from bench.vs_flagembedding import build_model, make_shards, mem_available, write_rows

    results = []
    for model in args.models.split(","):
        work = args.work_dir / model
        work.mkdir(parents=True, exist_ok=True)
        model_dir = args.model_dir if (model == "tiny" and args.model_dir) else build_model(model, work)
        if args.rows:
            manifest = make_shards(model_dir, write_rows(work / f"rows-{args.rows}.jsonl", args.rows),
                                   work / f"shards-{args.rows}", 256)
        else:
            manifest = work / "shards" / "manifest.json"
            if not manifest.is_file():
                prepare_shards(model_dir, work)  # exactly the demo's shards: every DDTP train row, max 256 tokens
        single_peak = {}
        for zero in (int(z) for z in args.zero.split(",")):
            for nproc in (int(n) for n in args.procs.split(",")):
                need = single_peak.get(zero, 0) * nproc * 1.15
                if nproc > 1 and need > mem_available():
                    print(f"\n{model}, ZeRO-{zero}, {nproc} proc: skipped, {nproc} x the 1-process peak "
                          f"({_gb(need).strip()} GB) exceeds MemAvailable ({_gb(mem_available()).strip()} GB)")
                    continue
                ranks = measure(model, model_dir, manifest, zero, nproc, args)
                if ranks:
                    (print_curriculum if "stages" in ranks[0] else print_result)(ranks)
                    results.extend(ranks)
                    if nproc == 1:
                        single_peak[zero] = ranks[0]["peak"]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
