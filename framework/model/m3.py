"""The M3 model: one HF encoder and three retrieval heads (dense, sparse, multi-vector).

Heads follow BAAI/bge-m3 exactly (see shared/reference/bge-m3-reference.md):
  dense   = normalize(h[:, 0])
  sparse  = relu(sparse_linear(h)), zero for the ids of cls/eos/pad/unk (and sep for BERT vocabularies)
  colbert = normalize(colbert_linear(h[:, 1:]) * mask[:, 1:])
Both linears always exist, even when a head is switched off, so that every export carries the two head
files FlagEmbedding needs (a missing file makes it use random heads silently).

With `cfg.unpad` (the default) the encoder and the heads run on the real tokens only
(framework/model/unpadded.py) and the outputs are scattered back to the padded (B, L) layout the loss
and the callers use, zero at padding as before; `computed_positions` / `attention_positions` of the
output say what was computed. An encoder the unpadded forward does not support runs padded (logged once).

Shape legend (docs/shapes.md): B batch rows, L tokens, H hidden size, D dense size (= H), C colbert size,
T real tokens of the batch, packed.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from framework.model.config import ModelConfig
from framework.model.output import M3Output
from framework.model.packing import Packing
from framework.model.positions import max_tokens
from framework.model.unpadded import encode_packed, unpad_support

log = logging.getLogger(__name__)


def special_token_ids(tokenizer) -> list[int]:
    """Ids that never carry lexical weight: cls, eos, pad, unk (and sep, which is eos in XLM-R)."""
    names = ("cls_token_id", "eos_token_id", "sep_token_id", "pad_token_id", "unk_token_id")
    ids = {getattr(tokenizer, name, None) for name in names}
    ids.discard(None)
    if not ids:
        raise ValueError("tokenizer defines none of cls/eos/sep/pad/unk; use an XLM-R or BERT-style tokenizer")
    return sorted(ids)


class M3Model(nn.Module):
    """Encoder + heads. forward(input_ids, attention_mask) -> M3Output."""

    def __init__(self, encoder: nn.Module, unused_token_ids: list[int], cfg: ModelConfig,
                 colbert_dim: int | None = None):
        super().__init__()
        hidden = encoder.config.hidden_size
        self.cfg = cfg
        self.encoder = encoder
        self.colbert_linear = nn.Linear(hidden, colbert_dim or cfg.colbert_dim or hidden)
        self.sparse_linear = nn.Linear(hidden, 1)
        # A buffer so that it follows .to(device); not persistent because exports carry the tokenizer.
        self.register_buffer("unused_ids", torch.tensor(unused_token_ids, dtype=torch.long), persistent=False)
        if cfg.gradient_checkpointing:
            self.enable_gradient_checkpointing()
        refusal = unpad_support(encoder) if cfg.unpad else None
        if refusal is not None:
            log.warning("unpadded encoding cannot run %s: this model encodes padded batches", refusal)
        self.unpadded = cfg.unpad and refusal is None

    def init_sparse_lexical(self, weight: float) -> None:
        """sparse_linear -> weight 0, bias `weight`: every non-special token weighs `weight`, so the sparse
        score of a pair is weight**2 x the number of distinct tokens they share (exact lexical match).
        The weight's gradient is not zero (it is sum_t dL/dw_t h_t), so training learns from there which
        tokens matter; a random start instead scores noise until it has learned (issue 12: 55 nDCG@10
        after 20 steps on DDTP against BM25's 81)."""
        with torch.no_grad():
            self.sparse_linear.weight.zero_()
            self.sparse_linear.bias.fill_(weight)

    @property
    def max_positions(self) -> int:
        """Longest input (in tokens, specials included) the position table supports."""
        return max_tokens(self.encoder.config)  # XLM-R's 514 rows hold 512 tokens; BERT's 512 hold 512

    def enable_gradient_checkpointing(self) -> None:
        # Non-reentrant: the reentrant variant fails under ZeRO-2/3 when a step runs two forwards
        # (queries, then passages) before one backward.
        kwargs = {"use_reentrant": False}
        # transformers 5 renamed the method (and its argument); older releases have only the old name.
        if hasattr(self.encoder, "activation_checkpointing_enable"):
            self.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> M3Output:
        if self.unpadded and input_ids.shape[0] > 0:
            return self.forward_unpadded(input_ids, attention_mask)
        return self.forward_padded(input_ids, attention_mask)

    def forward_padded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> M3Output:
        """HF's own forward over every padded position."""
        hidden_BLH = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  return_dict=True).last_hidden_state
        out = M3Output(token_ids_BL=input_ids, attention_mask_BL=attention_mask)
        if self.cfg.dense:
            out.dense_BD = self.dense_head(hidden_BLH)
        if self.cfg.sparse:
            out.sparse_BL = self.sparse_head(hidden_BLH, input_ids, attention_mask)
        if self.cfg.colbert:
            out.colbert_BLC, out.colbert_mask_BL = self.colbert_head(hidden_BLH, attention_mask)
        return out

    def forward_unpadded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> M3Output:
        """Encoder and heads on the real tokens; outputs padded back (right-padded input only)."""
        states = encode_packed(self.encoder, input_ids, attention_mask, self.cfg.attention)
        hidden_TH, packing = states.hidden_TH, states.packing
        out = M3Output(token_ids_BL=input_ids, attention_mask_BL=attention_mask,
                       computed_positions=packing.num_tokens, attention_positions=states.attention_positions)
        if self.cfg.dense:
            out.dense_BD = self.dense_head(hidden_TH.index_select(0, packing.first_B)[:, None])
        if self.cfg.sparse:
            out.sparse_BL = packing.pad(self.packed_sparse(hidden_TH, packing.pack(input_ids)))
        if self.cfg.colbert:
            out.colbert_BLC, out.colbert_mask_BL = self.packed_colbert(hidden_TH, packing), attention_mask[:, 1:]
        return out

    def packed_sparse(self, hidden_TH: torch.Tensor, ids_T: torch.Tensor) -> torch.Tensor:
        weights_T = torch.relu(self.sparse_linear(hidden_TH)).squeeze(-1)
        return weights_T * (~torch.isin(ids_T, self.unused_ids)).to(weights_T.dtype)

    def packed_colbert(self, hidden_TH: torch.Tensor, packing: Packing) -> torch.Tensor:
        # Every token goes through the linear, CLS included, and the CLS column is cut off after padding:
        # B extra rows of one matmul cost less than a data-dependent selection (a device sync).
        colbert_TC = self.colbert_linear(hidden_TH)
        if self.cfg.normalize:
            colbert_TC = F.normalize(colbert_TC, dim=-1)
        return packing.pad(colbert_TC)[:, 1:]

    def dense_head(self, hidden_BLH: torch.Tensor) -> torch.Tensor:
        cls_BH = hidden_BLH[:, 0]
        return F.normalize(cls_BH, dim=-1) if self.cfg.normalize else cls_BH

    def sparse_head(self, hidden_BLH, input_ids_BL, attention_mask_BL) -> torch.Tensor:
        weights_BL = torch.relu(self.sparse_linear(hidden_BLH)).squeeze(-1)
        # Multiplying by a keep-mask (not in-place zeroing) keeps autograd happy and zeroes padding too.
        keep_BL = attention_mask_BL.bool() & ~torch.isin(input_ids_BL, self.unused_ids)
        return weights_BL * keep_BL.to(weights_BL.dtype)

    def colbert_head(self, hidden_BLH, attention_mask_BL) -> tuple[torch.Tensor, torch.Tensor]:
        mask_BL = attention_mask_BL[:, 1:]
        colbert_BLC = self.colbert_linear(hidden_BLH[:, 1:]) * mask_BL.unsqueeze(-1).to(hidden_BLH.dtype)
        if self.cfg.normalize:
            colbert_BLC = F.normalize(colbert_BLC, dim=-1)
        return colbert_BLC, mask_BL
