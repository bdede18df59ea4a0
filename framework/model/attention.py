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

Shape legend: T packed tokens, S tokens of a group, N heads, d head size, R rows of a group, L its
padded length.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from framework.model.packing import Packing

ATTENTION_KINDS = ("auto", "grouped", "sdpa", "nested", "flash")
# A group closes when the next (shorter) text is below this fraction of the group's longest: attention
# then pads at most about 1 - GROUP_RATIO of a group's positions (bench: --group-ratio).
GROUP_RATIO = 0.85
HAVE_FLASH = importlib.util.find_spec("flash_attn") is not None


@dataclass(frozen=True)
class PaddedGroup:
    """Consecutive packed rows attended in one SDPA call, padded to the first (longest) of them."""

    start: int
    """First packed token of the group."""
    stop: int
    """One past its last packed token."""
    slots_S: torch.Tensor
    """Where each of its tokens sits in the group's (rows x length) padded layout."""
    key_mask_R11L: torch.Tensor
    """True at real keys."""
    rows: int
    length: int

    @property
    def padded(self) -> bool:
        return self.rows * self.length != self.stop - self.start


def padded_group(packing: Packing, first: int, last: int) -> PaddedGroup:
    """The group of packed rows first .. last - 1."""
    device = packing.flat_T.device
    start, stop = packing.offsets[first], packing.offsets[last]
    lengths_R = torch.tensor(packing.lengths[first:last], device=device)
    length = packing.lengths[first]
    positions_S = packing.positions_T[start:stop]
    row_S = torch.repeat_interleave(torch.arange(last - first, device=device), lengths_R, output_size=stop - start)
    key_mask_RL = torch.arange(length, device=device) < lengths_R[:, None]
    return PaddedGroup(start, stop, row_S * length + positions_S, key_mask_RL[:, None, None, :], last - first, length)


def group_bounds(lengths: tuple[int, ...], ratio: float = GROUP_RATIO) -> list[tuple[int, int]]:
    """(first, last) packed rows of each group: cut where a length drops below ratio x its group's first."""
    bounds: list[tuple[int, int]] = []
    first = 0
    for r in range(1, len(lengths) + 1):
        if r == len(lengths) or lengths[r] < ratio * lengths[first]:
            bounds.append((first, r))
            first = r
    return bounds


def _sdpa_group(group: PaddedGroup, q_TNd, k_TNd, v_TNd, dropout_p: float, scale: float) -> torch.Tensor:
    """SDPA over one group -> (S, N, d), the group's tokens in packed order."""
    _, num_heads, head_dim = q_TNd.shape

    def padded(x_TNd):
        x_SNd = x_TNd[group.start:group.stop]
        if group.padded:
            x_SNd = x_SNd.new_zeros(group.rows * group.length, num_heads, head_dim).index_copy(0, group.slots_S, x_SNd)
        return x_SNd.view(group.rows, group.length, num_heads, head_dim).transpose(1, 2)

    mask = group.key_mask_R11L if group.padded else None
    out_RNLd = F.scaled_dot_product_attention(padded(q_TNd), padded(k_TNd), padded(v_TNd), attn_mask=mask,
                                              dropout_p=dropout_p, scale=scale)
    out_XNd = out_RNLd.transpose(1, 2).reshape(-1, num_heads, head_dim)
    return out_XNd.index_select(0, group.slots_S) if group.padded else out_XNd


class GroupedPlan:
    """SDPA per group of consecutive (similar-length) packed rows; one group of all rows is `sdpa`."""

    def __init__(self, packing: Packing, bounds: list[tuple[int, int]]):
        self.groups = [padded_group(packing, first, last) for first, last in bounds]
        self.positions = sum(g.rows * g.length for g in self.groups)

    def __call__(self, q_TNd, k_TNd, v_TNd, dropout_p: float, scale: float) -> torch.Tensor:
        parts = [_sdpa_group(g, q_TNd, k_TNd, v_TNd, dropout_p, scale) for g in self.groups]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class NestedPlan:
    """Jagged nested tensors through SDPA."""

    def __init__(self, packing: Packing):
        self.offsets = packing.cu_seqlens.long()
        self.positions = packing.num_tokens

    def __call__(self, q_TNd, k_TNd, v_TNd, dropout_p: float, scale: float) -> torch.Tensor:
        def nested(x_TNd):
            return torch.nested.nested_tensor_from_jagged(x_TNd, self.offsets).transpose(1, 2)

        out = F.scaled_dot_product_attention(nested(q_TNd), nested(k_TNd), nested(v_TNd), dropout_p=dropout_p,
                                             scale=scale)
        return out.transpose(1, 2).values()


class FlashPlan:
    """FlashAttention-2 varlen for CUDA fp16/bf16 inputs; any other input goes to the grouped plan."""

    def __init__(self, packing: Packing):
        self.packing, self.fallback = packing, None
        self.positions = packing.num_tokens

    def __call__(self, q_TNd, k_TNd, v_TNd, dropout_p: float, scale: float) -> torch.Tensor:
        if HAVE_FLASH and q_TNd.is_cuda and q_TNd.dtype in (torch.float16, torch.bfloat16):
            from flash_attn import flash_attn_varlen_func  # CUDA only: untested here (no GPU)

            p = self.packing
            return flash_attn_varlen_func(q_TNd, k_TNd, v_TNd, p.cu_seqlens, p.cu_seqlens, p.max_length,
                                          p.max_length, dropout_p=dropout_p, softmax_scale=scale)
        if self.fallback is None:
            self.fallback = GroupedPlan(self.packing, group_bounds(self.packing.lengths))
            self.positions = self.fallback.positions
        return self.fallback(q_TNd, k_TNd, v_TNd, dropout_p, scale)


def plan_attention(packing: Packing, kind: str = "auto", ratio: float = GROUP_RATIO):
    """The attention plan of one encoder call: plan(q, k, v, dropout_p, scale) -> (T, N, d); .positions."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention kind {kind!r}: use one of {ATTENTION_KINDS}")
    if kind == "sdpa":
        return GroupedPlan(packing, [(0, packing.num_rows)])
    if kind == "nested":
        return NestedPlan(packing)
    if kind == "flash" or (kind == "auto" and HAVE_FLASH and packing.flat_T.is_cuda):
        return FlashPlan(packing)
    return GroupedPlan(packing, group_bounds(packing.lengths, ratio))
