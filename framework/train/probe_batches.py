"""Synthetic micro-batches for the batch-size probe: the worst case of a length bucket, with real token ids.

At a bucket's upper edge E every text is as long as the bucket and the truncation allow: queries
min(E, query_max_length) tokens, passages (documents) min(E, passage_max_length), no padding, `group_size`
passages per query. Ids start with the tokenizer's <s>/[CLS], end with </s>/[SEP] and are uniform over
the ordinary vocabulary in between: near-distinct ids are the sparse head's worst case (its score works
on the distinct query ids, framework/loss/scores.py), so the probe does not flatter it.

One builder per batch type (the stage kind's `batch_type`, framework/train/tasks/); a new kind whose
batch type is not here gets an error saying to add one.

Shape legend (docs/shapes.md): Q queries, P passages (= Q * G), G group size, B documents, L tokens, V vocabulary.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from framework.data.batch import Batch, TextBatch, TrainBatch
from framework.data.config import DataConfig


@dataclass(frozen=True)
class Shape:
    """The texts of a probed bucket."""

    edge: int
    """The bucket's upper edge in tokens."""
    query_length: int
    """Tokens per query (the edge, or query_max_length when shorter)."""
    passage_length: int
    """Tokens per passage or document (the edge, or passage_max_length when shorter)."""
    group_size: int
    """Passages per query."""
    bucket: int
    """The bucket's index among the stage's edges (batches carry it, as the stream's do)."""

    @classmethod
    def at_edge(cls, edges: tuple[int, ...], edge: int, data: DataConfig) -> "Shape":
        """The worst case of the bucket with upper edge `edge` under the stage's truncation and group size."""
        return cls(edge=edge, query_length=min(edge, data.query_max_length),
                   passage_length=min(edge, data.passage_max_length), group_size=data.group_size,
                   bucket=edges.index(edge))


class TokenIds:
    """Rows of token ids shaped like encoded texts: <s>, ordinary ids, </s>."""

    def __init__(self, tokenizer, seed: int):
        first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if first is None or last is None:
            raise ValueError("the stage's tokenizer has no <s>/[CLS] or </s>/[SEP] token; use an XLM-R or BERT "
                             "tokenizer")
        vocab_V = torch.ones(len(tokenizer), dtype=torch.bool)
        vocab_V[[i for i in tokenizer.all_special_ids if i is not None and i < len(tokenizer)]] = False
        self.first, self.last = first, last
        self.ordinary = vocab_V.nonzero().squeeze(1)
        """Ids that are not special tokens (what the middle of a text holds)."""
        self.seed, self.generator = seed, torch.Generator()

    def reseed(self, shape: Shape, num_samples: int) -> None:
        """The same ids for the same bucket and batch size every time: the sparse head's memory depends on
        how many distinct ids the queries hold, so a repeated measurement must see the same ones."""
        self.generator.manual_seed(self.seed * 1_000_003 + shape.edge * 10_007 + num_samples)

    def rows(self, num_rows: int, length: int) -> torch.Tensor:
        ids_BL = self.ordinary[torch.randint(len(self.ordinary), (num_rows, length), generator=self.generator)]
        ids_BL[:, 0] = self.first
        ids_BL[:, -1] = self.last
        return ids_BL


def pair_batch(num_queries: int, shape: Shape, ids: TokenIds) -> Batch:
    """`num_queries` queries with `group_size` passages each, every text at its full length."""
    q_ids_QL = ids.rows(num_queries, shape.query_length)
    p_ids_PL = ids.rows(num_queries * shape.group_size, shape.passage_length)
    return Batch.of(q_ids_QL=q_ids_QL, q_mask_QL=torch.ones_like(q_ids_QL), p_ids_PL=p_ids_PL,
                    p_mask_PL=torch.ones_like(p_ids_PL), group_size=shape.group_size, stream=("probe", shape.bucket))


def text_batch(num_documents: int, shape: Shape, ids: TokenIds) -> TextBatch:
    """`num_documents` documents of the full passage length."""
    ids_BL = ids.rows(num_documents, shape.passage_length)
    return TextBatch(ids_BL=ids_BL, mask_BL=torch.ones_like(ids_BL), stream=("probe", shape.bucket),
                     keys=[str(i) for i in range(num_documents)], num_tokens=ids_BL.numel(),
                     num_padded_tokens=ids_BL.numel(), stats={})


BUILDERS: dict[type, Callable[[int, Shape, TokenIds], TrainBatch]] = {Batch: pair_batch, TextBatch: text_batch}


def builder_for(batch_type: type, kind: str) -> Callable[[int, Shape, TokenIds], TrainBatch]:
    """The synthetic-batch builder of a stage kind's batch type."""
    if batch_type not in BUILDERS:
        raise ValueError(f"probe-batch has no synthetic batch for kind {kind!r} (batch type {batch_type.__name__}); "
                         "add a builder to framework/train/probe_batches.py BUILDERS")
    return BUILDERS[batch_type]
