"""Training runs side by side: one column per run with its final evaluation, stage evaluations as rows.

    python tools/compare_runs.py --tracking-uri sqlite:///runs/demo/mlflow.db --experiment m3-demo --metrics ndcg
    python tools/compare_runs.py --experiment m3-demo --metrics all_ndcg_at_10 --per-task --baseline
    python tools/compare_runs.py RUN_ID RUN_ID --metrics '*_ndcg_at_10,*_recall_at_100' --plot runs.png

Columns: the runs named by id (in that order), then the experiment's top-level runs (oldest first).
Rows: the final evaluation's averages over all tasks, each stage's evaluation as `stage/metric`, and with
--per-task the task groups' averages and the per-task rows; "-" where a run lacks a value. --metrics takes
comma-separated glob patterns (fnmatch); a pattern without a wildcard matches any name containing it.
The logic is framework/evaluate/compare.py (and compare_plot.py for --plot).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# --per-task reads one small results.json per evaluation run: no progress bar for each.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_ids", nargs="*", help="MLflow run ids to compare (training or evaluation runs)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else MLflow's default)")
    parser.add_argument("--experiment", help="also compare the top-level runs of this experiment")
    parser.add_argument("--max-runs", type=int, default=20, help="at most this many runs from --experiment "
                        "(the newest)")
    parser.add_argument("--metrics", default="", help="comma-separated glob patterns of metric names to show")
    parser.add_argument("--per-task", action="store_true", help="add rows per task group and per task (direction)")
    parser.add_argument("--baseline", action="store_true", help="show differences to the first column")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the loss curves and stage-end metrics")
    args = parser.parse_args(argv)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from framework.evaluate.compare import CompareOptions, compare, load_records

    options = CompareOptions(metrics=tuple(p.strip() for p in args.metrics.split(",") if p.strip()),
                             per_task=args.per_task, baseline=args.baseline)
    client = MlflowClient(args.tracking_uri)
    try:
        records = load_records(client, args.run_ids, args.experiment, args.max_runs, with_groups=args.per_task)
        print(compare(records, options).markdown(baseline=options.baseline))
        if args.plot:
            from framework.evaluate.compare_plot import loss_curves, plot_comparison

            path = plot_comparison(records, [loss_curves(client, r) for r in records], options.metrics, args.plot)
            print(f"wrote {path}", file=sys.stderr)
    except (ValueError, MlflowException) as err:
        print(f"compare_runs: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
