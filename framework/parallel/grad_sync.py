"""The data-parallel gradient mean of a ZeRO-0 engine, with embedding matrices reduced by touched rows.

DeepSpeed's ZeRO-0 all-reduces every gradient as flat buffers at the accumulation boundary. A word
embedding's gradient is non-zero only in the rows of the batch's token ids: a batch of a few thousand
distinct tokens touches ~1-2% of XLM-R's 250,002 rows, yet the flat all-reduce sends all of them
(96M floats of mE5-small's 118M parameters). `row_sparse_mean` sends instead, per embedding matrix, a
mask of the rows non-zero on this rank (one int32 per row, summed over ranks) and then only the rows
non-zero on some rank; a row zero on every rank has mean zero and is left as it is. The result equals the
flat mean: the same sums over ranks of the same values, then the same multiply by 1 / world size.
Every other gradient goes through flat buffers as DeepSpeed's do. With one rank the mean is the
gradient itself, so nothing runs.

`install_grad_sync(engine)` puts it in the place DeepSpeed reduces (its `allreduce_gradients`, which the
engine calls at the accumulation boundary of backward, outside `no_sync`) when the engine is ZeRO-0 with
fp32 gradients on the client optimizer; other engines keep DeepSpeed's own reduction.

Shape legend (docs/shapes.md): V rows of an embedding matrix (the vocabulary), H its width.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

BUCKET_ELEMENTS = 1 << 26  # 64M floats (256 MiB) per flat buffer at most, as DeepSpeed's buffers are bounded


def row_sparse_mean(params: list[nn.Parameter], embedding_ids: set[int]) -> None:
    """Replace every parameter's gradient by its mean over the default group's ranks, in place.

    `embedding_ids`: id() of the parameters reduced by touched rows (2-D, one row per token id). A missing
    gradient counts as zeros (created, so every rank reduces the same tensors, as DeepSpeed does)."""
    world = dist.get_world_size()
    flat, rows = [], []
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        (rows if id(param) in embedding_ids else flat).append(param.grad)
    for bucket in _buckets(flat):
        buffer = _flatten_dense_tensors(bucket)
        dist.all_reduce(buffer)
        buffer.mul_(1.0 / world)
        for grad, mean in zip(bucket, _unflatten_dense_tensors(buffer, bucket)):
            grad.copy_(mean)
    for grad_VH in rows:
        touched_V = (grad_VH != 0).any(dim=1).to(torch.int32)  # NaN and inf rows count as touched
        dist.all_reduce(touched_V)
        index = touched_V.nonzero().squeeze(1)
        block = grad_VH.index_select(0, index)
        dist.all_reduce(block)
        block.mul_(1.0 / world)
        grad_VH.index_copy_(0, index, block)


def _buckets(grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive gradients grouped by dtype into buffers of at most BUCKET_ELEMENTS (one larger tensor
    makes a bucket of its own)."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for grad in grads:
        if not buckets or size + grad.numel() > BUCKET_ELEMENTS or buckets[-1][0].dtype != grad.dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(grad)
        size += grad.numel()
    return buckets


def install_grad_sync(engine) -> str:
    """Give a ZeRO-0 fp32 DeepSpeed engine the reduction above; returns what reduces its gradients:
    "deepspeed" (left as it is), "none (one rank)" or "row-sparse"."""
    if (engine.zero_optimization_stage() != 0 or engine.bfloat16_enabled() or engine.fp16_enabled()
            or getattr(engine, "has_moe_layers", False)):
        return "deepspeed"
    if not dist.is_initialized() or dist.get_world_size() == 1:
        engine.enable_backward_allreduce = False  # the mean over one rank is the gradient itself
        return "none (one rank)"
    module = engine.module
    params = [p for p in module.parameters() if p.requires_grad and p.numel() > 0]
    embedding_ids = {id(m.weight) for m in module.modules()
                     if isinstance(m, nn.Embedding) and m.weight.requires_grad}
    # DeepSpeed calls this at the accumulation boundary of backward, outside no_sync.
    engine.allreduce_gradients = lambda *args, **kwargs: row_sparse_mean(params, embedding_ids)
    return "row-sparse"
