"""What a stream hands the trainer: one micro-batch, passed by name (the `TrainBatch` protocol).

    Batch      query/passage groups of the contrastive stages (framework/data/collate.py pads them)
    TextBatch  documents of the RetroMAE stage (framework/data/text_stream.py)

The trainer reads only the protocol: where the batch came from (`source`, `bucket`), what it holds
(`num_samples`, `num_tokens`, `num_padded_tokens`, `keys`), the records its stream counted since the
previous batch (`stats`), and `to(device)`. What a batch's tensors mean is the business of its stage
kind's objective (framework/train/tasks/).

A batch may be short, or hold no sample at all, when bad records ate a rank's share of the data: the
stream still yields it so that every rank takes part in every step; the trainer decides with the other
ranks what such a step does (framework/train/steps.py).

Shape legend (docs/shapes.md): Q queries, P passages (= Q * G), G group size, B batch rows (documents), L tokens,
Y positives of a query (all of its record's, padded).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import torch

B = TypeVar("B")


@runtime_checkable
class TrainBatch(Protocol):
    """One micro-batch as the trainer sees it, whatever the stage kind."""

    keys: list[str]
    """Sample keys, in batch order (the first one names the batch in error messages)."""
    num_tokens: int
    """Real (unpadded) tokens."""
    num_padded_tokens: int
    """Token positions including padding (what a padded encoder computes on)."""
    stats: dict[str, int]
    """Records counted by reason (bad ones, truncated, short batches...) since the previous batch."""

    @property
    def source(self) -> str:
        """Source the batch was drawn from ('*' when a batch mixes sources)."""
        ...

    @property
    def bucket(self) -> int:
        """Length bucket index the batch was drawn from."""
        ...

    @property
    def num_samples(self) -> int:
        """Samples (queries, documents) the batch holds; 0 when the rank's stream ran dry."""
        ...

    def to(self: B, device: torch.device | str) -> B:
        """The same batch with its tensors on `device`."""
        ...


class _StreamKey:
    """`source` and `bucket` out of the (source, bucket) key of the stream a batch came from."""

    stream: tuple

    @property
    def source(self) -> str:
        return str(self.stream[0])

    @property
    def bucket(self) -> int:
        return int(self.stream[1])


def _moved(batch, device: torch.device | str):
    """`batch` with every tensor field on `device` (non-blocking: a pinned CPU batch copies asynchronously)."""
    changes = {f.name: value.to(device, non_blocking=True) for f in dataclasses.fields(batch)
               if isinstance(value := getattr(batch, f.name), torch.Tensor)}
    return dataclasses.replace(batch, **changes)


@dataclass
class Batch(_StreamKey):
    """Query/passage groups, padded: what the contrastive stages consume."""

    q_ids_QL: torch.Tensor
    q_mask_QL: torch.Tensor
    p_ids_PL: torch.Tensor
    p_mask_PL: torch.Tensor
    passage_valid_P: torch.Tensor
    """False for placeholder passages of queries without negatives."""
    teacher_scores_QG: torch.Tensor | None
    """Reranker scores when every query of the batch carries them."""
    group_size: int
    stream: tuple
    """(source, bucket) the batch was drawn from."""
    keys: list[str]
    num_tokens: int
    """Real (unpadded) tokens in queries and passages."""
    num_padded_tokens: int
    """Tokens including padding: num_tokens / num_padded_tokens is the padding efficiency."""
    stats: dict[str, int]
    """Records counted by reason (bad, truncated, no negatives...) since the previous batch."""
    in_batch_Q: torch.Tensor | None = None
    """Per query: whether its source lets it score other groups' passages (data.source_rules.<source>.
    in_batch_negatives); None: every query does."""
    passage_hash_P: torch.Tensor | None = None
    """int64 token-id hash of each passage (framework/data/dedup.py); None: no duplicate masking."""
    positive_hash_QY: torch.Tensor | None = None
    """int64 hashes of each query's positives, NO_HASH-padded (none for a source that masks no duplicates);
    a passage with one of them is no negative of that query."""

    @property
    def num_samples(self) -> int:
        return int(self.q_ids_QL.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        return _moved(self, device)

    @classmethod
    def of(cls, q_ids_QL: torch.Tensor, q_mask_QL: torch.Tensor, p_ids_PL: torch.Tensor, p_mask_PL: torch.Tensor,
           group_size: int, passage_valid_P: torch.Tensor | None = None,
           teacher_scores_QG: torch.Tensor | None = None, stream: tuple = ("*", 0),
           in_batch_Q: torch.Tensor | None = None, passage_hash_P: torch.Tensor | None = None,
           positive_hash_QY: torch.Tensor | None = None) -> "Batch":
        """A batch of given tensors (tests, benchmarks): counts derived, every passage valid unless said."""
        valid_P = torch.ones(p_ids_PL.shape[0], dtype=torch.bool) if passage_valid_P is None else passage_valid_P
        real = int(q_mask_QL.sum()) + int(p_mask_PL.sum())
        return cls(q_ids_QL, q_mask_QL, p_ids_PL, p_mask_PL, valid_P, teacher_scores_QG, group_size, stream,
                   [str(i) for i in range(q_ids_QL.shape[0])], real, q_ids_QL.numel() + p_ids_PL.numel(), {},
                   in_batch_Q, passage_hash_P, positive_hash_QY)


@dataclass
class TextBatch(_StreamKey):
    """Documents, padded: what the RetroMAE stage consumes."""

    ids_BL: torch.Tensor
    mask_BL: torch.Tensor
    stream: tuple
    """(source, bucket) the batch was drawn from."""
    keys: list[str]
    num_tokens: int
    """Real (unpadded) tokens."""
    num_padded_tokens: int
    """Tokens including padding: num_tokens / num_padded_tokens is the padding efficiency."""
    stats: dict[str, int]
    """Records counted by reason (bad ones, truncated, short batches) since the previous batch."""

    @property
    def num_samples(self) -> int:
        return int(self.ids_BL.shape[0])

    def to(self, device: torch.device | str) -> "TextBatch":
        return _moved(self, device)
