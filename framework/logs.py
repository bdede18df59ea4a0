"""What a command prints: progress lines, summaries and real warnings by default; the rest with --verbose.

`configure(verbose)` runs first in every `python -m framework` command, before DeepSpeed and MLflow are
imported (they read their verbosity from the environment at import time; the variables also reach the
processes a command starts, such as the demo's torchrun workers). Quiet means:

  * Python logging at WARNING, and no library's INFO or DEBUG records (bm25s logs at DEBUG); this
    package's INFO lines where a command asks for them (the trainer's resume and requeue lines: run.py);
  * MLflow at WARNING (its sqlite store announces every table migration at INFO);
  * no Hugging Face progress bars ("Loading weights", "Writing model shards" per load and save);
  * transformers' LOAD REPORT dropped when it lists only the checkpoint's unused BERT pooler: M3 reads
    the CLS hidden state and loads encoders without the pooler on purpose (any other row keeps the report);
  * DeepSpeed told the accelerator when torch sees none (DS_ACCELERATOR=cpu), instead of warning per process
    that it "was unable to detect" one;
  * torch's FutureWarning for `all_gather_into_tensor` dropped: DeepSpeed 0.19's comm backend calls it for
    ZeRO's gathers (framework/parallel itself uses `all_gather_single`).

`expect_fresh_heads()` is for training only: a run that starts from a plain encoder starts both heads
fresh by design, so load_m3's "no head files" warning says nothing there (it stays a warning elsewhere).
"""
from __future__ import annotations

import logging
import os
import re
import warnings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The deprecation torch 2.13 attaches to all_gather_into_tensor (DeepSpeed's comm backend still calls it).
GATHER_DEPRECATION = r"`torch\.distributed\.all_gather_into_tensor` is deprecated"
ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")
# The loader's warning when a run starts from a plain encoder (framework/model/bge_format.py).
FRESH_HEADS_MESSAGE = "has no head files"


def configure(verbose: bool = False) -> None:
    """Logging and library verbosity of this process (and, through the environment, of its children)."""
    handler = logging.StreamHandler()
    # A library that sets its own logger to DEBUG (bm25s does) would otherwise print through this handler.
    handler.setLevel(logging.INFO)
    if not verbose:
        handler.addFilter(OwnInfoOnly())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=FORMAT, handlers=[handler])
    if verbose:
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read at import: for the child processes
    _disable_hf_progress_bars()
    if "DS_ACCELERATOR" not in os.environ and not _has_accelerator():
        os.environ["DS_ACCELERATOR"] = "cpu"
    logging.getLogger("framework").setLevel(logging.WARNING)
    logging.getLogger("transformers.modeling_utils").addFilter(UnusedPoolerReport())
    warnings.filterwarnings("ignore", message=GATHER_DEPRECATION, category=FutureWarning)


def expect_fresh_heads() -> None:
    """Drop load_m3's "no head files" warning in this process (a training run's first stage)."""
    logging.getLogger("framework.model.bge_format").addFilter(MessageFilter(FRESH_HEADS_MESSAGE))


def _disable_hf_progress_bars() -> None:
    # Already imported by the command parsers (transformers reads the environment variable at import).
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()


def _has_accelerator() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6 knows cuda, xpu, mps and plug-ins
    if accelerator is not None:
        return accelerator.is_available()
    return torch.cuda.is_available()


class OwnInfoOnly(logging.Filter):
    """Below WARNING, only this package's records (its INFO lines are progress, a library's are chatter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] == "framework"


class MessageFilter(logging.Filter):
    """Drops records whose message contains `text`."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


class UnusedPoolerReport(logging.Filter):
    """Drops a transformers LOAD REPORT whose every row is an UNEXPECTED `pooler.*` key."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = ANSI_STYLE.sub("", record.getMessage())
        if "LOAD REPORT" not in text:
            return True
        rows = [[cell.strip() for cell in line.split("|")] for line in text.splitlines() if "|" in line]
        body = rows[1:]  # rows[0] is the "Key | Status" header
        return not body or not all(row[0].startswith("pooler.") and row[1] == "UNEXPECTED" for row in body)
