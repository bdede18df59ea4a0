"""Split-batch encoding (the paper's Algorithm 1): a large batch encoded in sub-batches.

Each sub-batch's whole forward (encoder + heads) runs under non-reentrant activation checkpointing, so
the forward keeps only each sub-batch's inputs and head outputs; backward recomputes one sub-batch at a
time. Peak activation memory is then one sub-batch's full activations plus the whole batch's head
outputs, instead of the whole batch's activations, at the price of one extra forward. The outputs are
concatenated along the batch, so the loss sees every passage as a negative of every query, exactly as
without splitting: without dropout the loss and its gradient are the same up to float summation order
(with dropout the masks are drawn per sub-batch, a different but equally valid draw). Each sub-batch
goes through M3Model.forward, so with unpadded encoding (the default) a sub-batch computes on its own
real tokens only, whatever the width of the batch it was cut from.

Non-reentrant checkpointing is required: the reentrant variant breaks under ZeRO-2/3 when a step runs
two forwards (queries, passages) before one backward. Dropout draws are replayed in the recompute
(torch saves and restores the RNG state), so the recomputed activations equal the first ones.

Shape legend (docs/shapes.md): B batch rows (sequences), L tokens.
"""
from __future__ import annotations

import dataclasses

import torch
from torch.utils.checkpoint import checkpoint

from framework.model import M3Model, M3Output


def sub_batch_size(width: int, sub_batch: int | None, sub_batch_tokens: int | None) -> int | None:
    """Sequences per sub-batch for a batch padded to `width` tokens (None: no splitting)."""
    if sub_batch is not None:
        return sub_batch
    if sub_batch_tokens is not None:
        return max(1, sub_batch_tokens // max(width, 1))
    return None


def encode(model: M3Model, ids_BL: torch.Tensor, mask_BL: torch.Tensor, sub_batch: int | None) -> M3Output:
    """model(ids, mask), in checkpointed sub-batches of `sub_batch` rows when that splits the batch."""
    num_rows = ids_BL.shape[0]
    if sub_batch is None or sub_batch >= num_rows or not torch.is_grad_enabled():
        return model(ids_BL, mask_BL)
    parts = [checkpoint(model, ids_BL[start:start + sub_batch], mask_BL[start:start + sub_batch],
                        use_reentrant=False)
             for start in range(0, num_rows, sub_batch)]
    return concat_outputs(parts)


def concat_outputs(parts: list[M3Output]) -> M3Output:
    """One M3Output whose tensors are the parts' tensors concatenated along the batch; position counts
    (computed_positions, attention_positions) add up, and stay None unless every part has one."""
    fields = {}
    for field in dataclasses.fields(M3Output):
        values = [getattr(part, field.name) for part in parts]
        if any(v is None for v in values):
            fields[field.name] = None
        elif isinstance(values[0], int):
            fields[field.name] = sum(values)
        else:
            fields[field.name] = torch.cat(values, dim=0)
    return M3Output(**fields)
