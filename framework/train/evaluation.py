"""Evaluation of a stage on its benchmark: during training (the live weights every `every_steps` optimizer
steps, the best export, early stopping) and at its end (the exported model), on every rank.

The stage's `evaluate` section is framework/evaluate's EvalConfig itself (one definition); its
`benchmark_name` says what to evaluate on. Ranks encode disjoint shares of the benchmark (framework/
evaluate's Shard, gathered here through framework/parallel).

At a stage end rank 0 prints the table, writes <output_dir>/evaluations/<stage>.json and logs an MLflow
run nested under the stage's run. During training the overall and group averages go to the stage's own
run at that step (`eval/<mode>_<metric>`, `eval/<group>_<mode>_<metric>`), and framework/train/best.py
keeps the best weights and counts the patience.

During training the live weights are evaluated without writing an export: a replica of the model (built
once per stage on the meta device, so its construction draws no random numbers) receives the weights
the optimizer holds (the fp32 master copy, gathered on every rank at every ZeRO stage, exactly what an
export writes) and is encoded in eval mode. The DeepSpeed-wrapped module itself is never run or
switched out of train mode: under ZeRO-3 its forward gathers each layer collectively, which ranks
encoding different numbers of batches would deadlock, and its bf16 weights would score differently from
the fp32 export that the best JSON describes. The price is one fp32 copy of the model on each device.
"""
from __future__ import annotations

import dataclasses
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from framework.model import M3Model
from framework.parallel import all_gather_object, broadcast_object, is_main, rank, world_size
from framework.tracking import NullTracker
from framework.train.best import BestExport, BestTracker, Decision
from framework.train.config import StageConfig
from framework.train.export import full_parameters


def evaluate_stage(stage: StageConfig, export_dir: Path, tracker: NullTracker, output_dir: Path) -> dict:
    from framework.evaluate import Shard, TrackingConfig, evaluate, summary

    cfg = dataclasses.replace(stage.evaluate, progress=stage.evaluate.progress and is_main())
    tracking = None
    if tracker.tracking_uri is not None:
        tracking = TrackingConfig(uri=tracker.tracking_uri, parent_run_id=tracker.stage_run_id,
                                  experiment=getattr(tracker, "experiment", "evaluation"),
                                  run_name=f"evaluate-{stage.name}")
    out = Path(output_dir) / "evaluations" / f"{stage.name}.json"
    results = evaluate(export_dir, stage.evaluate.benchmark_name, cfg, tracking=tracking, out=out,
                       shard=Shard(rank(), world_size(), all_gather_object))
    if is_main():
        print(f"[{stage.name}] evaluation of {export_dir}:\n{summary(results)}", flush=True)
    return results


@contextmanager
def preserved_rng(device: torch.device):
    """Leaves every random state as it found it (torch CPU and CUDA, numpy, random): training's dropout
    and data draws after an evaluation are those of a run without it."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def build_replica(live: M3Model, device: torch.device) -> M3Model:
    """An uninitialised fp32 copy of the live model's architecture on `device` (weights: `load_weights`)."""
    cfg = dataclasses.replace(live.cfg, path="", gradient_checkpointing=False)
    with torch.device("meta"):
        encoder = type(live.encoder)(live.encoder.config, add_pooling_layer=False)
        replica = M3Model(encoder, live.unused_ids.tolist(), cfg, colbert_dim=live.colbert_linear.out_features)
    return replica.to_empty(device=device).float().eval().requires_grad_(False)


@torch.no_grad()
def load_weights(live: M3Model, replica: M3Model) -> None:
    """Copy the live weights (trained parameters from the optimizer's fp32 master copy) and buffers into the
    replica; every rank calls it (gathering is a collective)."""
    params, buffers = dict(replica.named_parameters()), dict(replica.named_buffers())
    copied = set()
    for name, value in full_parameters(live):
        params[name].copy_(value)
        copied.add(name)
    for name, buffer in live.named_buffers():
        buffers[name].copy_(buffer)
    assert copied == set(params) and set(dict(live.named_buffers())) == set(buffers), "replica differs from live"


def logged_metrics(results: dict) -> dict[str, float]:
    """The overall and group averages of an evaluation under their MLflow names (eval/all_ndcg_at_10,
    eval/monolingual_dense_recall_at_100); per-task values stay out (hundreds of metrics per step)."""
    from framework.evaluate.report import safe_name

    tables = [("", results["overall"])] + [(safe_name(g) + "_", t) for g, t in results["groups"].items()]
    return {f"eval/{prefix}{mode}_{metric}": float(value)
            for prefix, table in tables for mode, values in table.items() for metric, value in values.items()}


class LiveEvaluation:
    """The stage's benchmark on the live weights of the model training updates, without an export."""

    def __init__(self, stage: StageConfig, live: M3Model, tokenizer, device: torch.device,
                 prompts: dict[str, str] | None = None):
        from framework.evaluate import load_benchmark
        from framework.evaluate.config import BASE_MODES, MODE_HEADS

        self.live, self.tokenizer, self.device = live, tokenizer, device
        # The prompts the export will save: the live weights are scored as the exported model will be.
        self.prompts = dict(prompts or {})
        heads = {head for head in ("dense", "sparse", "colbert") if getattr(live.cfg, head)}
        # BM25 does not depend on the weights: computed every time it would only cost.
        modes = stage.evaluate.modes or tuple(m for m in BASE_MODES if m != "bm25" and set(MODE_HEADS[m]) <= heads)
        self.cfg = dataclasses.replace(stage.evaluate, modes=modes, progress=False)
        # Loaded (and checked) when the stage starts, not at its first evaluation N steps later.
        self.benchmark = load_benchmark(self.cfg.benchmark_name, self.cfg.benchmark)
        self.replica: M3Model | None = None

    def __call__(self) -> dict:
        """The results dict (framework/evaluate/report.py), the same on every rank."""
        from framework.evaluate import Shard, evaluate
        from framework.inference import M3Embedder

        with preserved_rng(self.device):
            if self.replica is None:
                self.replica = build_replica(self.live, self.device)
            load_weights(self.live, self.replica)
            embedder = M3Embedder(self.replica, self.tokenizer, self.device, self.prompts)
            return evaluate(embedder, self.benchmark, self.cfg, shard=Shard(rank(), world_size(), all_gather_object))


class TrainingEvaluation:
    """Evaluation during one stage: every `every_steps` optimizer steps the live weights on the benchmark,
    the averages logged to the stage's run at that step, the best kept and the patience counted. Every rank
    takes part; rank 0's scores are broadcast so that every rank's BestTracker (checkpoint client state)
    and its decision to stop are the same."""

    def __init__(self, stage: StageConfig, task, device: torch.device, tracker: NullTracker, exports: Path):
        cfg = stage.evaluate
        self.stage, self.every, self.tracker, self.task = stage.name, cfg.every_steps, tracker, task
        self.live = LiveEvaluation(stage, task.model, task.tokenizer, device, task.inference_prompts)
        self.score_name = None
        if cfg.best_metric is not None:
            mode, metric = cfg.best_key()
            self.score_name = f"eval/{mode}_{metric}"
        self.best = BestTracker(cfg.best_metric, cfg.patience, cfg.min_delta)
        self.files = BestExport(exports, stage.name) if cfg.best_metric is not None else None
        self.next_from = cfg.next_stage_from
        self.checkpointed_step: int | None = None

    # ---- the stage's life ---------------------------------------------------------------------
    def start(self, state: dict | None, step: int) -> None:
        """A fresh stage (state None, step 0) or one resumed at `step` with the checkpoint's state."""
        if state is not None:
            self.best.load_state_dict(state)
            self.checkpointed_step = step
        if self.files is None:
            return
        if not self.files.reconcile(self.best.best_step):
            if is_main():
                print(f"[{self.stage}] warning: the best export of step {self.best.best_step} is gone; the next "
                      "evaluation becomes the best", flush=True)
            self.best.forget_best()
        if self.best.history:
            self.files.update_record(self.best.record())

    def due(self, step: int) -> bool:
        return step % self.every == 0

    @property
    def stopped(self) -> bool:
        return self.best.stopped_at is not None

    def run(self, step: int) -> Decision:
        """Evaluate at `step` (every rank), log, keep the best; the decision is the same on every rank."""
        start = time.perf_counter()
        results = self.live()
        seconds = time.perf_counter() - start
        metrics, seconds = broadcast_object((logged_metrics(results), seconds) if is_main() else None)
        score = metrics[self.score_name] if self.score_name else None
        decision = self.best.observe(step, score, metrics, seconds)
        if self.files is not None:
            if decision.improved:
                self.files.write(self.best.record(), self.task.export, self.checkpointed_step)
            else:
                self.files.update_record(self.best.record())
        extra = {"eval/seconds": seconds}
        if self.best.best_score is not None:
            extra[f"eval/best_{self.score_name[len('eval/'):]}"] = self.best.best_score
        self.tracker.log_metrics({**metrics, **extra}, step)
        if is_main():
            print(self._line(step, score, decision, seconds, results), flush=True)
        return decision

    def _line(self, step: int, score: float | None, decision: Decision, seconds: float, results: dict) -> str:
        head = f"[{self.stage}] step {step} evaluation on {results['benchmark']} ({seconds:.1f} s): "
        if score is None:
            overall = results["overall"]
            return head + ", ".join(f"{mode} nDCG@10 {values['ndcg_at_10']:.4f}" for mode, values in overall.items())
        best = self.best
        line = head + f"{best.metric} {score:.4f} " + (
            "(new best)" if decision.improved else
            f"(best {best.best_score:.4f} at step {best.best_step}; {best.without_improvement} evaluation(s) "
            f"without improvement{f' of {best.patience}' if best.patience else ''})")
        if decision.stop:
            line += (f"\n[{self.stage}] stopping early at step {step}: {best.metric} has not improved for "
                     f"{best.patience} evaluation(s); best {best.best_score:.4f} at step {best.best_step}")
        return line

    def checkpointed(self, step: int) -> None:
        """A checkpoint at `step` is complete (and holds this state)."""
        self.checkpointed_step = step
        if self.files is not None:
            self.files.checkpointed(step)

    def state_dict(self) -> dict:
        return self.best.state_dict()

    # ---- the stage's end ----------------------------------------------------------------------
    def next_start(self, last_export: Path) -> Path:
        """The directory the next stage starts from: the best export or the last, as configured."""
        if self.next_from != "best":
            return last_export
        if self.files is not None and self.files.dir.is_dir():
            return self.files.dir
        if is_main():
            print(f"[{self.stage}] warning: next_stage_from=best but no evaluation ran; the next stage starts from "
                  f"{last_export}", flush=True)
        return last_export

    def summary(self) -> dict:
        """What the stage's done marker records of its evaluations."""
        best = self.best
        info = {"evaluations": len(best.history), "evaluation_s": round(best.seconds, 1)}
        if self.files is not None:
            info.update(best_export=str(self.files.dir), best_metric=best.metric, best_score=best.best_score,
                        best_step=best.best_step)
        if best.stopped_at is not None:
            info["stopped_early_at"] = best.stopped_at
        return info

    def finish(self) -> None:
        """Log the best record as an artifact of the stage's run."""
        if self.files is not None and self.files.score_file.is_file():
            self.tracker.log_artifact(self.files.score_file, "evaluation")
