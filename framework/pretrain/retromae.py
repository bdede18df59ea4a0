"""The RetroMAE objective (Xiao et al. 2022), the M3 paper's pre-training stage (appendix B.1).

The encoder reads a moderately masked document and its <s> hidden state becomes the sentence embedding;
a masked-LM head on the encoder side predicts the masked tokens (encoder_mlm_loss). A one-layer decoder
then rebuilds every ordinary token of the original document from that embedding with enhanced decoding
(decoder.py; decoder_loss). Only the encoder goes on to the next stage: `encoder_state_dict` and
`save_encoder` leave the heads and the decoder behind.

forward(input_ids_BL, attention_mask_BL, step) -> {"encoder_mlm_loss", "decoder_loss", "loss"}, like
framework/train/objective.py's M3Objective, so the trainer runs both stage types the same way.

Shape legend (docs/shapes.md): B batch rows (documents), L tokens, H hidden size, V vocabulary,
T predicted tokens; scoped here: K key positions (= L).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import AutoModel, AutoTokenizer

from framework.model.unpadded import last_hidden_state
from framework.pretrain.config import RetroMAEConfig
from framework.pretrain.decoder import EnhancedDecoder, LMHead, decoder_streams, init_weights
from framework.pretrain.masking import (SpecialTokens, choose_encoder_tokens, corrupt, decoder_visibility,
                                        mask_generator, ordinary_tokens, special_tokens)
from framework.pretrain.positions import max_tokens, position_offset

ENCODER_PREFIX = "encoder."


class RetroMAEObjective(nn.Module):
    """Encoder + encoder MLM head + shallow decoder with its own LM head.

    `tokens` is an HF tokenizer or a masking.SpecialTokens. `rank` (the data-parallel rank) enters the
    mask seed so that ranks do not draw identical mask patterns.
    """

    def __init__(self, encoder: nn.Module, tokens, cfg: RetroMAEConfig = RetroMAEConfig(), rank: int = 0,
                 unpad: bool = True):
        super().__init__()
        self.unpad = unpad  # the encoder pass on real tokens only (framework/model/unpadded.py)
        self.last_computed_positions: int | None = None
        """Positions the encoder's token-wise layers ran on in the last forward (None: every padded one)."""
        self.last_attention_positions: int | None = None
        """Query positions of the encoder's attention calls in the last forward (None: every padded one)."""
        config = encoder.config
        capacity = max_tokens(config)  # also refuses encoders without a known learned position table
        if cfg.max_length > capacity:
            raise ValueError(f"retromae.max_length={cfg.max_length} but the encoder's position table holds "
                             f"{capacity} tokens; extend it first (python tools/extend_positions.py SRC OUT "
                             f"--max-positions {cfg.max_length}) or lower max_length")
        self.cfg, self.rank = cfg, rank
        self.tokens = tokens if isinstance(tokens, SpecialTokens) else special_tokens(tokens)
        self.encoder = encoder
        self.offset, self.vocab_size = position_offset(config), config.vocab_size
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.encoder_mlm_head = LMHead(hidden, self.vocab_size, eps, cfg.tie_word_embeddings)
        self.decoder = EnhancedDecoder(cfg.decoder_layers, hidden, cfg.decoder_heads or config.num_attention_heads,
                                       cfg.decoder_intermediate_size or config.intermediate_size,
                                       config.hidden_dropout_prob, eps)
        self.decoder_lm_head = LMHead(hidden, self.vocab_size, eps, cfg.tie_word_embeddings)
        for module in (self.encoder_mlm_head, self.decoder, self.decoder_lm_head):
            init_weights(module, config.initializer_range)
        self.register_buffer("special_ids", torch.tensor(self.tokens.special_ids), persistent=False)

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, cfg: RetroMAEConfig = RetroMAEConfig(),
                        rank: int = 0, dtype: torch.dtype = torch.float32,
                        unpad: bool = True) -> tuple["RetroMAEObjective", object]:
        """(objective, tokenizer) from an HF or bge-m3 directory; a pretrained `lm_head.*` (XLM-R's
        masked-LM head) starts the encoder's MLM head, otherwise it starts fresh."""
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir}: no config.json; point to an HF encoder directory")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        encoder = AutoModel.from_pretrained(model_dir, dtype=dtype, add_pooling_layer=False)
        objective = cls(encoder, tokenizer, cfg, rank, unpad).to(dtype)
        head = pretrained_lm_head(model_dir)
        if head is not None:
            own = objective.encoder_mlm_head.state_dict()
            objective.encoder_mlm_head.load_state_dict({k: v.to(dtype) for k, v in head.items() if k in own},
                                                       strict=False)
        return objective, tokenizer

    def forward(self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor,
                step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        generator = mask_generator(cfg.seed, step, self.rank, input_ids_BL.device)
        ordinary_BL = ordinary_tokens(input_ids_BL, attention_mask_BL, self.special_ids)
        chosen_BL = choose_encoder_tokens(ordinary_BL, cfg.encoder_mask_ratio, generator)
        corrupted_BL, _ = corrupt(input_ids_BL, chosen_BL, self.tokens, self.vocab_size, cfg.replace_with_mask,
                                  cfg.replace_with_random, generator)
        encoded = last_hidden_state(self.encoder, corrupted_BL, attention_mask_BL, self.unpad)
        hidden_BLH = encoded.hidden_BLH
        self.last_computed_positions, self.last_attention_positions = encoded.computed_positions, \
            encoded.attention_positions
        words_VH = self.encoder.embeddings.word_embeddings.weight
        # Logits only at predicted positions: a (B*L, V) tensor for V = 250k would dwarf the model.
        encoder_loss = _lm_loss(self.encoder_mlm_head(hidden_BLH[chosen_BL], words_VH), input_ids_BL[chosen_BL])

        sentence_BH = hidden_BLH[:, 0]
        visible_BLK = decoder_visibility(attention_mask_BL, cfg.decoder_mask_ratio, generator)
        query_BLH, kv_BLH = decoder_streams(self.encoder.embeddings, self.offset, sentence_BH, input_ids_BL)
        decoded_BLH = self.decoder(query_BLH, kv_BLH, visible_BLK)
        decoder_loss = _lm_loss(self.decoder_lm_head(decoded_BLH[ordinary_BL], words_VH), input_ids_BL[ordinary_BL])
        total = cfg.encoder_mlm_weight * encoder_loss + cfg.decoder_weight * decoder_loss
        return {"encoder_mlm_loss": encoder_loss, "decoder_loss": decoder_loss, "loss": total}

    def external_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        """(module, parameter) pairs where a module reads another module's weight directly: tied LM heads
        read the encoder's word embeddings. ZeRO-3 gathers a parameter only around its owner's forward, so
        at stage 3 the trainer registers each pair (deepspeed.zero.register_external_parameter); without
        it the heads see an empty partition ("mat2 must be a matrix")."""
        if not self.cfg.tie_word_embeddings:
            return []
        words = self.encoder.embeddings.word_embeddings.weight
        return [(self.encoder_mlm_head, words), (self.decoder_lm_head, words)]

    def encoder_state_dict(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The encoder's own state dict (HF key names), without heads or decoder.

        `state` (this module's full keys) replaces the module's parameters: under ZeRO-3 each rank holds
        only a shard, so the caller passes the gathered state.
        """
        state = self.state_dict() if state is None else state
        return {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}

    def save_encoder(self, out_dir: str | os.PathLike, tokenizer,
                     state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the adapted encoder as a plain HF directory: the next stage loads it with load_m3
        (fresh dense/sparse/colbert heads), as it would load XLM-R itself."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(out_dir, state_dict=self.encoder_state_dict(state), safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        return out_dir


def _lm_loss(logits_TV: torch.Tensor, labels_T: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in float32; 0 (still attached to the graph) when nothing is predicted."""
    total = F.cross_entropy(logits_TV.float(), labels_T, reduction="sum")
    return total / max(labels_T.numel(), 1)


def pretrained_lm_head(model_dir: Path) -> dict[str, torch.Tensor] | None:
    """The `lm_head.*` tensors of a checkpoint (XLM-R's masked-LM head), prefix removed; None without."""
    head: dict[str, torch.Tensor] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            head.update({k[len("lm_head."):]: handle.get_tensor(k) for k in handle.keys() if k.startswith("lm_head.")})
    for path in sorted(model_dir.glob("pytorch_model*.bin")) if not head else ():
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        head.update({k[len("lm_head."):]: v for k, v in state.items() if k.startswith("lm_head.")})
    return head or None
