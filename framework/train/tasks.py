"""What differs between stage kinds: the objective, the stream, a micro-batch's arguments, the export.

    contrastive  M3Objective on pair shards (PairStream); exports a BGE-M3 directory
    retromae     RetroMAEObjective on text shards (TextStream); exports the adapted encoder alone (a plain
                 HF directory: the next stage loads it with fresh heads, as it would load XLM-R)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from framework.data.stream import PairStream
from framework.data.text_stream import TextStream
from framework.model import load_m3
from framework.parallel import barrier, is_main, rank
from framework.pretrain import RetroMAEConfig, RetroMAEObjective
from framework.train.config import RunConfig, StageConfig
from framework.train.export import export_bge_m3, full_state_dict
from framework.train.objective import M3Objective


class ContrastiveTask:
    """The M3 loss (dense, sparse, multi-vector, self-distillation) on query/passage groups."""

    stream_class = PairStream

    def __init__(self, run: RunConfig, stage: StageConfig, start_dir: Path):
        self.model, self.tokenizer = load_m3(start_dir, dataclasses.replace(run.model, path=str(start_dir)))
        split = stage.split_batch
        self.objective = M3Objective(self.model, stage.loss_config(), split.sub_batch, split.sub_batch_tokens,
                                     gather_dense=stage.gather.dense, rescale_grad=stage.gather.rescale_grad,
                                     local_rows=stage.gather.scores == "local_rows")

    def after_engine(self, zero_stage: int) -> None:
        pass

    @staticmethod
    def arguments(batch, device: torch.device, micro_step: int) -> tuple:
        teacher = batch.teacher_scores_QG.to(device) if batch.teacher_scores_QG is not None else None
        return (batch.q_ids_QL.to(device), batch.q_mask_QL.to(device), batch.p_ids_PL.to(device),
                batch.p_mask_PL.to(device), batch.group_size, micro_step, teacher, batch.passage_valid_P.to(device))

    @staticmethod
    def num_samples(batch) -> int:
        return batch.q_ids_QL.shape[0]

    def export(self, out_dir: Path) -> Path:
        return export_bge_m3(self.model, self.tokenizer, out_dir)


class RetroMAETask:
    """RetroMAE pre-training of the encoder on plain documents."""

    stream_class = TextStream

    def __init__(self, run: RunConfig, stage: StageConfig, start_dir: Path):
        try:
            cfg = RetroMAEConfig(**stage.retromae)
        except TypeError as err:
            raise ValueError(f"stages.{stage.name}.retromae: {err}; fields are in framework/pretrain/config.py") \
                from err
        self.objective, self.tokenizer = RetroMAEObjective.from_pretrained(start_dir, cfg, rank())

    def after_engine(self, zero_stage: int) -> None:
        if zero_stage == 3:
            import deepspeed

            # The tied LM heads read the encoder's word embeddings: ZeRO-3 must gather them there too.
            for module, param in self.objective.external_parameters():
                deepspeed.zero.register_external_parameter(module, param)

    @staticmethod
    def arguments(batch, device: torch.device, micro_step: int) -> tuple:
        return batch.ids_BL.to(device), batch.mask_BL.to(device), micro_step

    @staticmethod
    def num_samples(batch) -> int:
        return batch.ids_BL.shape[0]

    def export(self, out_dir: Path) -> Path:
        state = full_state_dict(self.objective)
        if is_main():
            self.objective.save_encoder(out_dir, self.tokenizer, state)
        barrier()
        return out_dir


TASKS = {"contrastive": ContrastiveTask, "retromae": RetroMAETask}
