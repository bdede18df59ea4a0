"""Retrieval primitives shared by hard-negative mining and evaluation: faiss dense search and BM25."""
from framework.retrieval.bm25 import BM25Config, BM25Index, tokenize
from framework.retrieval.dense import MISSING_ID, DenseIndex, DenseIndexConfig, gpu_count, top_k

__all__ = ["MISSING_ID", "BM25Config", "BM25Index", "DenseIndex", "DenseIndexConfig", "gpu_count", "tokenize",
           "top_k"]
