"""Paired differences between two quality-bench reports made with the same seeds (bench/quality.py).

    python -m bench.compare_reports BASE/summary.json NEW/summary.json [--arms m3 no_kd] [--modes sparse ...]

Two work folders of bench/quality.py that differ in one setting (for example the sparse head's start,
ModelConfig.sparse_init) train seed s from the same data order and dropout draws in both, so seed s of
NEW minus seed s of BASE is a paired difference. Prints, per arm, mode and group of directions, the
mean of each report and the mean difference with its standard error and the per-seed values
(nDCG@10 x100). Seeds present in only one report are left out and named.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.quality_lib.evaluation import GROUPS
from bench.quality_lib.report import GROUP_LABELS
from bench.quality_lib.stats import estimate


def paired_rows(base: dict, new: dict, arms: list[str], modes: list[str]) -> list[list[str]]:
    """[arm, mode, group, base mean, new mean, difference (SE), per seed] for every arm, mode and group."""
    rows = []
    for arm in arms:
        if arm not in base["arms"] or arm not in new["arms"]:
            raise SystemExit(f"arm {arm!r} is not in both reports (base has {sorted(base['arms'])}, "
                             f"new has {sorted(new['arms'])})")
        seeds = sorted(set(base["arms"][arm]) & set(new["arms"][arm]), key=int)
        if not seeds:
            raise SystemExit(f"arm {arm!r}: the reports share no seed")
        for mode in modes:
            for group in GROUPS:
                b = [100 * base["arms"][arm][s][mode][group] for s in seeds]
                n = [100 * new["arms"][arm][s][mode][group] for s in seeds]
                diff = estimate([y - x for x, y in zip(b, n)])
                se = f" ± {diff.se:.1f}" if diff.se is not None else ""
                rows.append([arm, mode, GROUP_LABELS[group], f"{estimate(b).mean:.1f}", f"{estimate(n).mean:.1f}",
                             f"{diff.mean:+.1f}{se}", " ".join(f"{v:+.1f}" for v in diff.values)])
    return rows


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="summary.json of the base report")
    parser.add_argument("new", type=Path, help="summary.json of the report compared with it")
    parser.add_argument("--arms", nargs="+", default=["m3", "no_kd"])
    parser.add_argument("--modes", nargs="+", default=["dense", "sparse", "dense_sparse", "all"])
    args = parser.parse_args(argv)
    base, new = (json.loads(p.read_text(encoding="utf-8")) for p in (args.base, args.new))
    for arm in args.arms:
        only = set(base["arms"].get(arm, {})) ^ set(new["arms"].get(arm, {}))
        if only:
            print(f"arm {arm}: seeds {sorted(only)} are in one report only and left out")
    rows = paired_rows(base, new, args.arms, args.modes)
    header = ["arm", "mode", "directions", "base", "new", "new - base (SE)", "per seed"]
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|" + "---:|" * 3 + "---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return rows


if __name__ == "__main__":
    main()
