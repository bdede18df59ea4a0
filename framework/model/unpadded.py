"""Unpadded encoding: the HF encoder's own modules run on the real tokens of a batch only.

A batch pads every text to its longest (and the trainer's passage batch to the longest of Q x G
passages): on the DDTP sample about 45 % of the positions are padding. Here the embeddings, the Q/K/V
and output projections, the feed-forward blocks and every LayerNorm run on the packed (T, H) tensor of
real tokens (the MosaicBERT / ModernBERT / mGTE "unpadding"); only attention sees a layout, chosen in
framework/model/attention.py (length groups on CPU, FlashAttention-2 varlen on CUDA when installed).

Why this method (bench/encoder_throughput.py --methods, real DDTP batches of the demo's stages, training
step of the M3 objective, 2 threads, arms alternated): the packed forward removes the padding from
every token-wise matmul whatever the lengths are, which is most of the work at BERT/XLM-R widths; the
alternatives leave part of it (length-sorted sub-batches through the HF forward still pad within each
sub-batch and shrink the matmuls; one packed row with a block-diagonal mask turns attention into a
(T x T) problem). Figures: docs/unpadded-encoding.md.

The encoder stays the HF XLMRobertaModel / BertModel object: this forward reads its submodules
(`embeddings`, `encoder.layer[i].attention.self.query`, ...), so weights, names and exports are those of
the HF model, and ZeRO-3's per-module parameter hooks fire as in HF's forward. Other encoder types are
refused by `unpad_support` (M3Model then runs the padded HF forward, and says so once).

Exactness: for the same weights, every real token's hidden state equals the padded forward's up to
float summation order (fp32: ~1e-6, tests/test_unpad.py), and so do the gradients. Position ids are
those HF gives right-padded rows (XLM-R: padding_idx + 1 + j, BERT: j), token types 0. Dropout uses
the same modules and rates, but its masks are drawn for the packed tensors: a different, equally
distributed draw (an equal draw would need the padded tensors' random stream, i.e. the padded work).
Gradient checkpointing follows the HF switch of each layer (`layer.gradient_checkpointing`).

Shape legend (docs/shapes.md): B batch rows, L tokens, T real tokens of the batch, packed; H hidden size;
N attention heads; D head size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from framework.model.attention import plan_attention
from framework.model.packing import Packing
from framework.model.positions import position_offset

SUPPORTED_CLASSES = ("XLMRobertaModel", "BertModel")


def unpad_support(encoder: nn.Module) -> str | None:
    """None when `encode_packed` can run this encoder, else why not (a sentence for the log)."""
    name = type(encoder).__name__
    if name not in SUPPORTED_CLASSES:
        return f"encoder class {name} (unpadded encoding supports {', '.join(SUPPORTED_CLASSES)})"
    config = encoder.config
    if config.is_decoder or getattr(config, "add_cross_attention", False):
        return f"{name} configured as a decoder"
    kind = getattr(config, "position_embedding_type", "absolute")
    if kind not in (None, "absolute"):
        return f"position_embedding_type={kind!r} (only absolute positions are supported)"
    return None


@dataclass
class PackedStates:
    """Last hidden states of the real tokens, and what the encoder spent on them."""

    hidden_TH: torch.Tensor
    packing: Packing
    attention_positions: int
    """Query positions of attention's calls (rows x padded length, summed); T for a varlen kernel."""


def encode_packed(encoder: nn.Module, ids_BL: torch.Tensor, mask_BL: torch.Tensor,
                  attention: str = "auto") -> PackedStates:
    """The HF encoder's forward on the real tokens of a right-padded batch."""
    why_not = unpad_support(encoder)
    if why_not is not None:
        raise ValueError(f"unpadded encoding cannot run {why_not}; set model.unpad=false")
    packing = Packing.from_mask(mask_BL)
    ids_T = packing.pack(ids_BL)
    positions_T = packing.positions_T + position_offset(encoder.config)
    hidden_TH = encoder.embeddings(input_ids=ids_T[None], position_ids=positions_T[None])[0]
    plan = plan_attention(packing, attention)
    for layer in encoder.encoder.layer:
        if layer.gradient_checkpointing and layer.training and torch.is_grad_enabled():
            hidden_TH = layer._gradient_checkpointing_func(layer_forward, layer, hidden_TH, plan)
        else:
            hidden_TH = layer_forward(layer, hidden_TH, plan)
    return PackedStates(hidden_TH, packing, plan.positions)


def layer_forward(layer: nn.Module, hidden_TH: torch.Tensor, plan) -> torch.Tensor:
    """XLMRobertaLayer / BertLayer.forward on packed tokens (the same submodules, in the same order)."""
    attn = layer.attention.self
    num_tokens = hidden_TH.shape[0]

    def heads(linear: nn.Module) -> torch.Tensor:
        return linear(hidden_TH).view(num_tokens, attn.num_attention_heads, attn.attention_head_size)

    dropout_p = attn.dropout.p if attn.training else 0.0
    scale = getattr(attn, "scaling", attn.attention_head_size ** -0.5)
    context_TND = plan(heads(attn.query), heads(attn.key), heads(attn.value), dropout_p, scale)
    attended_TH = layer.attention.output(context_TND.reshape(num_tokens, -1), hidden_TH)
    return layer.output(layer.intermediate(attended_TH), attended_TH)


class HiddenStates(NamedTuple):
    """The encoder's last hidden states in HF's padded layout, and the positions it computed on."""

    hidden_BLH: torch.Tensor
    """Zero at padding when unpadded."""
    computed_positions: int | None
    """Positions of the token-wise layers (the real tokens); None: the padded forward ran."""
    attention_positions: int | None
    """Query positions of attention's calls (PackedStates.attention_positions); None: the padded forward."""


def last_hidden_state(encoder: nn.Module, ids_BL: torch.Tensor, mask_BL: torch.Tensor, unpad: bool = True,
                      attention: str = "auto") -> HiddenStates:
    """The encoder's hidden states, unpadded when `unpad` and supported. For callers that want HF's padded
    layout (RetroMAE, MCLS)."""
    if not unpad or ids_BL.shape[0] == 0 or unpad_support(encoder) is not None:
        hidden_BLH = encoder(input_ids=ids_BL, attention_mask=mask_BL, return_dict=True).last_hidden_state
        return HiddenStates(hidden_BLH, None, None)
    states = encode_packed(encoder, ids_BL, mask_BL, attention)
    return HiddenStates(states.packing.pad(states.hidden_TH), states.packing.num_tokens, states.attention_positions)
