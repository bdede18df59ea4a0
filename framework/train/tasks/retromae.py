"""Kind 'retromae': RetroMAE pre-training of the encoder on plain documents (framework/pretrain).

Section: retromae (RetroMAEConfig). Stream: TextStream over text shards, yielding `TextBatch`. Export:
the adapted encoder alone, a plain HF directory (the next stage loads it with fresh heads, as it would
load XLM-R).

Shape legend (docs/shapes.md): B batch rows (documents), L tokens.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from framework.data.batch import TextBatch
from framework.data.text_stream import TextStream
from framework.parallel import barrier, is_main, rank
from framework.pretrain import RetroMAEObjective
from framework.train.export import full_state_dict
from framework.train.objective import ForwardReport, ObjectiveOutput
from framework.train.tasks.base import StageTask

if TYPE_CHECKING:
    from framework.train.config import RunConfig, StageConfig


class RetroMAETask(StageTask):
    """RetroMAE's encoder MLM + enhanced decoding on text shards."""

    kind = "retromae"
    sections = ("retromae",)
    batch_type = TextBatch

    @classmethod
    def check(cls, stage: StageConfig, run: RunConfig) -> None:
        longest, where = stage.data.passage_max_length, f"stages.{stage.name}"
        if longest > stage.retromae.max_length:
            raise ValueError(f"{where}.data.passage_max_length={longest} keeps documents longer than "
                             f"{where}.retromae.max_length={stage.retromae.max_length}, the longest document the "
                             "objective is built for; set both to the same length")

    def __init__(self, run: RunConfig, stage: StageConfig, start_dir: Path):
        self.objective, self.tokenizer = RetroMAEObjective.from_pretrained(start_dir, stage.retromae, rank(),
                                                                           unpad=run.model.unpad)

    def stream(self, manifest, cfg, rank: int, world_size: int, state) -> TextStream:
        return TextStream.from_manifest(manifest, cfg, self.tokenizer, rank, world_size, state)

    def after_engine(self, zero_stage: int) -> None:
        if zero_stage == 3:
            import deepspeed

            # The tied LM heads read the encoder's word embeddings: ZeRO-3 must gather them there too.
            for module, param in self.objective.external_parameters():
                deepspeed.zero.register_external_parameter(module, param)

    def forward(self, engine, batch: TextBatch, step: int) -> ObjectiveOutput:
        terms = engine(input_ids_BL=batch.ids_BL, attention_mask_BL=batch.mask_BL, step=step)
        # The objective returns loss terms only (framework/pretrain does not import the trainer's types).
        return ObjectiveOutput(terms, ForwardReport(self.objective.last_computed_positions,
                                                    attention_positions=self.objective.last_attention_positions))

    def export(self, out_dir: Path) -> Path:
        state = full_state_dict(self.objective)
        if is_main():
            self.objective.save_encoder(out_dir, self.tokenizer, state)
        barrier()
        return out_dir
