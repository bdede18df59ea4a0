"""Run configs for the training tests, and a driver that runs several runs in one launch.

    torchrun --nproc_per_node 2 tests/train_scenarios.py SPEC.json

SPEC.json is a list of run-config dicts; each runs through the real Trainer (DeepSpeed, stream,
MLflow) one after the other in the same process group, so one ~12 s process start-up serves them all.

A run dict may carry `"_poison": {"micro_steps": [...], "rank": r}`: a fault injected for the test (a NaN
loss cannot be provoked at a chosen micro-batch any other way): the contrastive objective's loss becomes
NaN at those micro-batch indices on rank r (every rank when r is null), so its backward gives NaN
gradients as a real overflow would.

`"_observe": {"preempt_at": k}` records what the test cannot see from outside: each rank appends, per
optimizer step, the step, its micro-batches' sample keys and torch's initial seed to
<output_dir>/observed-rank<r>.jsonl, and with `preempt_at` the run receives the preemption notice during
step k (as SIGUSR1 would set it), so it checkpoints there and stops; the driver then goes on with the next
run instead of exiting. `"_observe": {"hold_at": [stage, k]}` makes the run wait at the start of that stage's
step k until a real preemption signal arrives (or the test kills it): a test that signals the process from
outside after a checkpoint then stops it at step k, whatever the machine's load.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_config(output_dir: Path, model_dir: Path, manifest: Path, stages: list[dict] | None = None,
               zero_stage: int = 2, tracking_uri: str | None = None, **top) -> dict:
    """A tiny two-bucket contrastive run over the test shards."""
    stage = {"name": "warmup", "steps": 4,
             "data": {"manifest": str(manifest), "group_size": 2, "mix_sources": True, "passage_max_length": 128,
                      "query_max_length": 64, "buckets": {"tokens_per_rank": 1024}, "num_workers": 0,
                      "shuffle_window": 16},
             "optim": {"lr": 5e-4, "warmup_steps": 1}}
    cfg = {"name": "test", "output_dir": str(output_dir), "seed": 0, "model": {"path": str(model_dir)},
           "engine": {"deepspeed_config": str(REPO_ROOT / "ds_configs" / f"zero{zero_stage}.json")},
           "tracking": {"uri": tracking_uri, "enabled": tracking_uri is not None, "log_every": 1},
           "checkpoint": {"every_steps": 2, "keep_last": 2},
           "stages": stages if stages is not None else [stage]}
    cfg.update(top)
    return cfg


def losses(output_dir: Path, key: str = "loss") -> dict[tuple[str, int], float]:
    """(stage, step) -> logged value; a step logged twice (before a kill and after resume) keeps the last."""
    out = {}
    for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if key in row:
            out[(row["stage"], row["step"])] = row[key]
    return out


@contextmanager
def poisoned(spec: dict | None):
    """Inside: M3Objective's loss is NaN at spec['micro_steps'] on rank spec['rank'] (see the module doc)."""
    if not spec:
        yield
        return
    from framework.parallel import rank
    from framework.train.objective import M3Objective, ObjectiveOutput

    original = M3Objective.forward

    def forward(self, batch, step):
        out = original(self, batch, step)
        if step in spec["micro_steps"] and spec.get("rank") in (None, rank()):
            out = ObjectiveOutput({**out.terms, "loss": out.terms["loss"] * float("nan")}, out.report)
        return out

    M3Objective.forward = forward
    try:
        yield
    finally:
        M3Objective.forward = original


@contextmanager
def observed(spec: dict | None, output_dir: Path, watch):
    """Inside: StageRun records each step's sample keys and seeds, and asks to stop at spec['preempt_at']."""
    if spec is None:
        yield
        return
    import torch

    from framework.parallel import rank
    from framework.train.stage import StageRun

    original = StageRun._forward_backward

    def forward_backward(self, batches, step):
        row = {"step": step, "keys": [list(b.keys) for b in batches], "seed": torch.initial_seed()}
        with open(output_dir / f"observed-rank{rank()}.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if step == spec.get("preempt_at"):
            watch.received = int(signal.SIGUSR1)  # what PreemptionWatch's handler sets on SLURM's notice
        if [self.stage.name, step] == spec.get("hold_at"):
            _wait_for_signal(watch)
        return original(self, batches, step)

    StageRun._forward_backward = forward_backward
    try:
        yield
    finally:
        StageRun._forward_backward = original
        watch.received = None


def _wait_for_signal(watch, timeout_s: float = 300.0) -> None:
    """Sleep until PreemptionWatch's handler has recorded a signal (a SIGKILL simply ends the process)."""
    deadline = time.monotonic() + timeout_s
    while watch.received is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"hold_at: no signal arrived within {timeout_s:.0f} s")
        time.sleep(0.01)


def main(spec_path: str) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from framework.config import from_dict
    from framework.parallel import init_distributed, is_main, shutdown
    from framework.tracking import make_tracker
    from framework.train.config import RunConfig
    from framework.train.preemption import Preempted, PreemptionWatch
    from framework.train.evaluation import evaluate_stage
    from framework.train.run import PREEMPTED_EXIT
    from framework.train.trainer import Trainer

    # A rank left waiting in a collective fails after this long instead of the 30-minute default.
    init_distributed(timeout_s=float(os.environ.get("M3_TEST_PG_TIMEOUT_S", "300")))
    watch, preempted = PreemptionWatch(), False
    try:
        for raw in json.loads(Path(spec_path).read_text()):
            poison, observe = raw.pop("_poison", None), raw.pop("_observe", None)
            cfg = from_dict(RunConfig, raw)
            tracker = make_tracker(cfg.tracking.enabled, is_main(), cfg.tracking.uri, cfg.tracking.experiment,
                                   Path(cfg.output_dir))
            try:
                with poisoned(poison), observed(observe, Path(cfg.output_dir), watch):
                    Trainer(cfg, tracker, evaluate=evaluate_stage, preemption=watch).train()
            except Preempted:
                tracker.close("KILLED")
                if observe is not None and "preempt_at" in observe:
                    continue  # stopped where the test asked: the next run goes on
                preempted = True  # exit 75 as the entry point does, after shutdown() has freed the run
                break
            except Exception as err:  # recorded for the test to check; the next run still goes
                if is_main():
                    (Path(cfg.output_dir) / "error.txt").write_text(f"{type(err).__name__}: {err}")
            finally:
                tracker.close()
    finally:
        shutdown()
    if preempted:
        sys.exit(PREEMPTED_EXIT)


if __name__ == "__main__":
    main(sys.argv[1])
