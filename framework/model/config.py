"""Configuration of the encoder and its three retrieval heads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from framework.model.attention import ATTENTION_KINDS

SparseInit = Literal["random", "lexical"]


@dataclass(frozen=True)
class ModelConfig:
    """Which encoder to start from and which heads produce outputs."""

    path: str = ""
    """HF encoder directory or BGE-M3 directory (config.json + weights + tokenizer [+ head .pt files])."""
    dense: bool = True
    """Produce the dense (normalised CLS) embedding."""
    sparse: bool = True
    """Produce lexical token weights relu(sparse_linear(h))."""
    colbert: bool = True
    """Produce multi-vector (ColBERT) embeddings colbert_linear(h[:, 1:])."""
    colbert_dim: int | None = None
    """Output size of colbert_linear when heads start fresh; None = hidden size (as BAAI/bge-m3)."""
    sparse_init: SparseInit = "random"
    """How sparse_linear starts when the start directory has no head files. random: nn.Linear's default
    (as FlagEmbedding); lexical: weight 0 and bias `sparse_init_weight`, so that every token of a text
    weighs the same and the sparse score starts as exact token overlap, a lexical matcher that training
    refines (M3Model.init_sparse_lexical). Ignored when the start carries sparse_linear.pt."""
    sparse_init_weight: float = 0.2
    """The token weight of sparse_init: lexical (a trained BAAI/bge-m3 gives most tokens 0.05-0.3)."""
    normalize: bool = True
    """L2-normalise dense and multi-vector outputs (the reference trains and infers normalised)."""
    gradient_checkpointing: bool = False
    """Recompute encoder activations in backward (non-reentrant: reentrant breaks ZeRO-2/3)."""
    unpad: bool = True
    """Run the encoder on real tokens only (framework/model/unpadded.py); false: HF's padded forward."""
    attention: str = "auto"
    """Attention kernel of the unpadded encoder: auto (flash varlen on CUDA if installed, else grouped),
    grouped, sdpa, nested or flash (framework/model/attention.py)."""

    def __post_init__(self) -> None:
        if not (self.dense or self.sparse or self.colbert):
            raise ValueError("ModelConfig: all heads are off; set at least one of dense/sparse/colbert to true")
        if self.colbert_dim is not None and self.colbert_dim <= 0:
            raise ValueError(f"ModelConfig.colbert_dim={self.colbert_dim}: use a positive size or null for hidden size")
        if self.sparse_init not in get_args(SparseInit):
            raise ValueError(f"ModelConfig.sparse_init={self.sparse_init!r}: use one of {', '.join(get_args(SparseInit))}")
        if not self.sparse_init_weight > 0:
            raise ValueError(f"ModelConfig.sparse_init_weight={self.sparse_init_weight}: use a positive token weight")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"ModelConfig.attention={self.attention!r}: use one of {', '.join(ATTENTION_KINDS)}")
