"""Where the real tokens of a right-padded batch are: the index maps between (B, L) and packed (T,) rows.

A batch of B right-padded rows of width L holds T = sum(lengths) real tokens. The packed tensor holds
them row after row, the rows sorted by length (longest first, ties in batch order), so that rows of
similar length are neighbours: attention groups (framework/model/attention.py) are then plain slices.
Packed token t is row b, position j of the padded batch, and `flat_T[t]` = b * L + j; `pad` scatters a
packed tensor back to (B, L, ...), zero at padding.

Building a Packing reads the lengths on the host once (one device sync per encoder call): the packed
size T, the longest length and the attention groups are host integers, as in every varlen attention API.

Shape legend (docs/shapes.md): B batch rows, L tokens (the padded width), T real tokens of the batch, packed;
x_BL / x_T may carry more dimensions after these.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Packing:
    """Index maps of one right-padded batch (build with `Packing.from_mask`)."""

    lengths: tuple[int, ...]
    """Real tokens of each row, in packed order (longest first)."""
    rows: tuple[int, ...]
    """Batch row of each packed row."""
    offsets: tuple[int, ...]
    """(B + 1) host offsets of the packed rows in the packed tensor."""
    width: int
    """L, the padded width of the batch."""
    flat_T: torch.Tensor
    """b * L + j of each packed token (long, on the batch's device)."""
    positions_T: torch.Tensor
    """j of each packed token: its position within its text, from 0."""
    cu_seqlens: torch.Tensor
    """(B + 1,) int32 offsets of the packed rows in the packed tensor (the varlen kernels' layout)."""
    first_B: torch.Tensor
    """Packed index of each batch row's first token (CLS), in batch order."""

    @classmethod
    def from_mask(cls, mask_BL: torch.Tensor) -> "Packing":
        """The packing of a right-padded mask (1 = token); ValueError for any other layout."""
        num_rows, width = mask_BL.shape
        device = mask_BL.device
        mask_BL = mask_BL.bool()
        lengths_B = mask_BL.sum(1)
        prefix_BL = torch.arange(width, device=device) < lengths_B[:, None]
        # One transfer brings the lengths and the layout check to the host.
        host = torch.cat([lengths_B, (prefix_BL != mask_BL).any().view(1).long()]).tolist()
        batch_lengths, not_prefix = host[:-1], host[-1]
        if not_prefix:
            raise ValueError("attention_mask is not right-padded (every row must be 1...1 0...0); pad on the "
                             "right (framework/data/collate.py pad_to_multiple) or set model.unpad=false")
        if num_rows and min(batch_lengths) == 0:
            raise ValueError(f"row {batch_lengths.index(0)} of the batch has no token (all-zero attention_mask); "
                             "every text needs at least its CLS token: drop empty rows")
        rows = sorted(range(num_rows), key=lambda b: -batch_lengths[b])
        lengths = [batch_lengths[b] for b in rows]
        total = sum(lengths)
        packed_lengths_B = torch.tensor(lengths, dtype=torch.long, device=device)
        starts_B = packed_lengths_B.cumsum(0) - packed_lengths_B
        row_T = torch.repeat_interleave(torch.arange(num_rows, device=device), packed_lengths_B, output_size=total)
        positions_T = torch.arange(total, device=device) - starts_B[row_T]
        batch_row_B = torch.tensor(rows, dtype=torch.long, device=device)
        flat_T = batch_row_B[row_T] * width + positions_T
        first_B = torch.empty_like(starts_B).index_copy_(0, batch_row_B, starts_B)
        cu_seqlens = torch.cat([starts_B, packed_lengths_B.sum().view(1)]).to(torch.int32)
        offsets = tuple(int(x) for x in np.cumsum([0, *lengths]))
        return cls(tuple(lengths), tuple(rows), offsets, width, flat_T, positions_T, cu_seqlens, first_B)

    @property
    def num_rows(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.flat_T.numel())

    @property
    def max_length(self) -> int:
        return max(self.lengths, default=0)

    def pack(self, x_BL: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (T, ...): the real tokens, in packed order."""
        return x_BL.reshape(-1, *x_BL.shape[2:]).index_select(0, self.flat_T)

    def pad(self, x_T: torch.Tensor) -> torch.Tensor:
        """(T, ...) -> (B, L, ...), zero at padding; differentiable in x_T."""
        out = x_T.new_zeros(self.num_rows * self.width, *x_T.shape[1:]).index_copy(0, self.flat_T, x_T)
        return out.view(self.num_rows, self.width, *x_T.shape[1:])
