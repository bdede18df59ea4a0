"""The issue's targets (paper Tables 1, 3 and 5, in direction), checked on the bench's summary dict.

Each check says reproduced / not reproduced with the numbers it read (macro nDCG@10 x100, mean over seeds
with the per-seed paired differences). "Beyond the seed noise" needs a standard error, so at one seed
(the quick mode) that target is reported as not decidable rather than as reproduced.
"""
from __future__ import annotations

from .stats import Estimate, paired

HELD = ("mono-held", "cross-held")


def _arm(summary: dict, arm: str, mode: str, group: str) -> list[float]:
    runs = summary["arms"][arm]
    return [runs[s][mode][group] for s in sorted(runs)]


def _diff(e: Estimate) -> str:
    seeds = " ".join(f"{100 * v:+.1f}" for v in e.values)
    se = "" if e.se is None else f" ± {100 * e.se:.1f}"
    return f"{100 * e.mean:+.1f}{se} [{seeds}]"


def _verdict(ok: bool) -> str:
    return "**reproduced**" if ok else "**not reproduced**"


def checks(summary: dict) -> list[str]:
    arms, zero = summary.get("arms") or {}, summary["zero_shot"]
    if "m3" not in arms:
        return []
    lines = []
    for row, label in (("dense", "CLS row"), ("mean_prefix", "mE5's own mean-pooling row")):
        d = paired(_arm(summary, "m3", "dense", "all"), zero[row]["all"])
        lines.append(f"(d) dense beats (a), {label} (avg of 29): {_diff(d)} -> {_verdict(d.mean > 0)}")
    a_ds = paired(_arm(summary, "m3", "all", "all"), _arm(summary, "m3", "dense_sparse", "all"))
    ds_d = paired(_arm(summary, "m3", "dense_sparse", "all"), _arm(summary, "m3", "dense", "all"))
    lines.append(f"all >= dense+sparse >= dense for (d): all - dense+sparse {_diff(a_ds)}, dense+sparse - dense "
                 f"{_diff(ds_d)} -> {_verdict(a_ds.mean >= 0 and ds_d.mean >= 0)}")
    if "no_kd" in arms:
        sp = paired(_arm(summary, "m3", "sparse", "all"), _arm(summary, "no_kd", "sparse", "all"))
        if sp.se is None:
            verdict = "direction " + ("as the paper's" if sp.mean > 0 else "against the paper's") + \
                "; beyond the seed noise: **not decidable with one seed**"
        else:
            verdict = _verdict(sp.mean > 2 * sp.se)
        lines.append(f"self-distillation lifts the sparse head, (d) sparse - (c) sparse: {_diff(sp)} -> {verdict}")
    cross = [paired(_arm(summary, "m3", "all", g), zero["bm25"][g]) for g in ("cross-seen", "cross-held")]
    lines.append(f"(d) all beats BM25 cross-lingually: trained {_diff(cross[0])}, held out {_diff(cross[1])} -> "
                 f"{_verdict(all(c.mean > 0 for c in cross))}")
    per_task = summary["arms_per_task"]["m3"]
    wins = []
    for task, table in sorted(summary["zero_shot_per_task"].items()):
        ours = sum(per_task[s][task]["all"] for s in per_task) / len(per_task)
        if "-" not in task and table["bm25"] > ours:
            wins.append(f"{task} by {100 * (table['bm25'] - ours):.1f}")
    lines.append("monolingual directions where BM25 still beats (d) all: " + (", ".join(wins) or "none"))
    best = {g: max(zero[r][g] for r in zero if r != "bm25") for g in HELD}
    forget = [paired(_arm(summary, "m3", "dense", g), zero["dense"][g]) for g in HELD]
    forget_all = [paired(_arm(summary, "m3", "all", g), best[g]) for g in HELD]
    lines.append(f"no forgetting on the held-out languages: (d) dense - (a) dense: mono {_diff(forget[0])}, cross "
                 f"{_diff(forget[1])}; (d) all - (a) best zero-shot row: mono {_diff(forget_all[0])}, cross "
                 f"{_diff(forget_all[1])} -> {_verdict(all(f.mean >= 0 for f in forget + forget_all))}")
    return lines


def targets_section(summary: dict) -> list[str]:
    lines = checks(summary)
    if not lines:
        return []
    return ["## Targets of issue 12 (the paper's directions)", "",
            "Differences x100, mean ± SE over seeds [per seed]; groups as in the tables above.", "",
            *(f"- {line}" for line in lines), ""]
