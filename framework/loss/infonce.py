"""Grouped InfoNCE and the distillation losses built on it (the reference's loss primitives).

Every function takes temperature-scaled scores. Passages come in groups of G per query, positive
first, so the target of query i is passage i*G; all other passages of the batch are in-batch negatives.

Shape legend (docs/shapes.md):
    Q  queries        P  passages = Q*G        G  passages per query (group size)
    X  any number of columns (P or G)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def positive_columns(num_queries: int, group_size: int, device: torch.device, row_offset: int = 0) -> Tensor:
    """Column of each query's positive passage: (row_offset + i) * G (row_offset: rows held elsewhere)."""
    return (torch.arange(num_queries, device=device) + row_offset) * group_size


def infonce(scores_QP: Tensor, group_size: int, row_offset: int = 0) -> Tensor:
    """Cross-entropy over all P passages of each row, target i*G (in-batch negatives included).
    With `row_offset`, the rows are queries row_offset.. of a larger batch whose passages are all columns."""
    return F.cross_entropy(scores_QP, positive_columns(scores_QP.shape[0], group_size, scores_QP.device,
                                                       row_offset))


def own_group(scores_QP: Tensor, group_size: int, row_offset: int = 0) -> Tensor:
    """scores_QG: each query's scores against its own G passages (the reference's get_local_score)."""
    first_Q = positive_columns(scores_QP.shape[0], group_size, scores_QP.device, row_offset)
    cols_QG = first_Q[:, None] + torch.arange(group_size, device=scores_QP.device)
    return scores_QP.gather(1, cols_QG)


def soft_cross_entropy(targets_QX: Tensor, scores_QX: Tensor) -> Tensor:
    """-mean_i sum_x t[i,x] log softmax(s)[i,x]: the reference's 'kl_div' distill loss (no entropy term)."""
    return -(targets_QX * torch.log_softmax(scores_QX, dim=-1)).sum(dim=-1).mean()


def m3_kd_loss(targets_QG: Tensor, scores_QP: Tensor, group_size: int) -> Tensor:
    """The reference's 'm3_kd_loss': sum_g mean_i t[i,g] * CE(scores, i*G+g) over all P passages,
    where the passages g' < g of the query's own group are masked out of the g-th softmax.

    Plackett-Luce style: group member g competes with the members after it and the other queries'
    passages, not with those before it. The mask writes finfo.min where the reference adds it, which
    gives the same numbers for any score far from finfo.min.
    """
    num_q = scores_QP.shape[0]
    rows_Q = torch.arange(num_q, device=scores_QP.device)
    first_Q = positive_columns(num_q, group_size, scores_QP.device)
    floor = torch.finfo(scores_QP.dtype).min
    masked_QP = scores_QP
    loss = scores_QP.new_zeros(())
    for g in range(group_size):
        ce_Q = F.cross_entropy(masked_QP, first_Q + g, reduction="none")
        loss = loss + (targets_QG[:, g] * ce_Q).mean()
        masked_QP = masked_QP.index_put((rows_Q, first_Q + g), masked_QP.new_tensor(floor))
    return loss


def grouped_infonce(scores_QP: Tensor, group_size: int, targets_QG: Tensor | None = None,
                    kd_loss_type: str = "kl_div") -> Tensor:
    """One head's contrastive loss, with optional reranker teacher targets (softmax over the group).

    Without targets: `infonce`. 'kl_div': soft cross-entropy on the own-group scores plus `infonce`.
    'm3_kd_loss': `m3_kd_loss` alone (it already contains the positive's cross-entropy).
    """
    if targets_QG is None:
        return infonce(scores_QP, group_size)
    if kd_loss_type == "m3_kd_loss":
        return m3_kd_loss(targets_QG, scores_QP, group_size)
    if kd_loss_type == "kl_div":
        soft = soft_cross_entropy(targets_QG, own_group(scores_QP, group_size))
        return soft + infonce(scores_QP, group_size)
    raise ValueError(f"grouped_infonce: kd_loss_type={kd_loss_type!r} is unknown; "
                     "use 'kl_div' or 'm3_kd_loss'.")
