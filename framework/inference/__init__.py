"""Encoding and scoring with a trained (or exported) M3 model."""
from framework.inference.embedder import M3Embedder, colbert_score, lexical_match_score

__all__ = ["M3Embedder", "colbert_score", "lexical_match_score"]
