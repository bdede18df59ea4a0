"""Submit a sharding run to SLURM: an array job of N parts, then the merge job that waits for it.

    python tools/submit_shards.py --parts 64 -- data/train/ --out shards/ --tokenizer tok/ --pretokenize
    python tools/submit_shards.py --parts 64 --max-parallel 16 --sbatch=--partition=cpu --sbatch=--time=2:00:00 \
        -- data/train/ --out shards/ --tokenizer tok/ --pretokenize

Everything after `--` is tools/make_shards.py's command line, checked here before anything is submitted;
array task I runs it with --part I --num-parts N (slurm/prepare_shards.sbatch). The merge job
(slurm/merge_shards.sbatch) starts once every part succeeded (--dependency=afterok) and writes
OUT/manifest.json from exactly the N part manifests of this run, so parts left in OUT by an earlier run
with another N are not mixed in. Prints the two job ids ("ARRAY_ID MERGE_ID" with --parsable).

The jobs run in the current directory (relative paths resolve as they do here) and find the repository
through M3_REPO, which is set to this checkout unless already set; M3_VENV selects a virtual environment
(slurm/env.sh).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

if __package__:  # python -m tools.submit_shards, or imported as tools.submit_shards
    from tools.make_shards import ShardConfig, build_parser
else:  # python tools/submit_shards.py: this file's folder heads the import path
    from make_shards import ShardConfig, build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]

SLURM_DIR = REPO_ROOT / "slurm"


def part_manifests(out_dir: Path, num_parts: int) -> list[Path]:
    """The manifests the N array tasks write (named by make_shards' own ShardConfig.manifest_path)."""
    return [ShardConfig(out_dir=out_dir, part=i, num_parts=num_parts).manifest_path() for i in range(num_parts)]


def sbatch(args: list[str], env: dict[str, str]) -> str:
    """Run `sbatch --parsable ARGS`; returns the job id (ValueError with sbatch's message on failure)."""
    done = subprocess.run(["sbatch", "--parsable", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"sbatch {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]  # "ID" or "ID;CLUSTER"


def submit(num_parts: int, make_shards_args: list[str], sbatch_options: list[str] = (),
           max_parallel: int | None = None) -> tuple[str, str]:
    """Submit the array and the merge job; returns (array job id, merge job id)."""
    if num_parts < 1:
        raise ValueError(f"--parts {num_parts}: use at least 1")
    parsed = build_parser().parse_args(make_shards_args)  # exits with make_shards' usage on bad options
    if any(arg.split("=")[0] in ("--part", "--num-parts") for arg in make_shards_args):
        raise ValueError("leave --part and --num-parts out of the make_shards arguments: every array task "
                         "sets its own from --parts")
    env = dict(os.environ)
    env.setdefault("M3_REPO", str(REPO_ROOT))
    array = f"0-{num_parts - 1}" + (f"%{max_parallel}" if max_parallel else "")
    array_id = sbatch([*sbatch_options, f"--array={array}", str(SLURM_DIR / "prepare_shards.sbatch"),
                       *make_shards_args], env)
    merged = parsed.out / "manifest.json"
    merge_id = sbatch([*sbatch_options, f"--dependency=afterok:{array_id}", str(SLURM_DIR / "merge_shards.sbatch"),
                       str(merged), *map(str, part_manifests(parsed.out, num_parts))], env)
    return array_id, merge_id


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, required=True, help="array tasks, one part of the input each")
    parser.add_argument("--max-parallel", type=int, help="array tasks running at once (sbatch --array=...%%N)")
    parser.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                        help="an sbatch option for both jobs, e.g. --sbatch=--partition=cpu (repeatable)")
    parser.add_argument("--parsable", action="store_true", help="print only the two job ids")
    args = parser.parse_args(argv[:split])
    if split + 1 >= len(argv):
        parser.error("put tools/make_shards.py's arguments after `--`, e.g. -- data/ --out shards/ --tokenizer tok/")
    try:
        array_id, merge_id = submit(args.parts, argv[split + 1:], args.sbatch, args.max_parallel)
    except ValueError as error:
        sys.exit(f"submit_shards: {error}")
    print(f"{array_id} {merge_id}" if args.parsable else
          f"array job {array_id} ({args.parts} parts); merge job {merge_id} runs after it succeeds")


if __name__ == "__main__":
    main()
