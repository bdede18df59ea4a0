"""Side-by-side table of MLflow runs' metrics (evaluation runs, training runs, or both).

    python tools/compare_runs.py --tracking-uri sqlite:///mlflow.db RUN_ID RUN_ID ...
    python tools/compare_runs.py --tracking-uri sqlite:///mlflow.db --experiment evaluation \\
        --metrics '*_ndcg_at_10,*_recall_at_100' --exclude-nested

Rows are metrics (latest value of each), columns are runs (name and the first 8 characters of the id),
"-" where a run lacks a metric. --metrics takes comma-separated glob patterns (fnmatch); a pattern
without a wildcard matches any metric name containing it.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def metric_filter(patterns: list[str]):
    """Predicate of a metric name: matches any glob (or contains any plain word); all names when empty."""
    def keep(name: str) -> bool:
        if not patterns:
            return True
        return any(fnmatch.fnmatchcase(name, p) if any(c in p for c in "*?[") else p in name for p in patterns)
    return keep


def fetch_runs(client, run_ids: list[str], experiment: str | None, exclude_nested: bool, max_runs: int) -> list:
    """The runs named by id, then those of the experiment (newest first); ValueError if none exist."""
    runs = [client.get_run(run_id) for run_id in run_ids]
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = [e.name for e in client.search_experiments()]
            raise ValueError(f"no experiment named {experiment!r}; the store has {names}")
        listed = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"],
                                    max_results=max_runs)
        runs += [r for r in listed if not (exclude_nested and "mlflow.parentRunId" in r.data.tags)]
    if not runs:
        raise ValueError("no runs to compare; pass run ids or --experiment NAME")
    return runs


def run_label(run) -> str:
    name = run.data.tags.get("mlflow.runName") or run.info.run_name or ""
    return f"{name} ({run.info.run_id[:8]})" if name else run.info.run_id[:8]


def comparison_table(runs: list, keep) -> str:
    """Markdown table: one row per metric any run has, one column per run."""
    names = sorted({m for r in runs for m in r.data.metrics if keep(m)})
    if not names:
        raise ValueError("no metric matches --metrics in these runs; loosen the patterns")
    header = ["metric", *(run_label(r) for r in runs)]
    rows = [[name, *(_fmt(r.data.metrics.get(name)) for r in runs)] for name in names]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_ids", nargs="*", help="MLflow run ids to compare")
    parser.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else MLflow's default)")
    parser.add_argument("--experiment", help="also compare the runs of this experiment (newest first)")
    parser.add_argument("--max-runs", type=int, default=20, help="at most this many runs from --experiment")
    parser.add_argument("--exclude-nested", action="store_true", help="skip child runs of --experiment")
    parser.add_argument("--metrics", default="", help="comma-separated glob patterns of metric names to show")
    args = parser.parse_args(argv)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(args.tracking_uri)
    try:
        runs = fetch_runs(client, args.run_ids, args.experiment, args.exclude_nested, args.max_runs)
        print(comparison_table(runs, metric_filter([p.strip() for p in args.metrics.split(",") if p.strip()])))
    except (ValueError, MlflowException) as err:
        print(f"compare_runs: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
