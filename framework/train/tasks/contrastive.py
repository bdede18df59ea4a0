"""Kind 'contrastive': the M3 loss (dense, sparse, multi-vector, self-distillation) on query/passage groups.

Sections: loss (LossConfig), gather (cross-rank negatives), split_batch (sub-batch encoding). Stream:
PairStream over pair shards, yielding `Batch`. Export: a BGE-M3 directory (framework/model/bge_format.py)
that saves the prompts the stage trained with (the shards', checked against data.source_rules), so that
inference adds them too (M3Embedder.encode(is_query=...), sentence-transformers' prompt_name).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from framework.data.batch import Batch
from framework.data.sources import export_prompts, stage_prompts
from framework.data.stream import PairStream
from framework.heads import HEADS
from framework.loss import all_zero_warnings, check_matryoshka_dims
from framework.model import load_m3, m3_parameter_names
from framework.train.export import export_bge_m3
from framework.train.objective import M3Objective, ObjectiveOutput
from framework.train.tasks.base import StageTask

if TYPE_CHECKING:
    from framework.train.config import RunConfig, StageConfig


class ContrastiveTask(StageTask):
    """The M3 objective on pair shards."""

    kind = "contrastive"
    sections = ("loss", "gather", "split_batch")
    batch_type = Batch
    evaluates_in_training = True  # self.model, the M3Model inside the objective

    @classmethod
    def check(cls, stage: StageConfig, run: RunConfig) -> None:
        loss, gather, where = stage.loss, stage.gather, f"stages.{stage.name}"
        for head in HEADS:
            if getattr(loss, f"use_{head}") and not getattr(run.model, head):
                raise ValueError(f"{where}.loss.use_{head} is on but model.{head} is false; "
                                 f"switch the head on or set {where}.loss.use_{head}=false")
        width = _dense_width(run.model.path) if loss.matryoshka_dims else None
        if width is not None:
            check_matryoshka_dims(loss.matryoshka_dims, width, f"{where}.loss.matryoshka_dims")
        if not gather.dense or gather.scores != "local_rows":
            return
        if loss.kd_loss_type == "m3_kd_loss":
            raise ValueError(f"{where}: loss.kd_loss_type m3_kd_loss distils over all ranks' rows; "
                             f"set {where}.gather.scores=all_rows or use kd_loss_type kl_div")
        if not gather.rescale_grad:
            raise ValueError(f"{where}.gather.rescale_grad=false asks for the reference's cross-device dense "
                             "gradient (1/world of the single-process one), which only gather.scores=all_rows "
                             f"computes; set {where}.gather.scores=all_rows, or drop rescale_grad (local_rows "
                             "always gives the single-process gradient)")

    @classmethod
    def check_plan(cls, stage: StageConfig, micro_per_rank: dict[int, int], world_size: int) -> None:
        # Without hard negatives a query's negatives are the other passages its loss sees: this rank's, or
        # every rank's when the dense scores are gathered.
        seen = world_size if stage.gather.dense else 1
        if stage.data.group_size == 1 and min(micro_per_rank.values()) * seen < 2:
            raise ValueError(f"stages.{stage.name}: group size 1 with one query per step has no negative at all "
                             "(the loss is 0); raise the batch size or the group size")

    @classmethod
    def parameter_names(cls, start_dir: Path) -> list[str]:
        return [f"model.{name}" for name in m3_parameter_names(start_dir)]  # M3Objective.model

    def __init__(self, run: RunConfig, stage: StageConfig, start_dir: Path):
        self.stage = stage
        # Refuses rules whose prompts differ from the shards' before the model is even loaded.
        self.prompts = stage_prompts(stage.data.source_rules, stage.data.manifest, stage.data.sources)
        self.inference_prompts = export_prompts(self.prompts)
        self.model, self.tokenizer = load_m3(start_dir, dataclasses.replace(run.model, path=str(start_dir)))
        split = stage.split_batch
        self.objective = M3Objective(self.model, stage.loss, split.sub_batch, split.sub_batch_tokens,
                                     gather_dense=stage.gather.dense, rescale_grad=stage.gather.rescale_grad,
                                     local_rows=stage.gather.scores == "local_rows")
        self.first_window: dict[str, float] | None = None
        """The first logging window's metrics: the sparse-health warning compares later windows with it."""

    def stream(self, manifest, cfg, rank: int, world_size: int, state) -> PairStream:
        return PairStream.from_manifest(manifest, cfg, self.tokenizer, rank, world_size, state)

    def forward(self, engine, batch: Batch, step: int) -> ObjectiveOutput:
        return engine(batch=batch, step=step)

    def warnings(self, metrics: dict[str, float]) -> list[str]:
        if self.first_window is None:
            self.first_window = dict(metrics)
        return all_zero_warnings(metrics, self.stage.loss.sparse_all_zero_warning, self.first_window)

    def export(self, out_dir: Path) -> Path:
        return export_bge_m3(self.model, self.tokenizer, out_dir, prompts=self.inference_prompts)


def _dense_width(model_path: str) -> int | None:
    """The starting model's hidden size (every stage's dense width), when its config.json is readable; the
    objective checks again once the model is loaded, but a later stage's mistake should not wait for it."""
    config = Path(model_path) / "config.json"
    try:
        return int(json.loads(config.read_text(encoding="utf-8"))["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
