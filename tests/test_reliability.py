"""Reliability: the ways a long run can die, train on wrong data or run foreign code, each reproduced.

    tokenizer   shards of another tokenizer are refused before any step (framework/train/preflight.py)
    checkpoint  a complete checkpoint is never written again; new ones are written under a temporary
                name and renamed; a damaged latest one falls back to the previous good one; a full disk
                names the device (framework/train/checkpoint.py, checkpoint_io.py)
    lock        one run per output directory, stale locks taken over (framework/train/lock.py)
    pickles     RNG files and DeepSpeed's states load with weights_only=True: a planted pickle never runs
    resume      a changed batch plan that breaks the stream position is refused, the rest is printed as a
                diff, each attempt's config is kept (framework/train/attempts.py)
    up front    every stage's manifest, batch table, DeepSpeed config, start model and benchmark are
                checked before stage 1 trains, all problems in one message
    evaluation  a duplicate corpus id names the id and both lines (framework/evaluate/beir.py)

The fast tests use real files, real shards and the real tokenizers of conftest.py. Where a test needs a
DeepSpeed engine without launching a process, `MiniEngine` stands in for the two engine methods the
checkpoints call, writing and reading through DeepSpeed's own TorchCheckpointEngine as the real engine
does (a real engine needs a process group). The `distributed` tests run the real Trainer through
tests/train_scenarios.py's driver; kill -9 at an exact moment is produced by the process sending itself
SIGKILL from inside the call it dies in (a real kill, at a moment a timer could not hit reliably).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from framework.config import from_dict
from framework.train.config import RunConfig
from tests.train_scenarios import REPO_ROOT, run_config

DDTP = REPO_ROOT / "data" / "ddtp" / "train"


# ---- fixtures ---------------------------------------------------------------------------------------------
def _make_shards(inputs: list[Path], tokenizer: Path, out: Path) -> Path:
    from tools.make_shards import main as make_shards

    make_shards([str(p) for p in inputs] + ["--out", str(out), "--tokenizer", str(tokenizer), "--pretokenize",
                                             "--max-length", "128", "--progress-seconds", "1000"])
    return out / "manifest.json"


@pytest.fixture(scope="module")
def shards(tokenizer_dir: Path, tmp_path_factory) -> Path:
    """Pre-tokenised shards of one DDTP direction (80 pairs), made with the tiny model's own tokenizer."""
    return _make_shards([DDTP / "de.jsonl.gz"], tokenizer_dir, tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def foreign_shards(tmp_path_factory) -> Path:
    """The same data pre-tokenised with a 2,000-piece tokenizer: ids that mean other pieces to the model."""
    from tools.train_tokenizer import train_tokenizer

    from tests.conftest import SAMPLE_TEXT

    other = train_tokenizer([SAMPLE_TEXT], tmp_path_factory.mktemp("tok2000"), vocab_size=2000, seed=0)
    return _make_shards([DDTP / "de.jsonl.gz"], Path(other),
                        tmp_path_factory.mktemp("foreign_shards"))


def _cfg(tmp_path: Path, model: Path, manifest: Path, **top) -> RunConfig:
    return from_dict(RunConfig, run_config(tmp_path / "run", model, manifest, **top))


# ---- 3: shards of another tokenizer -----------------------------------------------------------------------
def test_shards_of_another_tokenizer_are_refused_before_any_step(tmp_path, tiny_model_dir, foreign_shards, shards):
    from framework.train.preflight import PreflightError, check_run

    cfg = _cfg(tmp_path, tiny_model_dir, foreign_shards)
    with pytest.raises(PreflightError) as caught:
        check_run(cfg, done={}, point=None, world=1)
    message = str(caught.value)
    recorded = json.loads(foreign_shards.read_text())["tokenizer"]
    assert str(foreign_shards) in message and recorded["path"] in message and str(tiny_model_dir) in message
    assert "2002 ids" in message and "3002 ids" in message           # both tokenizers, by their size too
    assert "re-shard" in message and "model.path" in message
    override = f"checks.accept_tokenizers=['{recorded['sha256']}']"
    assert override in message
    # The explicit override of a user who knows the vocabularies match:
    accepted = from_dict(RunConfig, dict(run_config(tmp_path / "run", tiny_model_dir, foreign_shards),
                                         checks={"accept_tokenizers": [recorded["sha256"]]}))
    check_run(accepted, done={}, point=None, world=1)
    check_run(_cfg(tmp_path, tiny_model_dir, shards), done={}, point=None, world=1)   # the right tokenizer passes


def test_text_shards_measured_with_another_tokenizer_only_warn(tmp_path, tiny_model_dir, foreign_shards, caplog):
    """Shards holding text (no .tok) are tokenised at train time by the model: only their length buckets came
    from the other tokenizer, which is worth a warning, not a refusal."""
    from tools.make_shards import main as make_shards

    from framework.train.preflight import check_run

    other = json.loads(foreign_shards.read_text())["tokenizer"]["path"]
    make_shards([str(DDTP / "de.jsonl.gz"), "--out", str(tmp_path / "text"), "--tokenizer", other, "--max-length",
                 "128", "--progress-seconds", "1000"])
    with caplog.at_level(logging.WARNING, logger="framework"):
        check_run(_cfg(tmp_path, tiny_model_dir, tmp_path / "text" / "manifest.json"), done={}, point=None, world=1)
    assert "only their length buckets came from the other tokenizer" in caplog.text and other in caplog.text


def test_same_vocabulary_in_other_bytes_is_not_a_mismatch(tmp_path, tokenizer_dir, tiny_model_dir, shards):
    """A model whose tokenizer.json was re-serialised (other bytes, same pieces) still matches its shards."""
    from framework.train.preflight import check_run

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    data = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
    (model / "tokenizer.json").write_text(json.dumps(data, indent=1, ensure_ascii=True), encoding="utf-8")
    check_run(_cfg(tmp_path, model, shards), done={}, point=None, world=1)


# ---- quieter gap: later stages checked up front -------------------------------------------------------------
def test_every_stage_is_checked_before_the_first_trains(tmp_path, tiny_model_dir, shards):
    from framework.train.preflight import PreflightError, check_run

    raw = run_config(tmp_path / "run", tiny_model_dir, shards)
    first = raw["stages"][0]
    second = dict(first, name="unified", data=dict(first["data"], manifest=str(tmp_path / "typo" / "manifest.json")),
                  evaluate={"benchmark": str(tmp_path / "no-such-benchmark")})
    # Parameter patterns are checked against the objective's names (from config.json, nothing loaded): a
    # freeze typo, and a rate group written without the objective's "model." prefix.
    third = dict(first, name="finetune", data=dict(first["data"], buckets={"tokens_per_rank": 8}),
                 freeze=[r"^model\.encodr\."], optim=dict(first["optim"], lr_groups=[{"pattern": r"^sparse_linear\.",
                                                                                     "lr": 1e-3}]))
    raw["stages"] = [first, second, third]
    raw["engine"] = {"deepspeed_config": str(tmp_path / "zero9.json")}
    with pytest.raises(PreflightError) as caught:
        check_run(from_dict(RunConfig, raw), done={}, point=None, world=1)
    message = str(caught.value)
    assert message.startswith("6 problems before training"), message
    assert "stages.finetune.freeze pattern '^model\\\\.encodr\\\\.' matches no parameter" in message
    assert "stages.finetune.optim.lr_groups[0].pattern '^sparse_linear\\\\.' matches no trained parameter" in message
    assert "'model.encoder.embeddings.word_embeddings.weight'" in message  # the names it could have matched
    assert "stages.unified.data.manifest" in message and "typo" in message
    assert "stages.unified.evaluate.benchmark" in message
    assert "stages.finetune.data.buckets" in message
    assert "engine.deepspeed_config" in message and "zero9.json" in message
    # A finished stage is not checked again (its shards may be gone); its export is the next start.
    done = {"warmup": {"export": str(tiny_model_dir)}, "unified": {"export": str(tiny_model_dir)}}
    raw["stages"] = [first, second, dict(first, name="finetune")]
    raw["engine"] = {"deepspeed_config": str(REPO_ROOT / "ds_configs" / "zero2.json")}
    check_run(from_dict(RunConfig, raw), done=done, point=None, world=1)
    raw["model"] = {"path": str(tmp_path / "missing-model")}
    with pytest.raises(PreflightError, match="model.path .*missing-model does not exist"):
        check_run(from_dict(RunConfig, raw), done={}, point=None, world=1)


# ---- quieter gap: resuming with a changed plan -------------------------------------------------------------
def _point(tmp_path: Path, ranks: int = 1):
    from framework.train.checkpoint import ResumePoint

    path = tmp_path / "run" / "checkpoints" / "warmup" / "step00000002"
    path.mkdir(parents=True)
    for r in range(ranks):
        (path / f"rng-rank{r}.pt").write_bytes(b"")
    return ResumePoint("warmup", "step00000002", path)


def test_resume_refuses_a_plan_that_breaks_the_stream_position(tmp_path, tiny_model_dir, shards, capsys):
    from framework.train.attempts import record_attempt
    from framework.train.preflight import PreflightError, check_run

    out = tmp_path / "run"
    first = _cfg(tmp_path, tiny_model_dir, shards)
    assert record_attempt(out, first) == out / "config-attempt-1.yaml"
    point = _point(tmp_path)
    changed = run_config(out, tiny_model_dir, shards)
    changed["stages"][0]["data"]["buckets"] = {"tokens_per_rank": 2048}
    changed["stages"][0]["data"]["group_size"] = 3
    changed["seed"] = 5
    with pytest.raises(PreflightError) as caught:
        check_run(from_dict(RunConfig, changed), done={}, point=point, world=1)
    message = str(caught.value)
    assert "stages.warmup.data.buckets.tokens_per_rank: 1024 -> 2048" in message and "seed: 0 -> 5" in message
    assert "group_size" not in message                         # the stream position survives that one
    assert "config-attempt-1.yaml" in message and "data position" in message
    assert (out / "config-attempt-1.yaml").is_file() and not (out / "config-attempt-2.yaml").exists()
    # A learning-rate change is allowed, printed as a diff, and kept as attempt 2; config.yaml is the latest.
    allowed = run_config(out, tiny_model_dir, shards)
    allowed["stages"][0]["optim"]["lr"] = 1e-4
    check_run(from_dict(RunConfig, allowed), done={}, point=point, world=1)
    assert "stages.warmup.optim.lr: 0.0005 -> 0.0001" in capsys.readouterr().out
    assert record_attempt(out, from_dict(RunConfig, allowed)) == out / "config-attempt-2.yaml"
    assert yaml.safe_load((out / "config-attempt-1.yaml").read_text())["stages"][0]["optim"]["lr"] == 5e-4
    assert yaml.safe_load((out / "config.yaml").read_text())["stages"][0]["optim"]["lr"] == 1e-4
    # Another world size than the checkpoint's: refused before DeepSpeed (where ranks would part ways).
    with pytest.raises(PreflightError, match=r"written by 1 rank\(s\).*this run has 2"):
        check_run(from_dict(RunConfig, allowed), done={}, point=point, world=2)


# ---- 4: checkpoints written once, under a temporary name ---------------------------------------------------
class MiniEngine:
    """Stands in for the two DeepSpeedEngine methods Checkpoints calls (a real engine needs a process group;
    the distributed tests use one). Like the real engine it writes and reads through a DeepSpeed
    TorchCheckpointEngine, with zipfile serialisation as DeepSpeed's default config has it."""

    def __init__(self, value: float = 1.0):
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
        from deepspeed.runtime.model_checkpointing import CHECKPOINT_SERIALIZATION

        config = SimpleNamespace(checkpoint_config={CHECKPOINT_SERIALIZATION: True})
        self.checkpoint_engine = TorchCheckpointEngine(config)
        self.weight = torch.full((4,), value)
        self.saves = 0

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
        self.saves += 1
        self.checkpoint_engine.save({"module": {"w": self.weight}, **client_state},
                                    os.path.join(save_dir, tag, "mp_rank_00_model_states.pt"))
        return True

    def load_checkpoint(self, load_dir, tag, **kwargs):
        path = os.path.join(load_dir, tag, "mp_rank_00_model_states.pt")
        state = self.checkpoint_engine.load(path, map_location="cpu")
        self.weight = state.pop("module")["w"]
        return path, state


def _client(step: int) -> dict:
    return {"stage": "warmup", "step": step, "micro_step": step, "data": {"epoch": 0, "batches": step},
            "progress": {"step": step, "of": 4}}


class Killed(BaseException):
    """The process died here (a BaseException, like the SystemExit of a dying process: no handler catches it)."""


def test_a_complete_checkpoint_is_never_written_again(tmp_path, monkeypatch):
    """The resume of a run killed during its stage-end export saves the final step again; a second kill
    during that save used to leave a 0-byte model file under COMPLETE (EOFError on every restart)."""
    from framework.train.checkpoint import Checkpoints

    checkpoints = Checkpoints(tmp_path, keep_last=2)
    first = MiniEngine(1.0)
    final = checkpoints.save(first, "warmup", "step00000004", _client(4))
    size = (final / "mp_rank_00_model_states.pt").stat().st_size

    real_save = torch.save

    def killed_mid_write(obj, f, *args, **kwargs):   # the 2nd kill -9: the file is truncated, the process gone
        name = str(f if isinstance(f, (str, os.PathLike)) else f.name)
        if not name.endswith("model_states.pt"):
            return real_save(obj, f, *args, **kwargs)
        open(name, "wb").close()
        raise Killed("killed while writing " + name)

    resumed = MiniEngine(1.0)
    monkeypatch.setattr(torch, "save", killed_mid_write)
    assert checkpoints.save(resumed, "warmup", "step00000004", _client(4)) == final
    assert resumed.saves == 0 and (final / "mp_rank_00_model_states.pt").stat().st_size == size
    again = MiniEngine(0.0)
    assert checkpoints.load(again, checkpoints.latest())["step"] == 4 and float(again.weight[0]) == 1.0

    # A kill during a new checkpoint leaves only a temporary folder: latest stays on the good one, and the
    # next save of that tag starts over cleanly.
    with pytest.raises(Killed):
        checkpoints.save(resumed, "warmup", "step00000006", _client(6))
    assert checkpoints.latest().tag == "step00000004"
    assert not (tmp_path / "checkpoints" / "warmup" / "step00000006").exists()
    monkeypatch.setattr(torch, "save", real_save)
    checkpoints.save(MiniEngine(2.0), "warmup", "step00000006", _client(6))
    assert checkpoints.latest().tag == "step00000006"
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "warmup").iterdir()) == ["step00000004", "step00000006"]


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_good_one(tmp_path, caplog):
    from framework.train.checkpoint import Checkpoints

    checkpoints = Checkpoints(tmp_path, keep_last=3)
    for step in (2, 4):
        checkpoints.save(MiniEngine(float(step)), "warmup", f"step{step:08d}", _client(step))
    damaged = tmp_path / "checkpoints" / "warmup" / "step00000004" / "mp_rank_00_model_states.pt"
    damaged.write_bytes(b"")                                    # what the old double kill left behind
    with caplog.at_level(logging.WARNING, logger="framework"):
        point = checkpoints.latest()
    assert point.tag == "step00000002"
    assert str(damaged) in caplog.text and "0 bytes" in caplog.text and "step00000002" in caplog.text
    engine = MiniEngine(0.0)
    assert checkpoints.load(engine, point)["step"] == 2 and float(engine.weight[0]) == 2.0
    # Damage the size check cannot see (the file's bytes changed, not its length): the load names the file
    # and the previous good checkpoint instead of a bare unpickling error.
    good = tmp_path / "checkpoints" / "warmup" / "step00000002" / "mp_rank_00_model_states.pt"
    good.write_bytes(b"\0" * good.stat().st_size)
    with pytest.raises(ValueError, match=r"cannot read .*step00000002/mp_rank_00_model_states\.pt"):
        checkpoints.load(MiniEngine(), checkpoints.latest())


def test_a_full_disk_at_checkpoint_time_names_the_device(tmp_path, monkeypatch):
    """The real disk cannot be filled here, so the checkpoint's files are written to /dev/full instead: every
    write there fails with a real ENOSPC from the kernel, as on a full disk. (Through torch's own file
    writer, as DeepSpeed calls it, that used to surface as 'unexpected pos N vs M'.)"""
    import psutil

    from framework.train.checkpoint import CheckpointWriteError, Checkpoints

    real_save = torch.save

    def save_to_full_disk(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            return real_save(obj, "/dev/full", *args, **kwargs)
        with open("/dev/full", "wb") as full:
            return real_save(obj, full, *args, **kwargs)

    checkpoints = Checkpoints(tmp_path, keep_last=2)
    checkpoints.save(MiniEngine(), "warmup", "step00000002", _client(2))
    monkeypatch.setattr(torch, "save", save_to_full_disk)
    with pytest.raises(CheckpointWriteError) as caught:
        checkpoints.save(MiniEngine(), "warmup", "step00000004", _client(4))
    message = str(caught.value)
    mount = max((p for p in psutil.disk_partitions(all=True) if str(tmp_path.resolve()).startswith(p.mountpoint)),
                key=lambda p: len(p.mountpoint))
    assert message.startswith(f"no space left on {mount.device}")
    assert "mp_rank_00_model_states.pt" in message and "step00000002" in message and "unexpected pos" not in message
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoints.latest().tag == "step00000002"           # the failed one never became latest
    assert not any(".partial" in p.name for p in (tmp_path / "checkpoints" / "warmup").iterdir())


# ---- 6: pickles planted in a checkpoint ---------------------------------------------------------------------
class Planted:
    """What an attacker puts in a checkpoint: unpickling it runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_rng_state_round_trips_as_plain_tensors(tmp_path):
    import random

    import numpy as np

    from framework.train.checkpoint_io import load_rng_state
    from framework.train.checkpoint import rng_state, set_rng_state

    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "rng.pt")) == []
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    set_rng_state(load_rng_state(tmp_path / "rng.pt"))
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_a_planted_pickle_in_the_rng_file_does_not_run_on_resume(tmp_path):
    from framework.train.checkpoint import Checkpoints

    checkpoints = Checkpoints(tmp_path, keep_last=2)
    checkpoints.save(MiniEngine(), "warmup", "step00000002", _client(2))
    marker = tmp_path / "pwned"
    torch.save({"python": Planted(marker)}, tmp_path / "checkpoints" / "warmup" / "step00000002" / "rng-rank0.pt")
    _rewrite_complete_sizes(tmp_path / "checkpoints" / "warmup" / "step00000002")  # sizes kept right
    with pytest.raises(ValueError, match=r"rng-rank0\.pt.*refused.*posix\.system"):
        checkpoints.load(MiniEngine(), checkpoints.latest())
    assert not marker.exists()


def test_a_planted_pickle_in_deepspeed_states_does_not_run(tmp_path):
    from framework.train.checkpoint import Checkpoints

    checkpoints = Checkpoints(tmp_path, keep_last=2)
    path = checkpoints.save(MiniEngine(), "warmup", "step00000002", _client(2)) / "mp_rank_00_model_states.pt"
    marker = tmp_path / "pwned"
    state = torch.load(path, weights_only=True)
    torch.save(dict(state, extra=Planted(marker)), path)
    _rewrite_complete_sizes(path.parent)                        # a careful attacker keeps the sizes right
    with pytest.raises(ValueError, match=r"mp_rank_00_model_states\.pt.*refused.*posix\.system"):
        checkpoints.load(MiniEngine(), checkpoints.latest())
    assert not marker.exists()


def _rewrite_complete_sizes(tag_dir: Path) -> None:
    marker = tag_dir / "COMPLETE"
    info = json.loads(marker.read_text())
    if isinstance(info.get("files"), dict):
        info["files"] = {name: (tag_dir / name).stat().st_size for name in info["files"]}
    marker.write_text(json.dumps(info))


def test_old_rng_files_still_load_without_running_code(tmp_path):
    """RNG files of checkpoints written before this format (numpy arrays in the pickle) resume too."""
    import random

    import numpy as np

    from framework.train.checkpoint_io import load_rng_state

    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(old, tmp_path / "rng-rank0.pt")
    loaded = load_rng_state(tmp_path / "rng-rank0.pt")
    assert loaded["python"] == old["python"] and np.array_equal(loaded["numpy"][1], old["numpy"][1])


# ---- 5: one run per output directory -------------------------------------------------------------------------
def _holder(pid: int, host: str, started: float, job: str | None = None) -> str:
    return json.dumps({"pid": pid, "host": host, "process_start": started, "slurm_job": job,
                       "started": "2026-01-01T00:00:00", "command": "python -m framework train"})


def test_a_second_run_on_one_output_directory_is_refused(tmp_path, monkeypatch, caplog):
    import psutil

    from framework.train.lock import RunLock, RunLocked

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    lock_file = tmp_path / "run.lock"
    parent = psutil.Process(os.getppid())                        # a live process on this host, not us
    lock_file.write_text(_holder(parent.pid, socket.gethostname(), parent.create_time()))
    with pytest.raises(RunLocked) as caught:
        RunLock(tmp_path).acquire()
    message = str(caught.value)
    assert f"pid {parent.pid}" in message and socket.gethostname() in message and str(tmp_path) in message
    assert "another output_dir" in message
    # Another host: its pid cannot be checked from here, so it is refused with the way out.
    lock_file.write_text(_holder(12345, "node-b", 1.0))
    with pytest.raises(RunLocked, match=r"host node-b.*delete .*run\.lock"):
        RunLock(tmp_path).acquire()
    # Stale: the pid was reused by another process (start time differs), or the holder is this SLURM job's
    # earlier incarnation (a requeue runs the same job id, possibly on another node).
    for stale in (_holder(parent.pid, socket.gethostname(), parent.create_time() - 100),
                  _holder(12345, "node-b", 1.0, job="777")):
        monkeypatch.setenv("SLURM_JOB_ID", "777")
        lock_file.write_text(stale)
        with caplog.at_level(logging.WARNING, logger="framework"):
            lock = RunLock(tmp_path)
            lock.acquire()
        assert "stale lock" in caplog.text
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        lock.release()
        assert not lock_file.exists()


def test_the_run_lock_is_reentrant_in_one_process(tmp_path):
    from framework.train.lock import hold_run_lock

    with hold_run_lock(tmp_path):
        with hold_run_lock(tmp_path):                           # the CLI takes it, then the Trainer again
            assert (tmp_path / "run.lock").is_file()
        assert (tmp_path / "run.lock").is_file()
    assert not (tmp_path / "run.lock").exists()


# ---- quieter gap: evaluation data ------------------------------------------------------------------------------
def test_a_duplicate_corpus_id_names_the_id_and_the_lines(tmp_path):
    from framework.evaluate.beir import load_corpus, load_queries

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n\n{"_id": "d1", "text": "c"}\n')
    with pytest.raises(ValueError, match=r"corpus\.jsonl:4: document id 'd1' was already given on line 1"):
        load_corpus(corpus)
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n')
    with pytest.raises(ValueError, match=r"queries\.jsonl:2: query id 'q1' was already given on line 1"):
        load_queries(queries)


# ---- real runs through the driver ----------------------------------------------------------------------------
def _env() -> dict:
    return dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")


def _launch(specs: list[dict], tmp_path: Path, kill_at: str = "", wait: bool = True):
    """The driver of tests/train_scenarios.py in one process; `kill_at` makes it SIGKILL itself there."""
    spec = tmp_path / f"spec-{time.monotonic_ns()}.json"
    spec.write_text(json.dumps(specs))
    cmd = [sys.executable, "-c", "import sys; from tests.test_reliability import drive; drive(*sys.argv[1:])",
           str(spec), kill_at]
    if not wait:   # output to a file: a pipe nobody reads would fill and stop the run
        log = open(tmp_path / f"{spec.stem}.log", "w")
        return subprocess.Popen(cmd, env=_env(), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, env=_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)


def drive(spec: str, kill_at: str = "") -> None:
    """Run the scenario driver, after arranging a kill -9 at `kill_at` ("export": as the stage-end export
    starts; "model_states": half-way through writing a DeepSpeed model-state file)."""
    from tests.train_scenarios import main

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if kill_at == "export":
        from framework.train.checkpoint import Checkpoints

        Checkpoints.export_dir = lambda self, stage: die()
    elif kill_at == "model_states":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            name = str(f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", ""))
            if name.endswith("model_states.pt"):
                open(name, "wb").close()
                die()
            return real_save(obj, f, *args, **kwargs)
        torch.save = save
    main(spec)


def _error(run_dir: Path) -> str:
    path = run_dir / "error.txt"
    return path.read_text() if path.exists() else ""


@pytest.mark.distributed
def test_kills_changed_plans_planted_pickles_and_wrong_shards_in_real_runs(tmp_path, tiny_model_dir, shards,
                                                                           foreign_shards):
    """One killed run (kill -9 as the stage-end export starts, the final checkpoint complete) copied four ways:
    a: resumed and killed again half-way through re-writing the model states, then resumed: finishes;
    b: resumed with another tokens_per_rank (refused, naming the change), then with another lr (runs);
    c, d: a pickle planted in rng-rank0.pt / mp_rank_00_model_states.pt: refused, the command never runs;
    e: shards of another tokenizer: refused before any step; f: a typo in stage 2's manifest: refused before
    stage 1 trains."""
    base = run_config(tmp_path / "base", tiny_model_dir, shards)
    done = _launch([base], tmp_path, kill_at="export")
    assert done.returncode == -signal.SIGKILL, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "base" / "checkpoints" / "latest.json").read_text())["tag"] == "step00000004"
    runs = {}
    for name in "abcd":
        shutil.copytree(tmp_path / "base", tmp_path / name)
        runs[name] = run_config(tmp_path / name, tiny_model_dir, shards)
    _launch([runs["a"]], tmp_path, kill_at="model_states")
    final = tmp_path / "c" / "checkpoints" / "warmup" / "step00000004"
    marker = tmp_path / "pwned"
    torch.save({"python": Planted(marker)}, final / "rng-rank0.pt")
    _rewrite_complete_sizes(final)
    states = tmp_path / "d" / "checkpoints" / "warmup" / "step00000004" / "mp_rank_00_model_states.pt"
    torch.save(dict(torch.load(states, weights_only=False), extra=Planted(marker)), states)
    _rewrite_complete_sizes(states.parent)
    changed, allowed = json.loads(json.dumps(runs["b"])), json.loads(json.dumps(runs["b"]))
    changed["stages"][0]["data"]["buckets"]["tokens_per_rank"] = 2048
    allowed["stages"][0]["optim"]["lr"] = 1e-4
    foreign = run_config(tmp_path / "e", tiny_model_dir, foreign_shards)
    typo = run_config(tmp_path / "f", tiny_model_dir, shards)
    typo_data = dict(typo["stages"][0]["data"], manifest=str(tmp_path / "shardz" / "manifest.json"))
    typo["stages"].append(dict(typo["stages"][0], name="unified", data=typo_data))
    done = _launch([runs["a"], changed, allowed, runs["c"], runs["d"], foreign, typo], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert _error(tmp_path / "a") == "" and (tmp_path / "a" / "exports" / "warmup.done.json").is_file()
    assert "stages.warmup.data.buckets.tokens_per_rank: 1024 -> 2048" in _error(tmp_path / "b")
    assert "stages.warmup.optim.lr: 0.0005 -> 0.0001" in out
    assert (tmp_path / "b" / "exports" / "warmup.done.json").is_file()
    assert (tmp_path / "b" / "config-attempt-2.yaml").is_file()         # the refused attempt did not run
    assert not (tmp_path / "b" / "config-attempt-3.yaml").exists()
    assert not marker.exists()
    assert "rng-rank0.pt" in _error(tmp_path / "c") and "refused" in _error(tmp_path / "c")
    assert "mp_rank_00_model_states.pt" in _error(tmp_path / "d") and "refused" in _error(tmp_path / "d")
    assert "re-shard" in _error(tmp_path / "e") and not (tmp_path / "e" / "metrics.jsonl").read_text()
    assert "stages.unified.data.manifest" in _error(tmp_path / "f")
    assert not (tmp_path / "f" / "checkpoints").exists()


@pytest.mark.distributed
def test_two_runs_on_one_output_directory(tmp_path, tiny_model_dir, shards):
    """A second run started on a live run's output_dir is refused naming the holder; the first carries on,
    logs every step once, and releases the lock when SLURM's preemption notice stops it."""
    first = run_config(tmp_path / "run", tiny_model_dir, shards)
    first["stages"][0]["steps"] = 5000
    first["checkpoint"]["every_steps"] = 3
    live = _launch([first], tmp_path, wait=False)
    try:
        latest = tmp_path / "run" / "checkpoints" / "latest.json"
        deadline = time.monotonic() + 300
        while live.poll() is None and not latest.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live.poll() is None, "the first run ended before its first checkpoint"
        second = _launch([first], tmp_path)
        still_running = live.poll() is None
        live.send_signal(signal.SIGUSR1)
        code = live.wait(timeout=300)
    finally:
        if live.poll() is None:
            live.kill()
    assert still_running and code == 75, code
    error = _error(tmp_path / "run")
    assert f"pid {live.pid}" in error and "in use" in error, (error, second.stdout[-2000:], second.stderr[-2000:])
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    steps = [(r["stage"], r["step"]) for r in map(json.loads, rows)]
    assert len(steps) == len(set(steps)) and len(steps) >= 3
    assert not (tmp_path / "run" / "run.lock").exists()
