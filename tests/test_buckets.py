"""Bucket edges and per-rank batch sizes."""
import pytest

from framework.data.buckets import (DEFAULT_EDGES, PAPER_EDGES, PAPER_FINETUNE, PAPER_UNSUPERVISED, BucketConfig,
                                    bucket_of)


def test_default_edges_refine_the_papers():
    assert set(PAPER_EDGES) <= set(DEFAULT_EDGES) and DEFAULT_EDGES[-1] == 8192
    ratios = [b / a for a, b in zip(DEFAULT_EDGES, DEFAULT_EDGES[1:])]
    assert max(ratios) <= 1.5 and all(e % 8 == 0 for e in DEFAULT_EDGES if e not in PAPER_EDGES)


def test_bucket_of_edges():
    edges = (64, 128, 500)
    assert bucket_of(1, edges) == 0 and bucket_of(64, edges) == 0
    assert bucket_of(65, edges) == 1 and bucket_of(500, edges) == 2
    assert bucket_of(8192, DEFAULT_EDGES) == len(DEFAULT_EDGES) - 1
    with pytest.raises(ValueError, match="exceeds the last bucket edge 8192"):
        bucket_of(8193, DEFAULT_EDGES)


def test_paper_table_on_96_ranks():
    per_rank = BucketConfig(total_batch=PAPER_UNSUPERVISED).per_rank(96)
    assert per_rank[0] == per_rank[DEFAULT_EDGES.index(500)] == 67200 // 96  # finer buckets take their range's size
    assert per_rank[DEFAULT_EDGES.index(500) + 1] == 54720 // 96
    assert per_rank[len(DEFAULT_EDGES) - 1] == 9984 // 96 == 104
    with pytest.raises(ValueError, match="not divisible by the 7 ranks"):
        BucketConfig(total_batch=PAPER_FINETUNE).per_rank(7)


def test_token_budget():
    sizes = BucketConfig(tokens_per_rank=65536).per_rank(8)
    assert sizes[0] == 65536 // DEFAULT_EDGES[0] and sizes[len(DEFAULT_EDGES) - 1] == 8
    # Buckets above the budget get no size (the plan refuses them only if shards hold such samples).
    assert max(BucketConfig(tokens_per_rank=4000).per_rank(1)) == DEFAULT_EDGES.index(4000)
    with pytest.raises(ValueError, match="below every bucket edge"):
        BucketConfig(tokens_per_rank=4).per_rank(1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(edges=(10, 5), tokens_per_rank=100), "strictly increasing"),
    (dict(), "exactly one of"),
    (dict(total_batch={500: 8}, tokens_per_rank=10), "exactly one of"),
    (dict(total_batch={499: 8}), "not bucket edges"),
    (dict(edges=(100, 200), total_batch={100: 8}), "no total batch for bucket edge 200"),
])
def test_bad_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BucketConfig(**kwargs).per_rank(1)
