"""Evaluation at a stage end: the stage's exported model on the stage's benchmark, on every rank.

Ranks encode disjoint shares of the benchmark (framework/evaluate's Shard, gathered here through
framework/parallel); rank 0 prints the table, writes <output_dir>/evaluations/<stage>.json and logs an
MLflow run nested under the stage's run.
"""
from __future__ import annotations

from pathlib import Path

from framework.parallel import all_gather_object, is_main, rank, world_size
from framework.tracking import NullTracker
from framework.train.config import StageConfig


def evaluate_stage(stage: StageConfig, export_dir: Path, tracker: NullTracker, output_dir: Path) -> dict:
    from framework.evaluate import BenchmarkConfig, EvalConfig, Shard, TrackingConfig, evaluate, summary

    cfg = EvalConfig(batch_size=stage.evaluate.batch_size, progress=is_main(),
                     benchmark=BenchmarkConfig(tasks=tuple(stage.evaluate.tasks),
                                               max_queries=stage.evaluate.max_queries))
    tracking = None
    if tracker.tracking_uri is not None:
        tracking = TrackingConfig(tracking_uri=tracker.tracking_uri, parent_run_id=tracker.stage_run_id,
                                  experiment=getattr(tracker, "experiment", "evaluation"),
                                  run_name=f"evaluate-{stage.name}")
    out = Path(output_dir) / "evaluations" / f"{stage.name}.json"
    results = evaluate(export_dir, stage.evaluate.benchmark, cfg, tracking=tracking, out=out,
                       shard=Shard(rank(), world_size(), all_gather_object))
    if is_main():
        print(f"[{stage.name}] evaluation of {export_dir}:\n{summary(results)}", flush=True)
    return results
