"""Which (query, passage) entries a query's softmax leaves out, as an additive penalty on the raw scores.

For query row q (row_offset + q among all rows, so its own group is columns (row_offset + q) * G ...) and
passage column c:

    placeholder   ~valid[c]                                   a query without negatives: copies of its positive
    duplicate     hash[c] in positives[q], c not q's positive  a passage equal (token ids) to one of q's
                                                              positives is no negative of q (mask_duplicates)
    off-group     ~in_batch[q] and c // G is not q's group     its source scores only its own group
                                                              (in_batch_negatives: false)

The same rule serves the local (Q, P) matrices of every head, the ensemble and self-distillation
(framework/loss/m3_loss.py takes the local penalty), the dense gather's (Q, S) local rows and (R, S) all
rows (framework/train/objective.py gathers the column keys and, for all rows, the row rules), and the
teacher's targets (own-group entries). An excluded entry gets EXCLUDED_SCORE added: after the
temperature (1/0.02) it is far below any real score, so softmax gives it exactly zero weight, yet it stays
finite in bf16, and the KD terms' 0 * log p stays 0 (an -inf would make it NaN). A query's own positive is
never excluded.

Shape legend (docs/shapes.md): Q query rows (this rank's, or all ranks' R), P passage columns (this rank's,
or all ranks' S), G group size, Y positives of a query.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from framework.loss.infonce import own_group

EXCLUDED_SCORE = -1e4


class RowRules(NamedTuple):
    """What each query row allows."""

    in_batch_Q: Tensor
    """bool: the row may score other groups' passages."""
    positive_hash_QY: Tensor
    """int64 hashes of the row's positives (negative values pad: they match nothing)."""


class ColumnKeys(NamedTuple):
    """What each passage column is."""

    valid_P: Tensor
    """bool: False for placeholder passages."""
    hash_P: Tensor
    """int64 token-id hash of the passage."""


class Exclusions(NamedTuple):
    """The penalty of one score matrix, and the entries only the duplicate rule excluded."""

    penalty_QP: Tensor
    """float32: EXCLUDED_SCORE at excluded entries, 0 elsewhere; add it to raw (not scaled) scores."""
    duplicates_QP: Tensor
    """bool: entries excluded as duplicates that no other rule excludes (what the metrics count)."""


def exclusions(rows: RowRules, cols: ColumnKeys, group_size: int, row_offset: int = 0) -> Exclusions:
    """The penalty of the (Q, P) matrix of `rows` x `cols`; row q's own group starts at (row_offset + q) * G.

    Built on the device from the batch's tensors: no host synchronisation (the positives' width is a shape).
    """
    device, num_q, num_p = cols.valid_P.device, rows.in_batch_Q.shape[0], cols.valid_P.shape[0]
    group_of_P = torch.arange(num_p, device=device) // group_size
    row_of_Q = torch.arange(num_q, device=device) + row_offset
    own_QP = group_of_P[None, :] == row_of_Q[:, None]
    positive_QP = own_QP & (torch.arange(num_p, device=device) % group_size == 0)[None, :]
    duplicate_QP = torch.zeros(num_q, num_p, dtype=torch.bool, device=device)
    for y in range(rows.positive_hash_QY.shape[1]):  # a few positives per query: one (Q, P) compare each
        hash_Q1 = rows.positive_hash_QY[:, y:y + 1]
        duplicate_QP |= (cols.hash_P[None, :] == hash_Q1) & (hash_Q1 >= 0)
    duplicate_QP &= ~positive_QP
    off_group_QP = ~own_QP & ~rows.in_batch_Q[:, None]
    invalid_1P = ~cols.valid_P[None, :]
    excluded_QP = invalid_1P | duplicate_QP | off_group_QP
    return Exclusions(excluded_QP.to(torch.float32) * EXCLUDED_SCORE, duplicate_QP & ~invalid_1P & ~off_group_QP)


def masked_teacher(teacher_QG: Tensor | None, penalty_QP: Tensor | None, group_size: int,
                   row_offset: int = 0) -> Tensor | None:
    """Reranker scores with the own-group entries of `penalty_QP` added: an excluded passage of the group (a
    mined negative equal to a positive) gets no target weight (softmax of raw scores - 1e4 is exactly 0)."""
    if teacher_QG is None or penalty_QP is None:
        return teacher_QG
    return teacher_QG + own_group(penalty_QP, group_size, row_offset).to(teacher_QG.dtype)


def rows_and_columns(in_batch_Q: Tensor | None, positive_hash_QY: Tensor | None, valid_P: Tensor | None,
                     passage_hash_P: Tensor | None, num_q: int, num_p: int, device) -> tuple[RowRules, ColumnKeys]:
    """RowRules and ColumnKeys of a batch's optional tensors: a missing one allows everything."""
    in_batch = torch.ones(num_q, dtype=torch.bool, device=device) if in_batch_Q is None else in_batch_Q.to(device)
    positives = torch.zeros(num_q, 0, dtype=torch.int64, device=device) if positive_hash_QY is None or \
        passage_hash_P is None else positive_hash_QY.to(device)
    valid = torch.ones(num_p, dtype=torch.bool, device=device) if valid_P is None else valid_P.to(device)
    hashes = torch.full((num_p,), -1, dtype=torch.int64, device=device) if passage_hash_P is None else \
        passage_hash_P.to(device)
    return RowRules(in_batch, positives), ColumnKeys(valid, hashes)
