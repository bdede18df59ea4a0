"""MCLS (multiple CLS, paper appendix B.2): long documents without long fine-tuning.

A CLS token opens every block of `interval` positions: [CLS t1 .. t_{n-1}] [CLS t_n ..] ... </s>.
The document embedding is the mean of the last hidden states of all CLS tokens, then L2-normalised.

Positions: the inserted CLS tokens are ordinary members of the sequence and take the next position ids,
exactly as if they were text tokens, so the model sees one contiguous sequence and no position-id
surgery is needed (the encoder's own position ids are used). The cost is that the inserted tokens
consume positions: text tokens are truncated so that text + inserted CLS + </s> fits `max_length`.

Shape legend (docs/shapes.md): B batch rows, L tokens, H hidden size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from framework.model.unpadded import last_hidden_state


def insert_cls(text_ids: list[int], cls_id: int, eos_id: int, interval: int, max_length: int) -> list[int]:
    """Text ids (no specials) -> the MCLS sequence, truncated to at most max_length tokens."""
    if interval < 2:
        raise ValueError(f"MCLS interval={interval}: use at least 2 (the paper uses 256)")
    # Each block holds one CLS + (interval - 1) text tokens; one slot is kept for the final </s>.
    room = max_length - 1
    num_blocks = -(-room // interval)
    max_text = room - num_blocks
    text_ids = text_ids[:max(max_text, 0)]
    seq = []
    for start in range(0, max(len(text_ids), 1), interval - 1):
        seq.append(cls_id)
        seq.extend(text_ids[start:start + interval - 1])
    seq.append(eos_id)
    return seq


def mcls_dense(encoder, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor, cls_id: int,
               normalize: bool = True, unpad: bool = True) -> torch.Tensor:
    """Mean of the CLS hidden states of each sequence -> (B, H); `unpad`: encode real tokens only."""
    hidden_BLH = last_hidden_state(encoder, input_ids_BL, attention_mask_BL, unpad).hidden_BLH
    is_cls_BL = ((input_ids_BL == cls_id) & attention_mask_BL.bool()).to(hidden_BLH.dtype)
    mean_BH = (hidden_BLH * is_cls_BL.unsqueeze(-1)).sum(1) / is_cls_BL.sum(1, keepdim=True)
    return F.normalize(mean_BH, dim=-1) if normalize else mean_BH
