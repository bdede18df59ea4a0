"""The command line: a user error is one line naming the field or file and exit status 2 (its traceback with
--verbose), printed once per job under torchrun; library chatter stays out of the default output.

In-process tests run `framework.__main__.main` in this pytest process; the `cli_state` fixture undoes what
the command sets up (logging levels and filters, warning filters, environment variables, progress bars).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from framework.__main__ import main
from framework.errors import USER_ERROR_EXIT, is_user_error
from framework.logs import OwnInfoOnly, UnusedPoolerReport

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli_state():
    """Restore the global state `configure` changes, so that later tests see the usual defaults."""
    environ = dict(os.environ)
    loggers = {name: logging.getLogger(name) for name in ("framework", "transformers.modeling_utils",
                                                            "framework.model.bge_format")}
    saved = {name: (lg.level, list(lg.filters)) for name, lg in loggers.items()}
    with warnings.catch_warnings():
        yield
    os.environ.clear()
    os.environ.update(environ)
    for name, (level, filters) in saved.items():
        loggers[name].setLevel(level)
        loggers[name].filters[:] = filters
    from huggingface_hub.utils import enable_progress_bars
    from transformers.utils import logging as transformers_logging

    enable_progress_bars()
    transformers_logging.enable_progress_bar()


def bad_config(tmp_path: Path, **stage) -> Path:
    """A run config whose first stage has the given (bad) fields."""
    config = {"name": "bad", "output_dir": str(tmp_path / "run"), "model": {"path": str(tmp_path / "model")},
              "stages": [{"name": "warmup", "steps": 10, "data": {"manifest": str(tmp_path / "manifest.json")},
                          **stage}]}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_bad_config_is_one_line_naming_the_field(tmp_path: Path, cli_state, capsys: pytest.CaptureFixture) -> None:
    config = bad_config(tmp_path, steps=-5)
    with pytest.raises(SystemExit) as stop:
        main(["train", "--config", str(config)])
    assert stop.value.code == USER_ERROR_EXIT
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("train: ") and "stages.warmup" in lines[0] and "steps" in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    with pytest.raises(ValueError, match="steps"):  # --verbose: the exception itself, with its traceback
        main(["train", "--config", str(config), "--verbose"])


def test_missing_files_are_user_errors(tmp_path: Path, cli_state, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit, match=str(USER_ERROR_EXIT)):
        main(["train", "--config", str(tmp_path / "absent.yaml")])
    assert "absent.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=str(USER_ERROR_EXIT)):
        main(["evaluate", "--model", str(tmp_path / "no-model"), "--benchmark", "ddtp", "--no-mlflow"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-model" in err[0] and "config.json" in err[0]


def test_tools_print_user_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tools.build_model import main as build_model_main

    with pytest.raises(SystemExit, match=str(USER_ERROR_EXIT)):
        build_model_main(["--tokenizer-dir", str(tmp_path / "no-tokenizer"), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("build_model.py: ") and "train_tokenizer.py" in err[0]


def test_only_user_errors_lose_their_traceback() -> None:
    from framework.data.stream import DataError

    assert is_user_error(ValueError("x")) and is_user_error(FileNotFoundError("x")) and is_user_error(DataError("x"))
    assert not is_user_error(KeyError("x")) and not is_user_error(RuntimeError("x"))
    assert not is_user_error(AssertionError("internal invariant"))


def test_pooler_only_load_report_is_dropped_and_others_kept() -> None:
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, __file__, 1, message, None, None)

    table = ("\x1b[1mXLMRobertaModel LOAD REPORT\x1b[0m from: /m\nKey                 | Status     |  | \n"
             "--------------------+------------+--+-\n{rows}\nNotes:\n- UNEXPECTED: can be ignored")
    pooler = "pooler.dense.bias   | \x1b[33mUNEXPECTED\x1b[0m |  | \npooler.dense.weight | UNEXPECTED |  | "
    missing = "encoder.layer.0.x   | MISSING    |  | "
    report = UnusedPoolerReport()
    assert not report.filter(record(table.format(rows=pooler)))
    assert report.filter(record(table.format(rows=pooler + "\n" + missing)))  # a missing weight is news
    assert report.filter(record("some other warning"))


def test_quiet_handler_keeps_own_info_and_every_warning() -> None:
    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "message", None, None)

    own = OwnInfoOnly()
    assert own.filter(record("framework.train.stage", logging.INFO))  # "resumed stage ... at step N"
    assert not own.filter(record("bm25s", logging.DEBUG)) and not own.filter(record("mlflow.store", logging.INFO))
    assert own.filter(record("deepspeed", logging.WARNING)) and own.filter(record("frameworks", logging.ERROR))
    assert not own.filter(record("frameworks", logging.INFO))  # a prefix is not the package


@pytest.mark.distributed
def test_bad_config_under_torchrun_is_printed_once(tmp_path: Path) -> None:
    config = bad_config(tmp_path, steps=-5)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "framework",
                           "train", "--config", str(config)], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    output = done.stdout + done.stderr
    ours = [line for line in output.splitlines() if "train: " in line and "steps" in line]
    assert done.returncode != 0 and len(ours) == 1, output
    assert "exitcode  : 2" in output  # rank 0's status, as torchrun reports the first failure
    assert "framework/config/loading.py" not in output  # no worker traceback (torchrun's own summary stays)
