"""Configuration of the RetroMAE pre-training stage (Xiao et al. 2022; M3 paper appendix B.1)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetroMAEConfig:
    """Masking, decoder shape and loss weights of the RetroMAE objective."""

    encoder_mask_ratio: float = 0.3
    """Fraction of each document's ordinary tokens the encoder sees corrupted (RetroMAE: 0.15-0.3)."""
    decoder_mask_ratio: float = 0.5
    """Fraction of the other tokens each decoder position may not attend to (RetroMAE: 0.5-0.7)."""
    replace_with_mask: float = 0.8
    """Of the encoder's chosen tokens, the share replaced by <mask> (BERT's 80/10/10 recipe)."""
    replace_with_random: float = 0.1
    """Of the encoder's chosen tokens, the share replaced by a random ordinary token; the rest stay."""
    decoder_layers: int = 1
    """Transformer layers of the decoder (RetroMAE: one, so the embedding has to carry the content)."""
    decoder_heads: int | None = None
    """Attention heads of the decoder; None: the encoder's."""
    decoder_intermediate_size: int | None = None
    """Feed-forward width of the decoder; None: the encoder's."""
    tie_word_embeddings: bool = True
    """Both LM heads project onto the encoder's word embeddings (RetroMAE's choice; no V x H matrix each)."""
    encoder_mlm_weight: float = 1.0
    """Weight of the encoder's masked-LM loss in the total."""
    decoder_weight: float = 1.0
    """Weight of the decoder's reconstruction loss in the total."""
    max_length: int = 8192
    """Longest document in tokens (specials included); the encoder's position table must hold it."""
    seed: int = 0
    """Root of the masks: a step's masks are a function of (seed, step, rank) alone."""

    def __post_init__(self) -> None:
        for name in ("encoder_mask_ratio", "decoder_mask_ratio"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"RetroMAEConfig.{name}={getattr(self, name)}: use a fraction in (0, 1), "
                                 "e.g. 0.3 for the encoder and 0.5 for the decoder")
        if min(self.replace_with_mask, self.replace_with_random) < 0 or \
                self.replace_with_mask + self.replace_with_random > 1:
            raise ValueError(f"replace_with_mask={self.replace_with_mask} and replace_with_random="
                             f"{self.replace_with_random} must be >= 0 and sum to at most 1 (BERT: 0.8, 0.1)")
        if self.decoder_layers < 1:
            raise ValueError(f"RetroMAEConfig.decoder_layers={self.decoder_layers}: use >= 1 (RetroMAE: 1)")
        for name in ("decoder_heads", "decoder_intermediate_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"RetroMAEConfig.{name}={getattr(self, name)}: use a positive number or "
                                 "null for the encoder's")
        if min(self.encoder_mlm_weight, self.decoder_weight) < 0 or \
                self.encoder_mlm_weight + self.decoder_weight == 0:
            raise ValueError("encoder_mlm_weight and decoder_weight must be >= 0 and not both 0")
        if self.max_length < 3:
            raise ValueError(f"RetroMAEConfig.max_length={self.max_length}: use at least 3 tokens (<s> x </s>)")
