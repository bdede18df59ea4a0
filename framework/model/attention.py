"""Self-attention over packed tokens: every text attends to its own tokens only.

The token-wise layers run on the packed (T, H) tensor; attention is the one place where texts of
different lengths need a layout. A plan is made once per encoder call (from the batch's Packing, whose
rows are sorted by length) and reused by every layer:

    grouped  the sorted rows cut into groups of similar length, each a slice of the packed tensor padded
             to its own longest, one SDPA call per group: attention's padding drops to a few percent
    sdpa     all rows in one call, padded to the batch's longest text
    nested   torch's jagged nested tensors through SDPA (prototype API; on CPU it runs per text)
    flash    FlashAttention-2's varlen kernel on the packed tensor, no padding at all. CUDA with the
             flash_attn package and fp16/bf16 inputs only; it cannot be tested here (no GPU), so it is
             kept to a few lines, and any other input takes the grouped plan
    auto     flash where it can run, else grouped

Measured on CPU (bench/encoder_throughput.py --methods; docs/unpadded-encoding.md): grouped is the
fastest there; nested is several times slower than padding.

`positions` of a plan is what attention itself spends: the query positions of the attention problems it
runs (rows x padded length, summed over its calls); a varlen kernel's is T. Keys are padded alike, so
attention's work is about sum(rows x padded length^2) over its calls.

Shape legend (docs/shapes.md): T real tokens of the batch, packed; N attention heads; D head size; B rows
(of a group); L tokens (a group's padded length); Z positions of the groups' padded buffer.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framework.model.packing import Packing

ATTENTION_KINDS = ("auto", "grouped", "sdpa", "nested", "flash")
# A group closes when the next (shorter) text is below GROUP_RATIO x the group's longest and at least
# GROUP_MIN_CUT tokens shorter: attention pads at most 1 - GROUP_RATIO of a long group's positions, and
# short texts, whose attention is cheap, do not cost an SDPA call per few tokens of length (each call is a
# handful of ops, which a loaded CPU pays for more than for the work). Measured: docs/unpadded-encoding.md.
GROUP_RATIO = 0.8
GROUP_MIN_CUT = 32
HAVE_FLASH = importlib.util.find_spec("flash_attn") is not None


@dataclass(frozen=True)
class PaddedGroup:
    """Consecutive packed rows attended in one SDPA call, padded to the first (longest) of them."""

    rows: int
    length: int
    key_mask_B11L: torch.Tensor | None
    """True at real keys; None when the group's rows all have its length."""


def group_bounds(lengths: tuple[int, ...], ratio: float, min_cut: int) -> list[tuple[int, int]]:
    """(first, last) packed rows of each group (lengths sorted longest first): a group ends before the
    first length below ratio x its own first length and at least min_cut shorter."""
    bounds: list[tuple[int, int]] = []
    first = 0
    for r in range(1, len(lengths) + 1):
        if r == len(lengths) or (lengths[r] < ratio * lengths[first] and lengths[first] - lengths[r] >= min_cut):
            bounds.append((first, r))
            first = r
    return bounds


class GroupedPlan:
    """SDPA per group of consecutive (similar-length) packed rows; one group of all rows is `sdpa`.

    The groups, each padded to its longest, lie one after another in one buffer of `positions` rows:
    q, k and v each go there with one index_copy, every group is a view of it (torch.split, whose
    backward is one concatenation, where per-group slicing would zero-fill the whole buffer per group),
    and the outputs come back with one index_select.
    """

    def __init__(self, packing: Packing, bounds: list[tuple[int, int]]):
        device = packing.flat_T.device
        self.groups, row_slot, offset = [], [], 0
        for first, last in bounds:
            length, lengths = packing.lengths[first], packing.lengths[first:last]
            row_slot += [offset + i * length for i in range(last - first)]
            offset += (last - first) * length
            mask = None
            if min(lengths) < length:
                mask = (torch.arange(length, device=device) < torch.tensor(lengths, device=device)[:, None])
                mask = mask[:, None, None, :]
            self.groups.append(PaddedGroup(last - first, length, mask))
        self.positions = offset
        self.padded = self.positions != packing.num_tokens
        if self.padded:
            lengths_B = torch.tensor(packing.lengths, device=device)
            row_T = torch.repeat_interleave(torch.arange(packing.num_rows, device=device), lengths_B,
                                            output_size=packing.num_tokens)
            self.slots_T = torch.tensor(row_slot, device=device)[row_T] + packing.positions_T

    def __call__(self, q_TND, k_TND, v_TND, dropout_p: float, scale: float) -> torch.Tensor:
        _, num_heads, head_dim = q_TND.shape
        sizes = [g.rows * g.length for g in self.groups]

        def grouped(x_TND):
            if self.padded:
                x_TND = x_TND.new_zeros(self.positions, num_heads, head_dim).index_copy(0, self.slots_T, x_TND)
            return [x.view(g.rows, g.length, num_heads, head_dim).transpose(1, 2)
                    for g, x in zip(self.groups, x_TND.split(sizes))]

        parts = []
        for g, q, k, v in zip(self.groups, grouped(q_TND), grouped(k_TND), grouped(v_TND)):
            out_BNLD = F.scaled_dot_product_attention(q, k, v, attn_mask=g.key_mask_B11L, dropout_p=dropout_p,
                                                      scale=scale)
            parts.append(out_BNLD.transpose(1, 2).reshape(-1, num_heads, head_dim))
        out_ZND = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out_ZND.index_select(0, self.slots_T) if self.padded else out_ZND


class NestedPlan:
    """Jagged nested tensors through SDPA."""

    def __init__(self, packing: Packing):
        self.offsets = packing.cu_seqlens.long()
        self.positions = packing.num_tokens

    def __call__(self, q_TND, k_TND, v_TND, dropout_p: float, scale: float) -> torch.Tensor:
        def nested(x_TND):
            return torch.nested.nested_tensor_from_jagged(x_TND, self.offsets).transpose(1, 2)

        out = F.scaled_dot_product_attention(nested(q_TND), nested(k_TND), nested(v_TND), dropout_p=dropout_p,
                                             scale=scale)
        return out.transpose(1, 2).values()


class FlashPlan:
    """FlashAttention-2 varlen for CUDA fp16/bf16 inputs; any other input goes to the grouped plan."""

    def __init__(self, packing: Packing):
        self.packing, self.fallback = packing, None
        self.positions = packing.num_tokens

    def __call__(self, q_TND, k_TND, v_TND, dropout_p: float, scale: float) -> torch.Tensor:
        if HAVE_FLASH and q_TND.is_cuda and q_TND.dtype in (torch.float16, torch.bfloat16):
            from flash_attn import flash_attn_varlen_func  # CUDA only: untested here (no GPU)

            p = self.packing
            return flash_attn_varlen_func(q_TND, k_TND, v_TND, p.cu_seqlens, p.cu_seqlens, p.max_length,
                                          p.max_length, dropout_p=dropout_p, softmax_scale=scale)
        if self.fallback is None:
            bounds = group_bounds(self.packing.lengths, GROUP_RATIO, GROUP_MIN_CUT)
            self.fallback = GroupedPlan(self.packing, bounds)
            self.positions = self.fallback.positions
        return self.fallback(q_TND, k_TND, v_TND, dropout_p, scale)


def plan_attention(packing: Packing, kind: str = "auto"):
    """The attention plan of one encoder call: plan(q, k, v, dropout_p, scale) -> (T, N, d); .positions."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention kind {kind!r}: use one of {ATTENTION_KINDS}")
    if kind == "sdpa":
        return GroupedPlan(packing, [(0, packing.num_rows)])
    if kind == "nested":
        return NestedPlan(packing)
    if kind == "flash" or (kind == "auto" and HAVE_FLASH and packing.flat_T.is_cuda):
        return FlashPlan(packing)
    return GroupedPlan(packing, group_bounds(packing.lengths, GROUP_RATIO, GROUP_MIN_CUT))
