"""Training arms of the quality bench, each stage one `python -m framework train` run chained by its export.

    (b) dense     recipe e5-small-dense.yaml:      warmup -> unified, dense head only
    (c) no_kd     recipe e5-small-no-distill.yaml: heads -> warmup -> unified without self-distillation
    (d) m3        recipe e5-small-m3.yaml:         heads -> warmup -> unified with self-distillation

(c) and (d) share their heads and warmup stages (one run per seed, the recipes agree on them). Stage
number i of every arm runs with the run seed `seed + 1000 * i` and is stage 0 of its run, so its stream
seed (the trainer's run seed + 1000 x stage index) is the same in every arm: per seed, the warmup
stages of (b), (c), (d) read the same samples in the same order, and so do the unified stages. The
start of every arm is the same BGE-M3 directory (mE5-small with heads drawn once, the sparse head as
recipe (d)'s model.sparse_init says), which is also the zero-shot row (a).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from framework.config import read_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = REPO_ROOT / "configs" / "recipes"
ARMS = ("dense", "no_kd", "m3")
ARM_LABELS = {"start": "(a) start, zero-shot", "dense": "(b) dense-only fine-tuning",
              "no_kd": "(c) all heads, no self-distillation", "m3": "(d) all heads + self-distillation"}
RECIPE_FILES = {"dense": "e5-small-dense.yaml", "no_kd": "e5-small-no-distill.yaml", "m3": "e5-small-m3.yaml"}
# Stage index in the curriculum: decides the run seed offset, so equal names read equal data.
STAGE_INDEX = {"heads": 0, "warmup": 1, "unified": 2}
# Runs shared between arms: (run key, recipe arm, stage). The key names the run folder.
ARM_CHAINS = {
    "dense": [("dense-warmup", "dense", "warmup"), ("dense-unified", "dense", "unified")],
    "no_kd": [("heads", "m3", "heads"), ("warmup", "m3", "warmup"), ("no_kd-unified", "no_kd", "unified")],
    "m3": [("heads", "m3", "heads"), ("warmup", "m3", "warmup"), ("m3-unified", "m3", "unified")],
}


@dataclass(frozen=True)
class TrainSettings:
    """How the bench sizes and launches the recipes' stages."""

    manifest: Path
    """Shards of the training rows (tools/make_shards.py)."""
    steps: dict[str, int]
    """Stage name -> optimizer steps (overrides the recipe's length)."""
    nproc: int = 1
    """Training processes (torchrun when > 1)."""
    overrides: tuple[str, ...] = ()
    """Extra dotted overrides for every stage, e.g. stages.0.optim.lr=3e-5."""
    gradient_checkpointing: bool | None = None
    """Override of the recipes' model.gradient_checkpointing (None: the recipe's, off). At the recipes' 2,048
    tokens per rank a CPU process holds ~1-2 GB of activations without it, and a step costs a forward less."""


def recipe_sparse_init() -> str:
    """The sparse head's start in recipe (d) (model.sparse_init): the bench draws the shared start's heads so."""
    return read_yaml(RECIPES / RECIPE_FILES["m3"]).get("model", {}).get("sparse_init", "random")


def stage_config(arm: str, stage: str, start: Path, out_dir: Path, seed: int, settings: TrainSettings) -> dict:
    """One-stage run config of recipe `arm`'s stage `stage`, starting from `start`."""
    recipe = read_yaml(RECIPES / RECIPE_FILES[arm])
    picked = next((s for s in recipe["stages"] if s["name"] == stage), None)
    if picked is None:
        raise ValueError(f"recipe {RECIPE_FILES[arm]} has no stage {stage!r}; its stages are "
                         f"{[s['name'] for s in recipe['stages']]}")
    picked = dict(picked, data=dict(picked["data"], manifest=str(settings.manifest)))
    picked.pop("samples", None)
    picked["steps"] = settings.steps[stage]
    return dict(recipe, name=out_dir.name, output_dir=str(out_dir), seed=seed + 1000 * STAGE_INDEX[stage],
                model={**recipe.get("model", {}), "path": str(start),
                       **({} if settings.gradient_checkpointing is None
                          else {"gradient_checkpointing": settings.gradient_checkpointing})},
                tracking={"enabled": False, "log_every": recipe.get("tracking", {}).get("log_every", 10)},
                checkpoint={"every_steps": 0, "keep_last": 1}, stages=[picked])


def train_stage(config: dict, overrides: tuple[str, ...], nproc: int, say) -> Path:
    """Run one stage (skipped when its export is complete); returns the export directory."""
    out_dir = Path(config["output_dir"])
    stage = config["stages"][0]["name"]
    export = out_dir / "exports" / stage
    if (out_dir / "exports" / f"{stage}.done.json").is_file():
        return export
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    threads = max(1, (os.cpu_count() or 2) // nproc)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", MLFLOW_DISABLE_TELEMETRY="true",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(threads)))
    launcher = [sys.executable]
    if nproc > 1:
        from framework.parallel import free_port

        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port())]
    cmd = [*launcher, "-m", "framework", "train", "--config", str(path), *overrides]
    began, cpu_before = time.monotonic(), _children_cpu_s()
    with (out_dir / "train.log").open("w", encoding="utf-8") as log, \
            subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, errors="replace") as proc:
        for line in proc.stdout:
            log.write(line)
            if line.startswith(f"[{stage}] step"):
                say(f"    {out_dir.parent.name}/{out_dir.name}: {line.rstrip()}")
    if proc.returncode != 0:
        tail = (out_dir / "train.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"{tail}\ntraining failed (exit {proc.returncode}); log {out_dir / 'train.log'}; "
                         f"command: {' '.join(cmd)}")
    timing = {"steps": config["stages"][0]["steps"], "wall_s": time.monotonic() - began,
              "cpu_s": _children_cpu_s() - cpu_before}
    (out_dir / "timing.json").write_text(json.dumps(timing) + "\n", encoding="utf-8")
    say(f"    {out_dir.parent.name}/{out_dir.name}: {stage} trained in {timing['wall_s'] / 60:.1f} min "
        f"({timing['cpu_s'] / 60:.1f} CPU min)")
    return export


def _children_cpu_s() -> float:
    """CPU seconds of this process's finished children: the delta around one run is that run's cost."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train_arm(arm: str, seed: int, start: Path, runs_dir: Path, settings: TrainSettings, say) -> Path:
    """Train (or reuse) every stage of `arm` for `seed`; returns the final export."""
    model = start
    for key, recipe_arm, stage in ARM_CHAINS[arm]:
        out_dir = runs_dir / f"seed{seed}" / key
        config = stage_config(recipe_arm, stage, model, out_dir, seed, settings)
        model = train_stage(config, settings.overrides, settings.nproc, say)
    return model


def log_losses(train_log: Path) -> list[dict[str, float]]:
    """Loss terms of every progress line of a train.log (first to last), for the loss curves."""
    rows = []
    for line in train_log.read_text(encoding="utf-8", errors="replace").splitlines():
        if "] step " not in line or not line.startswith("["):
            continue
        fields = line.split("|")[0].split()
        row = {"step": float(fields[2].split("/")[0])}
        for item in fields[3:]:
            name, _, value = item.partition("=")
            if value and name != "lr":
                try:
                    row[name] = float(value)
                except ValueError:
                    continue
        rows.append(row)
    return rows
