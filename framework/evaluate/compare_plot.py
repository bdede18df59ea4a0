"""The comparison as a picture: training-loss curves of each run's stages, and the stage-end evaluations.

Top panel: the `loss` metric of every stage run, stages laid end to end (a stage's steps continue the
previous stage's), one colour per run, dotted lines at stage boundaries. Bottom panels: one per overall
evaluation metric (at most MAX_METRIC_PANELS, in the table's order), bars per run at each evaluation point
(each evaluated stage, then the final evaluation when it is a run of its own).

Drawn on a matplotlib `Figure` (no pyplot state, no display backend), saved as PNG.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from framework.evaluate.compare import TIMINGS, Evaluation, RunRecord, metric_filter

MAX_METRIC_PANELS = 6
LOSS_METRIC = "loss"


@dataclass(frozen=True)
class Curve:
    """One stage's logged loss."""

    stage: str
    """Stage name."""
    steps: tuple[int, ...]
    """Optimizer steps (the stage's own count)."""
    values: tuple[float, ...]
    """The metric at each step."""


def loss_curves(client, record: RunRecord, metric: str = LOSS_METRIC) -> list[Curve]:
    """The metric's history in each stage run of `record`, in stage order (stages that logged none are left out)."""
    curves = []
    for stage in record.stages:
        history = sorted(client.get_metric_history(stage.run_id, metric), key=lambda m: (m.step, m.timestamp))
        latest = {m.step: m.value for m in history}  # a step logged twice (a resumed run) keeps its last value
        if latest:
            curves.append(Curve(stage.name, tuple(latest), tuple(latest.values())))
    return curves


def evaluation_points(records: list[RunRecord]) -> list[str]:
    """Names of the evaluation points: the evaluated stages, then "final" when some final evaluation is separate."""
    names = list(dict.fromkeys(s.name for r in records for s in r.stages if s.evaluation is not None))
    separate = any(r.final is not None and r.final.run_id not in {s.evaluation.run_id for s in r.stages
                                                                   if s.evaluation is not None} for r in records)
    return names + (["final"] if separate or not names else [])


def plotted_metrics(records: list[RunRecord], patterns: tuple[str, ...]) -> list[str]:
    """Overall quality metrics (no timings) that match the patterns, sorted, at most MAX_METRIC_PANELS."""
    keep = metric_filter(patterns)
    evaluations = [e for r in records for e in [r.final, *(s.evaluation for s in r.stages)] if e is not None]
    names = sorted({m for e in evaluations for m, (level, _) in e.levels.items()
                    if level == "overall" and keep(m) and not m.endswith(TIMINGS)})
    return names[:MAX_METRIC_PANELS]


def plot_comparison(records: list[RunRecord], curves: list[list[Curve]], patterns: tuple[str, ...],
                    path: str | Path) -> Path:
    """Write the PNG; `curves[i]` are the loss curves of `records[i]`."""
    from matplotlib.figure import Figure

    metrics = plotted_metrics(records, patterns)
    fig = Figure(figsize=(max(9.0, 3.2 * max(1, len(metrics))), 7.5), layout="constrained")
    grid = fig.add_gridspec(2, max(1, len(metrics)))
    _loss_panel(fig.add_subplot(grid[0, :]), records, curves)
    points = evaluation_points(records)
    for i, metric in enumerate(metrics):
        _metric_panel(fig.add_subplot(grid[1, i]), records, points, metric)
    if not metrics:
        ax = fig.add_subplot(grid[1, 0])
        ax.axis("off")
        ax.text(0.5, 0.5, "no evaluation metric matches --metrics", ha="center", va="center")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _loss_panel(ax, records: list[RunRecord], curves: list[list[Curve]]) -> None:
    colors = [f"C{i % 10}" for i in range(len(records))]
    for record, run_curves, color in zip(records, curves, colors):
        offset = 0
        for j, curve in enumerate(run_curves):
            xs = [offset + s for s in curve.steps]
            ax.plot(xs, curve.values, color=color, marker=".", label=record.label if j == 0 else None)
            if j:
                ax.axvline(offset, color=color, linestyle=":", linewidth=1)
            ax.annotate(curve.stage, (xs[0], 1.0), xycoords=("data", "axes fraction"), fontsize=8, color=color,
                        va="top")
            offset = xs[-1]
    ax.set_title(f"training {LOSS_METRIC} (stages end to end)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(LOSS_METRIC)
    if any(curves):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no training loss logged in these runs", ha="center", va="center", transform=ax.transAxes)


def _metric_panel(ax, records: list[RunRecord], points: list[str], metric: str) -> None:
    width = 0.8 / max(1, len(records))
    for i, record in enumerate(records):
        values = [_value(_at(record, point), metric) for point in points]
        xs = [p + (i - (len(records) - 1) / 2) * width for p in range(len(points))]
        ax.bar(xs, [0.0 if v is None else v for v in values], width, color=f"C{i % 10}", label=record.label)
    ax.set_xticks(range(len(points)), points, fontsize=8)
    ax.set_title(metric, fontsize=9)
    ax.set_ylim(bottom=0)


def _at(record: RunRecord, point: str) -> Evaluation | None:
    if point == "final":
        return record.final
    found = [s.evaluation for s in record.stages if s.name == point]
    return found[-1] if found else None


def _value(evaluation: Evaluation | None, metric: str) -> float | None:
    return None if evaluation is None else evaluation.metrics.get(metric)
