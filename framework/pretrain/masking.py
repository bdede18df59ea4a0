"""RetroMAE's two corruptions: the encoder's masked copy and the decoder's per-position attention mask.

Both are drawn from one generator seeded by (seed, step, rank) on the input's device, so a resumed run
draws the same masks at the same step. Special tokens (<s>, </s>, <pad>, <unk>, <mask>) and padding are
never chosen for masking and are never prediction targets.

Shape legend (docs/shapes.md): B batch rows (documents), L tokens (query positions); scoped here:
K key positions (= L).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from framework.data.plan import derive_seed

IGNORE_INDEX = -100
"""Label of positions that are not predicted (torch's cross-entropy default)."""


@dataclass(frozen=True)
class SpecialTokens:
    """The token ids the masking has to know."""

    mask_id: int
    """Id of <mask> (what most of the encoder's chosen tokens become)."""
    pad_id: int
    """Id of <pad>."""
    special_ids: tuple[int, ...]
    """Ids never masked and never predicted (specials of the tokenizer, padding included)."""


def special_tokens(tokenizer) -> SpecialTokens:
    """The SpecialTokens of an HF tokenizer; raises ValueError when it has no <mask> or <pad>."""
    mask_id, pad_id = getattr(tokenizer, "mask_token_id", None), getattr(tokenizer, "pad_token_id", None)
    if mask_id is None or pad_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} lacks a mask or pad token; RetroMAE needs an "
                         "MLM tokenizer (XLM-R's or BERT's)")
    specials = set(getattr(tokenizer, "all_special_ids", ())) | {mask_id, pad_id}
    return SpecialTokens(int(mask_id), int(pad_id), tuple(sorted(int(i) for i in specials)))


def mask_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one step's masks on one rank: ranks draw different masks from different data."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, "retromae", step, rank))
    return generator


def ordinary_tokens(input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor,
                    special_ids: torch.Tensor) -> torch.Tensor:
    """True at real, non-special tokens: the ones that may be masked and are predicted."""
    return attention_mask_BL.bool() & ~torch.isin(input_ids_BL, special_ids)


def choose_encoder_tokens(ordinary_BL: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Exactly round(ratio * n) of each document's n ordinary tokens (at least one when n > 0).

    A fixed count rather than independent coin flips keeps short documents from drawing no target at
    all, which would leave their encoder loss empty.
    """
    scores_BL = torch.rand(ordinary_BL.shape, generator=generator, device=ordinary_BL.device)
    scores_BL = scores_BL.masked_fill(~ordinary_BL, 2.0)  # non-candidates sort last
    rank_BL = scores_BL.argsort(dim=1).argsort(dim=1)
    count_B = ordinary_BL.sum(dim=1)
    wanted_B = torch.minimum((count_B.float() * ratio).round().long().clamp(min=1), count_B)
    return rank_BL < wanted_B[:, None]


def corrupt(input_ids_BL: torch.Tensor, chosen_BL: torch.Tensor, tokens: SpecialTokens, vocab_size: int,
            replace_with_mask: float, replace_with_random: float,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder input ids, labels): chosen tokens become <mask>, a random token or stay (BERT's recipe);
    labels hold the original id at chosen positions and IGNORE_INDEX elsewhere."""
    draw_BL = torch.rand(input_ids_BL.shape, generator=generator, device=input_ids_BL.device)
    to_mask_BL = chosen_BL & (draw_BL < replace_with_mask)
    to_random_BL = chosen_BL & (draw_BL >= replace_with_mask) & (draw_BL < replace_with_mask + replace_with_random)
    random_BL = torch.randint(vocab_size, input_ids_BL.shape, generator=generator, device=input_ids_BL.device)
    # A random draw that hits a special id keeps the original token: specials must not appear mid-text.
    special_ids = torch.tensor(tokens.special_ids, device=input_ids_BL.device)
    to_random_BL &= ~torch.isin(random_BL, special_ids)
    corrupted_BL = input_ids_BL.masked_fill(to_mask_BL, tokens.mask_id)
    corrupted_BL = torch.where(to_random_BL, random_BL, corrupted_BL)
    return corrupted_BL, input_ids_BL.masked_fill(~chosen_BL, IGNORE_INDEX)


def decoder_visibility(attention_mask_BL: torch.Tensor, mask_ratio: float,
                       generator: torch.Generator) -> torch.Tensor:
    """Enhanced decoding's attention mask (B, L, K), True where query position i may read key j.

    Each position reads a random subset of the document's other positions (each kept with probability
    1 - mask_ratio, drawn anew per position), always key 0 (the sentence embedding) and never itself,
    so every token has to be reconstructed from the embedding plus context that lacks the token.
    Row 0 (<s>, not a target) reads key 0, and padding is never read. Memory is one byte per (i, j)
    pair: B x L^2 bytes, 64 MiB per 8192-token document, below the attention scores themselves.
    """
    num_docs, length = attention_mask_BL.shape
    device = attention_mask_BL.device
    visible_BLK = torch.empty(num_docs, length, length, dtype=torch.bool, device=device)
    visible_BLK.bernoulli_(1.0 - mask_ratio, generator=generator)
    visible_BLK &= attention_mask_BL.bool()[:, None, :]
    visible_BLK &= ~torch.eye(length, dtype=torch.bool, device=device)
    visible_BLK[:, :, 0] = True
    return visible_BLK
