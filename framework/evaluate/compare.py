"""Training runs side by side: one column per run, holding its final evaluation, then its stages' evaluations.

The MLflow layout it reads (framework/tracking.py, framework/evaluate/tracking.py):

    training run (top level, named after the run config)
      stage run (one per curriculum stage, tag `stage`; loss curves as step metrics)
        evaluate-<stage>   evaluation at the stage end
      evaluate-final       an evaluation of the last export logged under the training run (the demo's)

An evaluation run carries the params `benchmark` and `modes`; its metrics are "<mode>_<metric>"
(the macro average over tasks, e.g. all_ndcg_at_10), "<group>_<mode>_<metric>" (cross-lingual_dense_...)
and "<task>_<mode>_<metric>" (de-en_dense_...), plus timings (framework/evaluate/report.py). Which
prefixes are groups comes from the run's results.json artifact.

A run's final evaluation is the latest evaluation directly under it, else the one of its last evaluated
stage; a run that is itself an evaluation is its own final evaluation. Rows: the final evaluation's
averages over all tasks, each stage's as `stage/metric` (unless it is the final one), then with `per_task`
the group averages and per-task rows of both.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from framework.evaluate.metrics import METRICS

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
LEVELS = ("overall", "group", "task")
TIMINGS = ("ms_per_query", "passages_per_s")
PAGE = 1000  # runs per search request (MLflow's cap is 50000; smaller pages start printing sooner)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation run's metrics, each with its level and prefix."""

    run_id: str
    """MLflow run id."""
    metrics: dict[str, float]
    """Latest value of every metric, by its MLflow name."""
    levels: dict[str, tuple[str, str]]
    """Metric name -> (level in LEVELS, group or task name; "" for overall)."""


@dataclass(frozen=True)
class StageRecord:
    """One stage run of a training run."""

    name: str
    """Stage name (the run's name)."""
    run_id: str
    """MLflow run id."""
    evaluation: Evaluation | None
    """The latest evaluation at the stage end, if any."""


@dataclass(frozen=True)
class RunRecord:
    """One compared run (a column)."""

    run_id: str
    """MLflow run id."""
    label: str
    """Column header: the run's name and the first 8 characters of its id."""
    stages: tuple[StageRecord, ...]
    """Stage runs in start order."""
    final: Evaluation | None
    """The final evaluation (see the module docstring)."""


@dataclass(frozen=True)
class CompareOptions:
    """Which rows the table shows and how."""

    metrics: tuple[str, ...] = ()
    """Glob patterns (fnmatch) of metric names; a pattern without a wildcard matches names containing it;
    empty: every metric."""
    per_task: bool = False
    """Add the per-task rows (after all averages)."""
    baseline: bool = False
    """Show each value after the first column with its difference to the first column's."""


@dataclass(frozen=True)
class Comparison:
    """The table: rows of labelled values, one value per run."""

    columns: tuple[str, ...]
    """Run labels."""
    rows: tuple[tuple[str, tuple[float | None, ...]], ...]
    """(label, values) in display order."""

    def markdown(self, baseline: bool = False) -> str:
        cells = [[label, *(_cell(v, values[0] if baseline and i else None) for i, v in enumerate(values))]
                 for label, values in self.rows]
        header = ["metric", *self.columns]
        widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
        def line(row: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                     for i, (c, w) in enumerate(zip(row, widths))) + " |"
        return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def metric_filter(patterns: tuple[str, ...]):
    """Predicate of a metric name: matches any glob (or contains any plain word); all names when empty."""
    def keep(name: str) -> bool:
        if not patterns:
            return True
        return any(fnmatch.fnmatchcase(name, p) if any(c in p for c in "*?[") else p in name for p in patterns)
    return keep


def compare(records: list[RunRecord], options: CompareOptions) -> Comparison:
    """The comparison table of `records` (columns in the given order)."""
    keep = metric_filter(options.metrics)
    sections = [("", lambda r: r.final)]
    sections += [(f"{name}/", lambda r, n=name: _stage_evaluation(r, n)) for name in _shown_stages(records)]
    level_sets = [("overall",)] + ([("group", "task")] if options.per_task else [])
    rows = []
    for levels in level_sets:
        for prefix, pick in sections:
            evaluations = [pick(r) for r in records]
            rows += [(prefix + name, tuple(None if e is None else e.metrics.get(name) for e in evaluations))
                     for name in _row_names(evaluations, levels, keep)]
    if not rows:
        raise ValueError("no evaluation metric matches --metrics in these runs; loosen the patterns, or check "
                         "that the runs were evaluated (a stage's evaluate.benchmark, or `framework evaluate`)")
    return Comparison(tuple(r.label for r in records), tuple(rows))


def _row_names(evaluations: list[Evaluation | None], levels: tuple[str, ...], keep) -> list[str]:
    """Metric names of these levels that any evaluation has, ordered by level, group/task, name.

    A pattern may name the metric with or without its group/task prefix: `dense_*` keeps
    de-en_dense_ndcg_at_10 too, `de-en` keeps that task's rows.
    """
    found = set()
    for e in (e for e in evaluations if e is not None):
        for name in e.metrics:
            level, prefix = e.levels[name]
            if level in levels and (keep(name) or (prefix and keep(name[len(prefix) + 1:]))):
                found.add((LEVELS.index(level), prefix, name))
    return [name for _, _, name in sorted(found)]


def _shown_stages(records: list[RunRecord]) -> list[str]:
    """Evaluated stages in curriculum order, less one whose evaluation is every run's final one (shown already)."""
    names = list(dict.fromkeys(s.name for r in records for s in r.stages if s.evaluation is not None))
    def repeats_final(name: str) -> bool:
        pairs = [(_stage_evaluation(r, name), r.final) for r in records]
        return all(e is None or (f is not None and e.run_id == f.run_id) for e, f in pairs)
    return [name for name in names if not repeats_final(name)]


def _stage_evaluation(record: RunRecord, stage: str) -> Evaluation | None:
    found = [s.evaluation for s in record.stages if s.name == stage]
    return found[-1] if found else None


def _cell(value: float | None, base: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if base is None else f"{value:.4f} ({value - base:+.4f})"


# ---- reading the store ---------------------------------------------------------------------------


def load_records(client, run_ids: list[str], experiment: str | None, max_runs: int,
                 with_groups: bool = False) -> list[RunRecord]:
    """The named runs (in order), then the experiment's top-level runs (the newest `max_runs`, oldest first).

    `with_groups` reads each evaluation's results.json to tell group averages from tasks (needed only for
    per-task rows); without it every prefixed metric counts as a task's.
    """
    runs = [client.get_run(run_id) for run_id in run_ids]
    if experiment:
        runs += top_level_runs(client, experiment, max_runs)
    if not runs:
        raise ValueError("no runs to compare; pass run ids or --experiment NAME")
    return [run_record(client, run, with_groups) for run in runs]


def top_level_runs(client, experiment: str, max_runs: int) -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise ValueError(f"no experiment named {experiment!r}; the store has {names}")
    runs, token = [], None
    while len(runs) < max_runs:
        page = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"],
                                  max_results=PAGE, page_token=token)
        runs += [r for r in page if PARENT_TAG not in r.data.tags]
        token = page.token
        if not token:
            break
    if not runs:
        raise ValueError(f"experiment {experiment!r} has no top-level runs; pass run ids instead")
    return runs[:max_runs][::-1]


def run_record(client, run, with_groups: bool = False) -> RunRecord:
    label = run_label(run)
    if is_evaluation(run):
        return RunRecord(run.info.run_id, label, (), evaluation(client, run, with_groups))
    children = _children(client, run)
    stages = tuple(StageRecord(c.info.run_name or c.info.run_id[:8], c.info.run_id,
                               _latest_evaluation(client, c, with_groups)) for c in children if not is_evaluation(c))
    direct = [c for c in children if is_evaluation(c)]
    final = evaluation(client, direct[-1], with_groups) if direct else next(
        (s.evaluation for s in reversed(stages) if s.evaluation is not None), None)
    return RunRecord(run.info.run_id, label, stages, final)


def run_label(run) -> str:
    name = run.data.tags.get("mlflow.runName") or run.info.run_name or ""
    return f"{name} ({run.info.run_id[:8]})" if name else run.info.run_id[:8]


def is_evaluation(run) -> bool:
    return {"benchmark", "modes"} <= set(run.data.params)


def _children(client, run) -> list:
    return list(client.search_runs([run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{run.info.run_id}'",
                                   order_by=["attributes.start_time ASC"], max_results=PAGE))


def _latest_evaluation(client, stage_run, with_groups: bool) -> Evaluation | None:
    evaluations = [c for c in _children(client, stage_run) if is_evaluation(c)]
    return evaluation(client, evaluations[-1], with_groups) if evaluations else None


def evaluation(client, run, with_groups: bool = False) -> Evaluation:
    modes = tuple(m for m in run.data.params["modes"].split(",") if m)
    groups = _group_names(client, run.info.run_id) if with_groups else set()
    metrics = dict(run.data.metrics)
    return Evaluation(run.info.run_id, metrics, {m: classify(m, modes, groups) for m in metrics})


def classify(name: str, modes: tuple[str, ...], groups: set[str]) -> tuple[str, str]:
    """(level, prefix) of an evaluation metric name; a name of unknown form counts as overall (shown, not lost)."""
    suffix = next((s for s in (*METRICS, *TIMINGS) if name.endswith("_" + s)), None)
    if suffix is None:
        return "overall", ""
    rest = name[: -len(suffix) - 1]
    if rest in modes or suffix == "passages_per_s":
        return "overall", ""
    # Longest mode first: "de_dense_sparse_..." is task de with mode dense_sparse, not "de_dense" with sparse.
    for mode in sorted(modes, key=len, reverse=True):
        if rest.endswith("_" + mode):
            prefix = rest[: -len(mode) - 1]
            return ("group" if prefix in groups else "task"), prefix
    return "overall", ""


def _group_names(client, run_id: str) -> set[str]:
    """The evaluation's task groups, from its results.json artifact; empty (with a warning) when unreadable."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, "results.json", tmp)
            return set(json.loads(Path(path).read_text(encoding="utf-8")).get("groups", {}))
    except Exception as err:  # noqa: BLE001 - any store error only costs the group/task split
        log.warning("run %s: results.json unreadable (%s: %s); its group averages are sorted among the tasks",
                    run_id[:8], type(err).__name__, err)
        return set()
