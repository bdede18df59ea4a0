"""RetroMAE's shallow decoder: enhanced-decoding layers and the LM heads that read them out.

Enhanced decoding (Xiao et al. 2022, section 3.3) runs two streams through the same layer:
  query     h1_i = LN(e + p_i + t)          the sentence embedding e at every position i
  key/value h2_0 = e, h2_j = LN(x_j + p_j + t) for j >= 1 (the original, unmasked tokens)
and position i attends to key 0 and a random subset of the other positions, never to itself
(masking.decoder_visibility), so token i must be rebuilt from e and a context that lacks it.
The embedding tables (word x, position p, token type t, LayerNorm) are the encoder's own, as in RetroMAE;
the decoder owns only its layers. With more than one layer, each layer's output is the next layer's
query stream while keys and values stay the token stream.

Shape legend (docs/shapes.md): B batch rows (documents), L positions, H hidden size, V vocabulary,
T predicted tokens; scoped here: K key positions (= L), N heads, D head size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def decoder_streams(embeddings: nn.Module, offset: int, sentence_BH: torch.Tensor,
                    input_ids_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(query stream, key/value stream), both (B, L, H), built with the encoder's embedding tables."""
    length = input_ids_BL.shape[1]
    # Clamped: a batch padded past the table (width rounded up to 8) only clamps padding positions.
    positions_L = torch.arange(offset, offset + length, device=input_ids_BL.device)
    positions_L = positions_L.clamp(max=embeddings.position_embeddings.num_embeddings - 1)
    added_LH = embeddings.position_embeddings(positions_L)
    token_type = getattr(embeddings, "token_type_embeddings", None)
    if token_type is not None:  # called, not indexed: ZeRO-3 gathers a module's weights on call only
        added_LH = added_LH + token_type(torch.zeros_like(positions_L[:1]))
    query_BLH = embeddings.dropout(embeddings.LayerNorm(sentence_BH[:, None, :] + added_LH))
    tokens_BLH = embeddings.dropout(embeddings.LayerNorm(embeddings.word_embeddings(input_ids_BL) + added_LH))
    return query_BLH, torch.cat([sentence_BH[:, None, :], tokens_BLH[:, 1:]], dim=1)


class EnhancedDecoderLayer(nn.Module):
    """A post-LN transformer layer whose queries and keys/values come from different streams."""

    def __init__(self, hidden: int, num_heads: int, intermediate: int, dropout: float, eps: float):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"decoder_heads={num_heads} does not divide the hidden size {hidden}")
        self.num_heads, self.dropout = num_heads, dropout
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(hidden, intermediate), nn.GELU(), nn.Linear(intermediate, hidden))
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)

    def _heads(self, x_BLH: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x_BLH.shape
        return x_BLH.view(batch, length, self.num_heads, hidden // self.num_heads).transpose(1, 2)

    def forward(self, query_BLH: torch.Tensor, kv_BKH: torch.Tensor, visible_BLK: torch.Tensor) -> torch.Tensor:
        q_BNLD, k_BNKD, v_BNKD = self._heads(self.query(query_BLH)), self._heads(self.key(kv_BKH)), \
            self._heads(self.value(kv_BKH))
        dropout = self.dropout if self.training else 0.0
        context_BNLD = F.scaled_dot_product_attention(q_BNLD, k_BNKD, v_BNKD, attn_mask=visible_BLK[:, None],
                                                      dropout_p=dropout)
        context_BLH = context_BNLD.transpose(1, 2).flatten(2)
        x_BLH = self.attention_norm(query_BLH + F.dropout(self.out(context_BLH), dropout, self.training))
        return self.ffn_norm(x_BLH + F.dropout(self.ffn(x_BLH), dropout, self.training))


class EnhancedDecoder(nn.Module):
    """`num_layers` enhanced-decoding layers; forward(query, kv, visible) -> (B, L, H)."""

    def __init__(self, num_layers: int, hidden: int, num_heads: int, intermediate: int, dropout: float,
                 eps: float):
        super().__init__()
        self.layers = nn.ModuleList(EnhancedDecoderLayer(hidden, num_heads, intermediate, dropout, eps)
                                    for _ in range(num_layers))

    def forward(self, query_BLH: torch.Tensor, kv_BKH: torch.Tensor, visible_BLK: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            query_BLH = layer(query_BLH, kv_BKH, visible_BLK)
        return query_BLH


class LMHead(nn.Module):
    """RoBERTa's LM head: dense -> GELU -> LayerNorm -> vocabulary logits (+ bias).

    With `tied`, the output matrix is the word-embedding table passed to forward (not a parameter here,
    so it appears once in state dicts, under the encoder); names match HF's `lm_head.*` so a pretrained
    XLM-R head loads as is.
    """

    def __init__(self, hidden: int, vocab_size: int, eps: float, tied: bool):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.layer_norm = nn.LayerNorm(hidden, eps=eps)
        self.decoder = None if tied else nn.Linear(hidden, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden_TH: torch.Tensor, word_embeddings_VH: torch.Tensor) -> torch.Tensor:
        x_TH = self.layer_norm(F.gelu(self.dense(hidden_TH)))
        weight_VH = word_embeddings_VH if self.decoder is None else self.decoder.weight
        return F.linear(x_TH, weight_VH, self.bias)


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation for the new modules: N(0, std) matrices, zero biases, unit LayerNorms."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
