"""`python -m framework train --config RUN.yaml [dotted.key=value ...]`: load, build, train, close.

Runs as one process, under torchrun, the deepspeed launcher or srun (framework/parallel/env.py reads
the rank variables of each).
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from framework.parallel import detect_env, init_distributed, is_main, shutdown
from framework.tracking import make_tracker
from framework.train.config import load_run_config
from framework.train.evaluation import evaluate_stage
from framework.train.lock import hold_run_lock
from framework.train.preemption import Preempted, PreemptionWatch, requeue_slurm_job
from framework.train.trainer import Trainer


# Exit status of a run that stopped at a checkpoint on a preemption signal (sysexits' EX_TEMPFAIL).
PREEMPTED_EXIT = 75


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="YAML run config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. stages.warmup.steps=100")
    parser.add_argument("--resume", action="store_true",
                        help="require a checkpoint in output_dir and continue from it (default: resume "
                             "automatically when there is one)")
    # The deepspeed launcher appends --local_rank=N; LOCAL_RANK carries the same value.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + (["checkpoint.resume=must"] if args.resume else [])
    cfg = load_run_config(args.config, overrides)  # validated before any process group exists
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("framework").setLevel(logging.INFO)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    init_distributed(detect_env(), cfg.engine.backend)
    try:
        # The lock comes first: a second run on this output_dir must not touch its metrics or MLflow runs.
        with hold_run_lock(cfg.output_dir):
            preempted = _train(cfg)
    finally:
        shutdown()
    if preempted:
        # Only after the clean-up: SLURM ends the job step as soon as the requeue is accepted.
        if is_main():
            requeue_slurm_job()
        return PREEMPTED_EXIT
    return 0


def _train(cfg) -> bool:
    """Train under a tracker; True when a preemption signal stopped the run at a checkpoint."""
    tracker = make_tracker(cfg.tracking.enabled, is_main(), cfg.tracking.uri, cfg.tracking.experiment,
                           Path(cfg.output_dir), parent_run_id=cfg.tracking.parent_run_id,
                           run_name=cfg.tracking.run_name)
    status, watch, preempted = "FAILED", PreemptionWatch(), False
    main = is_main()
    try:
        export = Trainer(cfg, tracker, evaluate=evaluate_stage, preemption=watch).train()
        status = "FINISHED"
        if main:
            print(f"done: final model {export}", flush=True)
            if tracker.tracking_uri:
                print(f"compare runs: mlflow ui --backend-store-uri {tracker.tracking_uri}", flush=True)
    except Preempted as stop:
        status, preempted = "KILLED", True
        if main:
            print(f"preempted: {stop}", flush=True)
    finally:
        watch.close()
        tracker.close(status)
    return preempted
