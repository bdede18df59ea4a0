"""The batch-size probe's table for the tiny model on this machine, and the probe's wall time.

Runs `python -m framework probe-batch` (a subprocess, as a user would) on the demo's unified stage
(configs/demo.yaml: every head, self-distillation, split-batch of 32, group size 4, queries 64 and passages
256 tokens, the paper's default bucket edges) with the tiny random XLM-R (hidden 32, 2 layers; 3000-piece
tokenizer, as the tests build it) and prints the probe's own lines, its YAML table and two wall times: the
whole command (imports, model build, DeepSpeed init) and the probe's own.

The DeepSpeed config is ds_configs/zero2.json with its gradient buckets cut from 5e8 to 1e6 elements:
the shipped buckets are allocated whole at every backward (two of them: 4 GB in fp32), which would hide
the tiny model's few megabytes; every other setting is the shipped one. On a GPU, run the probe on the
real model and config instead (docs/batch-probe.md).

    python -m bench.probe_tiny [--memory-gb 0.25] [--world-size 2] [--edges ladder]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from framework.data.buckets import DEFAULT_EDGES
from framework.data.manifest import Manifest
from framework.logs import configure
from framework.resources import deepspeed_config, demo_config, text_sample
from framework.starting import build_model, train_tokenizer


def small_bucket_zero2(folder: Path) -> Path:
    """ds_configs/zero2.json with 1e6-element gradient buckets (see the module docstring)."""
    config = json.loads(deepspeed_config("ds_configs/zero2.json").read_text())
    config["zero_optimization"].update(reduce_bucket_size=1_000_000, allgather_bucket_size=1_000_000)
    path = folder / "zero2_small_buckets.json"
    path.write_text(json.dumps(config))
    return path


def shardless_manifest(folder: Path) -> Path:
    """A manifest with the demo shards' bucket edges (the default ones) and no shard: the probe reads no shard,
    but the stage kind reads the manifest's prompts (they do not matter here: the batches are synthetic ids)."""
    return Manifest(shards=(), length_edges=DEFAULT_EDGES).save(folder / "manifest.json")


def probe_command(model: Path, ds: Path, manifest: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "framework", "probe-batch", "--config", str(demo_config()), "--stage", "unified",
            "--memory-gb", str(args.memory_gb), "--world-size", str(args.world_size), "--edges", args.edges,
            f"model.path={model}", f"engine.deepspeed_config={ds}", f"stages.unified.data.manifest={manifest}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-gb", type=float, default=0.25, help="CPU budget per rank in GiB")
    parser.add_argument("--world-size", type=int, default=2, help="ranks of the table (the demo trains on 2)")
    parser.add_argument("--edges", default="ladder", help="probe-batch --edges")
    args = parser.parse_args()
    configure()  # the probe's lines and real warnings, not the libraries' chatter (as python -m framework)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokenizer = train_tokenizer([text_sample()], folder / "tokenizer", vocab_size=3000, seed=0)
        model = build_model(tokenizer, folder / "model", size="tiny", seed=0)
        command = probe_command(model, small_bucket_zero2(folder), shardless_manifest(folder), args)
        print("$ " + " ".join(command), flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   TOKENIZERS_PARALLELISM="false", MLFLOW_DISABLE_TELEMETRY="true")
        began = time.monotonic()
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
        seconds = time.monotonic() - began
    print(done.stdout, end="")
    if done.returncode != 0:
        raise SystemExit(f"probe-batch failed (exit {done.returncode})")
    probe_line = next((line for line in done.stdout.splitlines() if "probe wall time" in line), "")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime  # the probe command is the only child process
    print(f"\nwall time of the command: {seconds:.0f} s, its CPU time {cpu:.0f} s (OMP_NUM_THREADS="
          f"{env['OMP_NUM_THREADS']}; wall above CPU: the cores were shared); the probe's own wall time: "
          f"{probe_line.rsplit('probe wall time', 1)[-1].strip() or '?'}")


if __name__ == "__main__":
    main()
