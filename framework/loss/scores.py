"""Query-passage score matrices of the three M3 heads and their ensemble.

All functions return raw (not temperature-scaled) scores and keep the autograd graph.

Shape legend (docs/shapes.md):
    Q  queries              P  passages
    D  vector width         L  query tokens (after CLS for ColBERT)
    M  passage tokens       U  distinct query token ids in the batch (compact vocabulary)
    B  batch rows (queries or passages)
    C  passages in one ColBERT chunk (scoped here)
"""
from __future__ import annotations

import torch
from torch import Tensor

from framework.loss.config import HeadWeights


def dense_scores(q_QD: Tensor, p_PD: Tensor) -> Tensor:
    """Inner products of (already L2-normalised) CLS embeddings: scores_QP = q . p."""
    return q_QD @ p_PD.T


def sparse_scores(q_weights_QL: Tensor, q_ids_QL: Tensor, p_weights_PM: Tensor, p_ids_PM: Tensor) -> Tensor:
    """Lexical scores: sum over token ids t in both texts of max_q w[t] * max_p w[t].

    A token repeated in one text keeps its max weight. Weights must already be zero at special ids
    (cls/eos/pad/unk) and at padding; the ids there may be anything.

    Cost: the reference scatters every text into a (B, L, V) tensor, which is O(B*L*V) memory
    (V = 250,002 for XLM-R: 131 GB for 256 passages of 512 tokens). Here only ids that occur in some
    query can contribute to a score, so the vocabulary is compacted to the U distinct query ids:
    memory O((Q+P)*U + Q*L + P*M) with U <= distinct query ids <= min(V, Q*L). Passage tokens whose
    id is in no query get no column and no gradient, which is exact: they add 0 to every score.
    The backward of scatter_reduce keeps a handful of (P, U) buffers alive at its peak; measured by
    bench/sparse_score_memory.py at Q=32, P=256, L=512 with Zipf ids: U ~ 7k, ~60 MB for forward +
    backward against ~260 GB (extrapolated) for the (B, L, V) path.
    Gradients reach the weights through scatter_reduce('amax'), which splits the gradient evenly
    between equal maxima of a repeated token (the reference gives it all to one of them).
    """
    vocab_U, q_cols_QL = torch.unique(q_ids_QL, return_inverse=True)
    p_cols_PM = _columns_in_vocab(vocab_U, p_ids_PM)
    num_u = vocab_U.numel()
    q_QU = _max_per_column(q_weights_QL, q_cols_QL, num_u)
    # Passage ids outside the query vocabulary land in one extra trash column, dropped before the matmul.
    p_PU = _max_per_column(p_weights_PM, p_cols_PM, num_u + 1)[:, :num_u]
    return q_QU @ p_PU.T


def _columns_in_vocab(vocab_U: Tensor, ids_PM: Tensor) -> Tensor:
    """Column of each id in the sorted vocab_U, or U (the trash column) when the id is not in it."""
    num_u = vocab_U.numel()
    if num_u == 0:
        return torch.zeros_like(ids_PM)
    pos_PM = torch.searchsorted(vocab_U, ids_PM.contiguous()).clamp_(max=num_u - 1)
    found_PM = vocab_U[pos_PM] == ids_PM
    return torch.where(found_PM, pos_PM, torch.full_like(pos_PM, num_u))


def _max_per_column(weights_BL: Tensor, cols_BL: Tensor, num_cols: int) -> Tensor:
    """(B, num_cols) tensor holding, per text, the max weight of the tokens mapped to each column."""
    out_BU = weights_BL.new_zeros(weights_BL.shape[0], num_cols)
    # include_self=False: the zero fill must not take part in the max (nor in its gradient split).
    return out_BU.scatter_reduce(1, cols_BL, weights_BL, reduce="amax", include_self=False)


# Elements of one (queries, query tokens, passages, passage tokens) similarity block: 64M floats = 256 MB
# in fp32. Forward holds one block and backward about two (the max's gradient and the einsum's), so the
# loss's memory stays flat as the batch grows instead of growing by tens of MB per sequence at 4k tokens.
MAX_BLOCK_ELEMENTS = 1 << 26


def colbert_scores(q_QLD: Tensor, q_mask_QL: Tensor, p_PMD: Tensor, p_mask_PM: Tensor,
                   max_block_elements: int = MAX_BLOCK_ELEMENTS) -> Tensor:
    """Late-interaction scores: sum_i max_j q_i . p_j over real tokens, divided by the real query tokens.

    Passage padding is excluded from the max (the reference lets its zero vectors take part, so a
    query token whose best real match is negative scores 0 there; inference excludes padding, as here).
    A passage with no real token scores 0. The (Q, L, C, M) similarity block exists for one chunk of
    passages (and, for very long inputs, of queries) at a time, at most `max_block_elements` elements;
    autograd keeps just the argmax indices of each chunk, not the block.
    """
    if max_block_elements < 1:
        raise ValueError(f"colbert_scores: max_block_elements={max_block_elements} must be >= 1.")
    num_q, q_len = q_QLD.shape[:2]
    num_p, p_len = p_PMD.shape[:2]
    per_pair = max(q_len * p_len, 1)
    q_chunk = max(1, min(num_q, max_block_elements // per_pair))
    p_chunk = max(1, max_block_elements // (per_pair * q_chunk))
    q_keep_QL = q_mask_QL.to(q_QLD.dtype)
    p_keep_PM = p_mask_PM.bool()
    # An all-padding passage keeps its (zero) vectors so that its max is 0, not the fill value.
    p_keep_PM = p_keep_PM | ~p_keep_PM.any(dim=1, keepdim=True)
    rows = []
    for q0 in range(0, num_q, q_chunk):
        q_part, keep_part = q_QLD[q0:q0 + q_chunk], q_keep_QL[q0:q0 + q_chunk]
        chunks = [_colbert_chunk(q_part, keep_part, p_PMD[start:start + p_chunk], p_keep_PM[start:start + p_chunk])
                  for start in range(0, num_p, p_chunk)]
        rows.append(torch.cat(chunks, dim=1) if chunks else q_part.new_zeros(q_part.shape[0], 0))
    sums_QP = torch.cat(rows, dim=0) if rows else q_QLD.new_zeros(0, num_p)
    return sums_QP / q_keep_QL.sum(dim=1, keepdim=True).clamp(min=1)


def _colbert_chunk(q_QLD: Tensor, q_keep_QL: Tensor, p_CMD: Tensor, p_keep_CM: Tensor) -> Tensor:
    """Sum over real query tokens of the best real passage-token similarity, for one passage chunk."""
    sim_QLCM = torch.einsum("qld,cmd->qlcm", q_QLD, p_CMD)
    # In place: the einsum's backward does not need its output, so this saves one block-sized copy.
    sim_QLCM.masked_fill_(~p_keep_CM[None, None], torch.finfo(sim_QLCM.dtype).min)
    # max(dim) saves only the argmax indices for backward; amax would keep the whole block alive.
    best_QLC = sim_QLCM.max(dim=-1).values
    return (best_QLC * q_keep_QL[:, :, None]).sum(dim=1)


def ensemble_scores(dense_QP: Tensor | None, sparse_QP: Tensor | None, colbert_QP: Tensor | None,
                    weights: HeadWeights) -> Tensor:
    """w_dense*dense + w_sparse*sparse + w_colbert*colbert over the heads that are on (not None)."""
    terms = [(weights.dense, dense_QP), (weights.sparse, sparse_QP), (weights.colbert, colbert_QP)]
    present = [weight * scores_QP for weight, scores_QP in terms if scores_QP is not None]
    if not present:
        raise ValueError("ensemble_scores: every head is None; pass at least one score matrix.")
    return sum(present[1:], present[0])
