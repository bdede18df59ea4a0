"""Cross-rank gather of embeddings for in-batch negatives over all ranks.

Forward: one all_gather of the shapes, then one all_gather of the data, without gradient. In the
result this rank's rows are the values of its local tensor, and only they carry gradient.

Gradient semantics (W = world size). Every rank computes the same loss L(x_1, ..., x_W) over all ranks'
queries x all ranks' passages, but rank r's backward reaches only its own rows x_r (the other rows
are constants there), so rank r's parameter gradient is g_r = dL/dx_r . dx_r/dtheta. Their SUM over
ranks is the single-process gradient of L on the concatenated batch. A data-parallel engine
(DeepSpeed, DDP) AVERAGES parameter gradients over ranks, so it applies (1/W) of it:
    rescale_grad=True   the local rows' gradient is multiplied by W in backward, so after the
                        engine's averaging the gradient equals the single-process one.
    rescale_grad=False  no factor: FlagEmbedding's behaviour, where the cross-device dense loss acts
                        as the single-process loss divided by W.
The factor applies to every path through the gathered tensor, this rank's own block included: a
term that should see only local rows (the ensemble and self-distillation in framework.loss) must be
computed from the local tensors, not from a slice of the gathered one, or it gets W times its
weight. Backward runs no collective (the engine's gradient all-reduce does the summing), so the gloo
fault on non-contiguous gradients cannot occur; the local slice of the incoming gradient is still
copied to a contiguous tensor so that the (N, ...) gradient buffer is not kept alive as its base.

Local rows (`reduce_grad=True`, for the passages). A rank may instead score only its own queries
against all ranks' passages: a (Q, S) matrix instead of (R, S), which at the paper's unsupervised scale
(96 ranks x 700 queries) is 188 MB instead of 18 GB of fp32 scores per rank. Each rank's loss then
reaches every rank's passages, so backward all-reduces (sums) the gradient of the gathered tensor before
taking this rank's rows: g_r = sum over r' of dL_r'/dx_r. With the engine's averaging, the applied
gradient is that of the mean of the ranks' losses, which is the single-process loss on the concatenated
batch when each rank's loss is weighted by (its rows x W / all rows) (framework/loss GlobalDense's
row_weight). No rescale factor applies in this mode; it costs one all-reduce of (S, D) in backward.

Uneven shapes. The first collective exchanges every rank's shape, so ranks may hold different
numbers of rows B (the last batch of an epoch) and, for sparse (B, L) and multi-vector (B, L, C)
tensors, different trailing sizes: trailing dims are padded to the max over ranks with pad_value
(pass masks through the same function with pad_value=0, so padding is masked out). Rank order is
kept; `Gathered.offset` is this rank's first row (the GlobalDense row_offset for queries).
An empty local batch (B=0) is handled, not refused: the rank contributes no rows, still takes part
in both collectives and gets a zero-row gradient. Every rank must call the same gathers in the same
order (a rank that skips one leaves the others waiting until the process group's timeout);
mismatched ranks or dtypes raise the same ValueError on every rank.

Shape legend (docs/shapes.md): B this rank's rows, W world size, ... trailing dims; scoped here: N all
ranks' rows (sum of B), H header fields.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from framework.parallel.collectives import comm_device

# The shape header is fixed-length so that it travels in one all_gather: [ndim, dtype code, dims...].
MAX_DIMS = 8
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool)


@dataclass(frozen=True)
class Gathered:
    """All ranks' rows in rank order and where this rank's rows are."""

    tensor: Tensor
    """(N, ...) rows of every rank, trailing dims padded to the max over ranks."""
    offset: int
    """Index of this rank's first row."""
    sizes: tuple[int, ...]
    """Rows per rank, in rank order."""
    rank: int
    """This rank (its rows are sizes[rank] rows from offset)."""

    @property
    def num_local(self) -> int:
        return self.sizes[self.rank]

    @property
    def local_rows(self) -> slice:
        return slice(self.offset, self.offset + self.num_local)


def gather_with_grad(x_B: Tensor, rescale_grad: bool = True, pad_value: float = 0,
                     reduce_grad: bool = False) -> Gathered:
    """All ranks' rows; gradient flows to this rank's rows only, times W if rescale_grad, or summed over
    ranks first if reduce_grad (local-rows losses); see the module doc."""
    if not dist.is_initialized():
        return Gathered(x_B, 0, (x_B.shape[0],), 0)
    layout = _Layout.exchange(x_B)
    scale = float(layout.world) if rescale_grad and not reduce_grad else 1.0
    gathered_N = _GatherWithGrad.apply(x_B, layout, scale, pad_value, reduce_grad)
    return Gathered(gathered_N, layout.offset, layout.rows, layout.rank)


def gather(x_B: Tensor, pad_value: float = 0) -> Gathered:
    """All ranks' rows without gradient (token ids, masks, teacher scores)."""
    if not dist.is_initialized():
        return Gathered(x_B.detach(), 0, (x_B.shape[0],), 0)
    layout = _Layout.exchange(x_B)
    gathered_N = _all_gather_padded(x_B.detach(), layout, pad_value)
    return Gathered(gathered_N, layout.offset, layout.rows, layout.rank)


@dataclass(frozen=True)
class _Layout:
    """Every rank's shape, agreed on by one all_gather."""

    shapes: tuple[tuple[int, ...], ...]
    rank: int

    @property
    def world(self) -> int:
        return len(self.shapes)

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(shape[0] for shape in self.shapes)

    @property
    def offset(self) -> int:
        return sum(self.rows[:self.rank])

    @property
    def trailing(self) -> tuple[int, ...]:
        """Max over ranks of each trailing dim: the padded row shape."""
        return tuple(max(dims) for dims in zip(*(shape[1:] for shape in self.shapes)))

    @staticmethod
    def exchange(x_B: Tensor) -> _Layout:
        ndim = x_B.dim() if 1 <= x_B.dim() <= MAX_DIMS else -1
        code = DTYPES.index(x_B.dtype) if x_B.dtype in DTYPES else -1
        header = torch.full((2 + MAX_DIMS,), -1, dtype=torch.int64)
        header[0], header[1] = ndim, code
        if ndim > 0:
            header[2:2 + ndim] = torch.tensor(x_B.shape)
        # gloo accepts only the concatenated output form, (W * H,), not the stacked (W, H).
        headers_WxH = torch.empty(dist.get_world_size() * header.numel(), dtype=torch.int64,
                                  device=comm_device())
        _all_gather_concat(headers_WxH, header.to(comm_device()))
        headers = headers_WxH.view(dist.get_world_size(), -1).tolist()
        _check_headers(headers)
        shapes = tuple(tuple(h[2:2 + h[0]]) for h in headers)
        return _Layout(shapes, dist.get_rank())


def _check_headers(headers: list[list[int]]) -> None:
    """The same check on the same data on every rank, so all ranks raise together or none does."""
    ndims, codes = {h[0] for h in headers}, {h[1] for h in headers}
    described = [f"rank {r}: {'?' if h[0] < 0 else tuple(h[2:2 + h[0]])} "
                 f"{'unsupported dtype' if h[1] < 0 else DTYPES[h[1]]}" for r, h in enumerate(headers)]
    if len(ndims) > 1 or -1 in ndims:
        raise ValueError(f"gather: ranks must pass tensors with the same number of dims, 1 to {MAX_DIMS} "
                         f"(batch first); got {described}.")
    if len(codes) > 1 or -1 in codes:
        raise ValueError(f"gather: ranks must pass the same dtype, one of {[str(d) for d in DTYPES]}; "
                         f"got {described}.")


def _all_gather_padded(x_B: Tensor, layout: _Layout, pad_value: float) -> Tensor:
    """(N, *trailing): every rank's rows, trailing dims padded; all_gather needs equal shapes, so
    batches are padded to the largest B for the transfer and cut back after it."""
    max_rows, trailing = max(layout.rows), layout.trailing
    if max_rows == 0:
        return x_B.new_empty((0, *trailing))
    if tuple(x_B.shape) == (max_rows, *trailing):
        padded = x_B.contiguous()
    else:
        padded = x_B.new_full((max_rows, *trailing), pad_value)
        padded[tuple(slice(0, n) for n in x_B.shape)] = x_B
    device = comm_device()
    out = torch.empty((layout.world * max_rows, *trailing), dtype=x_B.dtype, device=device)
    _all_gather_concat(out, padded.to(device))
    out = out.to(x_B.device)
    if all(n == max_rows for n in layout.rows):
        return out
    blocks = out.view(layout.world, max_rows, *trailing)
    return torch.cat([blocks[r, :n] for r, n in enumerate(layout.rows)])


def _all_gather_concat(out: Tensor, local: Tensor) -> None:
    """all_gather into one preallocated tensor, ranks concatenated along dim 0 (one transfer, no list).

    torch 2.13 renamed all_gather_into_tensor to all_gather_single (the old name warns); setup.py
    allows torch >= 2.4, which has only the old name.
    """
    all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    all_gather_single(out, local)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_B: Tensor, layout: _Layout, scale: float, pad_value: float, reduce_grad: bool) -> Tensor:
        ctx.layout, ctx.scale, ctx.local_shape, ctx.reduce_grad = layout, scale, tuple(x_B.shape), reduce_grad
        return _all_gather_padded(x_B.detach(), layout, pad_value)

    @staticmethod
    def backward(ctx, grad_N: Tensor) -> tuple[Tensor, None, None, None, None]:
        if ctx.reduce_grad:
            # Every rank's loss reached these rows: sum the contributions (contiguous: gloo needs it).
            grad_N = grad_N.contiguous()
            summed = grad_N.to(comm_device(), copy=True)
            dist.all_reduce(summed, op=dist.ReduceOp.SUM)
            grad_N = summed.to(grad_N.device)
        # This rank's rows, padding cut off; the other ranks' rows get their gradient on their own rank.
        offset, (num_rows, *dims) = ctx.layout.offset, ctx.local_shape
        local = (slice(offset, offset + num_rows), *(slice(0, n) for n in dims))
        grad_B = grad_N[local].contiguous()
        return (grad_B * ctx.scale if ctx.scale != 1.0 else grad_B), None, None, None, None
