"""Results of an evaluation: the results dict, its flat metric names, tables, results.json.

Results dict keys: model, benchmark, split, modes, overall {mode: {metric: value}}, groups {group:
{mode: ...}}, per_task {task: {mode: ...}}, tasks {task: sizes}, timings, config, mlflow_run_id, metrics.

`metrics` flattens the tables to MLflow-safe names: "<mode>_<metric>" for the overall macro average
(dense_ndcg_at_10), "<group>_<mode>_<metric>" (monolingual_dense_ndcg_at_10) and
"<task>_<mode>_<metric>" (de_dense_ndcg_at_10, de-en_all_recall_at_100), plus "<mode>_ms_per_query"
and "corpus_passages_per_s". MLflow rejects "@" and "+", so names use _at_ and the dense_sparse mode name.
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from framework.evaluate.config import LABELS as MODE_LABELS
from framework.evaluate.metrics import LABELS as METRIC_LABELS
from framework.evaluate.metrics import METRICS

# Characters MLflow accepts in a metric name; anything else in a task name becomes "_".
UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def safe_name(name: str) -> str:
    return UNSAFE.sub("_", name)


def mode_label(mode: str) -> str:
    return MODE_LABELS.get(mode, mode)


def flat_metrics(results: dict) -> dict[str, float]:
    """Every metric under its MLflow name (see the module docstring)."""
    flat: dict[str, float] = {}
    for prefix, table in [("", results["overall"])] + \
            [(safe_name(g) + "_", t) for g, t in results["groups"].items()] + \
            [(safe_name(task) + "_", t) for task, t in results["per_task"].items()]:
        for mode, values in table.items():
            flat.update({f"{prefix}{mode}_{metric}": value for metric, value in values.items()})
    timings = results["timings"]
    flat.update({f"{mode}_ms_per_query": ms for mode, ms in timings["search_ms_per_query"].items()})
    if timings.get("corpus_passages_per_s"):
        flat["corpus_passages_per_s"] = timings["corpus_passages_per_s"]
    return flat


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def mode_table(results: dict) -> str:
    """Modes x (nDCG@10, R@20, R@100, MRR@10, ms/query), macro-averaged over tasks, x100 as in the paper."""
    header = ["mode", *(METRIC_LABELS[m] for m in METRICS), "ms/query"]
    latency = results["timings"]["search_ms_per_query"]
    rows = [[mode_label(mode), *(f"{100 * values[m]:.1f}" for m in METRICS), f"{latency[mode]:.3f}"]
            for mode, values in results["overall"].items()]
    return _markdown(header, rows)


def task_table(results: dict, metric: str = "ndcg_at_10") -> str:
    """Tasks (then group and overall averages) x modes for one metric, x100."""
    modes = results["modes"]
    header = [f"{METRIC_LABELS[metric]}", *(mode_label(m) for m in modes)]
    rows = [[task, *(f"{100 * table[m][metric]:.1f}" for m in modes)] for task, table in results["per_task"].items()]
    rows += [[f"avg {group}", *(f"{100 * table[m][metric]:.1f}" for m in modes)]
             for group, table in results["groups"].items()]
    rows.append(["avg", *(f"{100 * results['overall'][m][metric]:.1f}" for m in modes)])
    return _markdown(header, rows)


def task_csv(results: dict) -> str:
    """One row per (task, mode) with every metric; the per-language table as CSV."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["task", "group", "mode", *METRICS])
    for task, table in results["per_task"].items():
        group = results["tasks"][task]["group"]
        for mode, values in table.items():
            writer.writerow([task, group, mode, *(f"{values[m]:.6f}" for m in METRICS)])
    return buffer.getvalue()


def summary(results: dict) -> str:
    """The printed end-of-run report: sizes and speed, the mode table, the per-task nDCG@10 table."""
    t = results["timings"]
    speed = f"{t['corpus_passages_per_s']:.1f} passages/s" if t.get("corpus_passages_per_s") else "n/a"
    total = f"; total {t['total_s']:.1f} s" if "total_s" in t else ""
    lines = [f"{results['benchmark']} ({results['split']}): {len(results['per_task'])} task(s), "
             f"{t['query_texts']} queries, {t['corpus_texts']} distinct documents; corpus encoding {speed}{total}",
             "", mode_table(results), "", task_table(results)]
    return "\n".join(lines)


def write_results(results: dict, path: Path) -> None:
    """results.json (UTF-8, indented)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
