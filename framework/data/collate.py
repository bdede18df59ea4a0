"""From records to a training batch: sample each query's group, then pad (to a multiple of 8).

Group sampling follows the reference: one positive drawn from `pos`; G-1 negatives drawn from `neg`
without replacement, the list repeated when it is too short. A query with no negatives keeps its slots
filled with copies of its positive marked invalid (`passage_valid_P` False): the loss must ignore those
columns, so that query trains on in-batch negatives only (the reference divides by zero there).
All randomness comes from a seed derived from (seed, epoch, sample key), so a sample's group does not
depend on which rank, worker or position reads it. A group also carries its source's batch rules
(framework/data/sources.py) and the token-id hashes of its passages and positives (framework/data/
dedup.py): the batch turns them into per-query and per-passage tensors for the objective's masks.

Shape legend (docs/shapes.md): Q queries, P passages (= Q * G), G group size, L tokens, Y positives of a query.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from framework.data.batch import Batch  # defined with the TrainBatch protocol; streams import it from here too
from framework.data.dedup import NO_HASH
from framework.data.plan import derive_seed


@dataclass
class Group:
    """One query with its G passages (positive first), as token ids."""

    key: str
    query_ids: Sequence[int]
    passage_ids: list[Sequence[int]]
    valid: list[bool]
    scores: list[float] | None
    has_negatives: bool
    in_batch: bool = True
    """Whether the query may score other groups' passages (its source's in_batch_negatives)."""
    passage_hashes: list[int] = field(default_factory=list)
    """Token-id hash of each of the G passages (empty: not hashed)."""
    positive_hashes: list[int] = field(default_factory=list)
    """Hashes of all the record's positives (empty when its source masks no duplicates)."""


def choose_group(record: dict, text_ids: list[Sequence[int]], group_size: int, seed: int, epoch: int,
                 key: str) -> Group:
    """text_ids: ids of [query, *pos, *neg] in the record's order."""
    rng = random.Random(derive_seed(seed, epoch, "group", key))
    num_pos, negs = len(record["pos"]), list(range(len(record["neg"])))
    p = rng.randrange(num_pos)
    passages, valid, scores = [text_ids[1 + p]], [True], None
    if group_size > 1 and negs:
        if len(negs) < group_size - 1:
            negs = negs * math.ceil((group_size - 1) / len(negs))
        chosen = rng.sample(negs, group_size - 1)
        passages += [text_ids[1 + num_pos + n] for n in chosen]
        valid += [True] * len(chosen)
        if "pos_scores" in record and "neg_scores" in record:
            scores = [record["pos_scores"][p]] + [record["neg_scores"][n] for n in chosen]
    elif group_size > 1:
        passages += [text_ids[1 + p]] * (group_size - 1)
        valid += [False] * (group_size - 1)
    return Group(key, text_ids[0], passages, valid, scores, bool(negs) or group_size == 1)


def pad_to_multiple(seqs, pad_id: int, multiple: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences (lists or arrays) to the longest, rounded up to `multiple`.

    Vectorised (one concatenate + one masked assignment) because per-row tensor construction was
    the loader's largest cost.
    """
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = -(-int(lengths.max(initial=0)) // multiple) * multiple
    mask = np.arange(width)[None, :] < lengths[:, None]
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    if len(seqs):
        ids[mask] = np.concatenate([np.asarray(s) for s in seqs])  # one cast, in the assignment
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


def collate(groups: list[Group], group_size: int, pad_id: int, stream: tuple, stats: dict[str, int]) -> Batch:
    """Pad a batch. `groups` may be short or even empty when a rank's data ran out through bad records:
    the batch is still yielded (and counted as short) so that every rank takes part in every step."""
    q_ids, q_mask = pad_to_multiple([g.query_ids for g in groups], pad_id)
    p_ids, p_mask = pad_to_multiple([p for g in groups for p in g.passage_ids], pad_id)
    with_scores = all(g.scores is not None for g in groups)
    teacher = torch.tensor([g.scores for g in groups], dtype=torch.float32) if with_scores and groups else None
    real = int(q_mask.numpy().sum() + p_mask.numpy().sum())  # numpy: torch.sum costs ms per call here
    valid = torch.tensor([v for g in groups for v in g.valid], dtype=torch.bool)
    return Batch(q_ids, q_mask, p_ids, p_mask, valid, teacher, group_size, stream, [g.key for g in groups], real,
                 q_ids.numel() + p_ids.numel(), stats, *_rule_tensors(groups, group_size))


def _rule_tensors(groups: list[Group], group_size: int) -> tuple:
    """in_batch_Q, passage_hash_P, positive_hash_QY of the groups (the hashes None unless every group has them)."""
    in_batch_Q = torch.tensor([g.in_batch for g in groups], dtype=torch.bool)
    if not all(len(g.passage_hashes) == group_size for g in groups):
        return in_batch_Q, None, None
    passage_hash_P = torch.tensor([h for g in groups for h in g.passage_hashes], dtype=torch.int64)
    # numpy rows: a torch call per row costs more than the whole fill.
    positive_QY = np.full((len(groups), max((len(g.positive_hashes) for g in groups), default=0)), NO_HASH, np.int64)
    for row, g in enumerate(groups):
        positive_QY[row, :len(g.positive_hashes)] = g.positive_hashes
    return in_batch_Q, passage_hash_P, torch.from_numpy(positive_QY)
