"""Typed output of the M3 model.

Shape legend (docs/shapes.md): B batch rows, L tokens (input length), H hidden size, D dense size (= H),
C colbert size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class M3Output:
    """What one forward pass gives; a head that is switched off leaves its fields None."""

    token_ids_BL: torch.Tensor
    """Input ids, kept because the sparse score matches terms by id."""
    attention_mask_BL: torch.Tensor
    """1 for real tokens, 0 for padding."""
    dense_BD: torch.Tensor | None = None
    """Normalised hidden state of the first token (CLS)."""
    sparse_BL: torch.Tensor | None = None
    """relu(sparse_linear(h)) per token; zero at cls/eos/pad/unk ids and at padding."""
    colbert_BLC: torch.Tensor | None = None
    """colbert_linear(h[:, 1:]): L here is the input length - 1 (CLS dropped, </s> kept); zero at padding."""
    colbert_mask_BL: torch.Tensor | None = None
    """attention_mask[:, 1:], the mask of colbert_BLC."""
    computed_positions: int | None = None
    """Token positions the encoder's token-wise layers (embeddings, projections, feed-forward, LayerNorm)
    actually ran on for this output (set by the encoding code); None = every padded position
    (token_ids_BL.numel()). Padding efficiency = real tokens / this."""
    attention_positions: int | None = None
    """Query positions of the attention problems the encoder ran (rows x padded length, summed over its
    calls; one layer's worth, like computed_positions); None = every padded position. Attention's work
    is about these positions x their padded length, so this is the padding attention still computes on."""
