"""Evaluation at a stage end: the stage's exported model on the stage's benchmark, on every rank.

The stage's `evaluate` section is framework/evaluate's EvalConfig itself (one definition); its
`benchmark_name` says what to evaluate on. Ranks encode disjoint shares of the benchmark (framework/
evaluate's Shard, gathered here through framework/parallel); rank 0 prints the table, writes
<output_dir>/evaluations/<stage>.json and logs an MLflow run nested under the stage's run.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from framework.parallel import all_gather_object, is_main, rank, world_size
from framework.tracking import NullTracker
from framework.train.config import StageConfig


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
