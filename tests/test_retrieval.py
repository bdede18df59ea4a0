"""Retrieval primitives against brute force: faiss dense indexes vs numpy top-k, BM25 vs the Lucene formula."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

import framework.retrieval.bm25 as bm25_module
from framework.retrieval import (MISSING_ID, BM25Config, BM25Index, DenseIndex, DenseIndexConfig, gpu_count,
                                 tokenize, top_k)


def unit_vectors(num: int, dim: int, seed: int) -> np.ndarray:
    vectors_ND = np.random.default_rng(seed).standard_normal((num, dim)).astype(np.float32)
    return vectors_ND / np.linalg.norm(vectors_ND, axis=1, keepdims=True)


def brute_force(corpus_ND: np.ndarray, queries_QD: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores_QN = queries_QD.astype(np.float64) @ corpus_ND.astype(np.float64).T
    ids_QK = np.argsort(-scores_QN, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores_QN, ids_QK, axis=1), ids_QK


@pytest.fixture(scope="module")
def corpus_ND() -> np.ndarray:
    return unit_vectors(600, 24, seed=0)


@pytest.fixture(scope="module")
def queries_QD() -> np.ndarray:
    return unit_vectors(50, 24, seed=1)


def test_flat_equals_brute_force(corpus_ND: np.ndarray, queries_QD: np.ndarray) -> None:
    # A search batch of 7 splits the 50 queries unevenly, so the batching seams are covered.
    index = DenseIndex.build(corpus_ND, DenseIndexConfig(search_batch_size=7, add_batch_size=100))
    scores_QK, ids_QK = index.search(queries_QD, 10)
    expected_scores_QK, expected_ids_QK = brute_force(corpus_ND, queries_QD, 10)
    assert index.ntotal == 600 and ids_QK.dtype == np.int64 and scores_QK.dtype == np.float32
    np.testing.assert_array_equal(ids_QK, expected_ids_QK)
    np.testing.assert_allclose(scores_QK, expected_scores_QK, atol=1e-5)


def test_ivf_probing_every_cell_equals_flat(corpus_ND: np.ndarray, queries_QD: np.ndarray) -> None:
    flat_scores_QK, flat_ids_QK = DenseIndex.build(corpus_ND).search(queries_QD, 10)
    ivf = DenseIndex.build(corpus_ND, DenseIndexConfig(kind="ivf", nlist=16, nprobe=16))
    scores_QK, ids_QK = ivf.search(queries_QD, 10)
    np.testing.assert_array_equal(ids_QK, flat_ids_QK)
    np.testing.assert_allclose(scores_QK, flat_scores_QK, atol=1e-5)


def test_ivf_one_probe_is_approximate_but_seeded(corpus_ND: np.ndarray, queries_QD: np.ndarray) -> None:
    config = DenseIndexConfig(kind="ivf", nlist=16, nprobe=1)
    _, ids_QK = DenseIndex.build(corpus_ND, config).search(queries_QD, 10)
    _, again_QK = DenseIndex.build(corpus_ND, config).search(queries_QD, 10)
    _, exact_QK = brute_force(corpus_ND, queries_QD, 10)
    np.testing.assert_array_equal(ids_QK, again_QK)
    # One cell of 16 misses neighbours in 24 random dimensions: the nprobe knob really changes the search.
    assert not np.array_equal(ids_QK, exact_QK)


def test_hnsw_recall(corpus_ND: np.ndarray, queries_QD: np.ndarray) -> None:
    index = DenseIndex.build(corpus_ND, DenseIndexConfig(kind="hnsw", hnsw_m=16, ef_search=128))
    _, ids_QK = index.search(queries_QD, 10)
    _, exact_QK = brute_force(corpus_ND, queries_QD, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids_QK, exact_QK)])
    assert recall >= 0.95


def test_k_is_capped_at_index_size(corpus_ND: np.ndarray) -> None:
    scores_QK, ids_QK = DenseIndex.build(corpus_ND[:5]).search(corpus_ND[:2], 50)
    assert ids_QK.shape == (2, 5) and sorted(ids_QK[0]) == [0, 1, 2, 3, 4]
    assert ids_QK[0, 0] == 0 and ids_QK[1, 0] == 1 and scores_QK[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_device_choice_is_logged(corpus_ND: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="framework.retrieval.dense"):
        index = DenseIndex.build(corpus_ND, DenseIndexConfig(device="cpu"))
    assert not index.on_gpu and "on CPU" in caplog.text


@pytest.mark.skipif(gpu_count() > 0, reason="checks the message on machines without a faiss GPU")
def test_gpu_without_gpu_names_the_fix(corpus_ND: np.ndarray) -> None:
    with pytest.raises(ValueError, match="faiss-gpu"):
        DenseIndex.build(corpus_ND, DenseIndexConfig(device="gpu"))


@pytest.mark.parametrize("make, match", [
    (lambda c: DenseIndex.build(c[0]), "2-D"),
    (lambda c: DenseIndex.build(c).search(c[:, :8], 3), "dimension 8"),
    (lambda c: DenseIndex.build(np.where(c > 0.5, np.nan, c)), "NaN"),
    (lambda c: DenseIndex.build(c[:10], DenseIndexConfig(kind="ivf", nlist=16, nprobe=4)), "lower nlist"),
    (lambda c: DenseIndexConfig(kind="ivf", nlist=8, nprobe=9), "lower nprobe"),
    (lambda c: DenseIndexConfig(kind="pq"), "flat"),
    (lambda c: DenseIndex(24).search(c, 3), "empty"),
])
def test_bad_input_is_a_value_error(corpus_ND: np.ndarray, make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(corpus_ND)


def test_top_k_breaks_ties_towards_the_lower_id() -> None:
    scores_QN = np.array([[0.5, 0.9, 0.5, 0.9, 0.1, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    scores_QK, ids_QK = top_k(scores_QN, 4)
    np.testing.assert_array_equal(ids_QK, [[1, 3, 0, 2], [0, 1, 2, 3]])
    np.testing.assert_array_equal(scores_QK[0], np.float32([0.9, 0.9, 0.5, 0.5]))
    assert top_k(scores_QN, 10)[1].shape == (2, 6)


CORPUS = [
    "the cat sat on the mat near the door",
    "the dog sat on the mat near the door",
    "quantum chromodynamics describes quarks and gluons",
    "the cat and the dog sat near the door",
    "Kazakhstan Kyrgyzstan Uzbekistan Turkmenistan",
]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def test_bm25_query_sharing_rare_words_ranks_its_document_first(tokenizer) -> None:
    index = BM25Index.build(CORPUS, tokenizer)
    _, ids_QK = index.search(["quarks and gluons", "Uzbekistan", "cat mat"], 5)
    assert ids_QK[0, 0] == 2 and ids_QK[1, 0] == 4
    # "cat" and "mat" together occur only in document 0; 3 has "cat" alone, 1 has "mat" alone.
    assert ids_QK[2, 0] == 0


def test_bm25_scores_follow_the_lucene_formula(tokenizer) -> None:
    config = BM25Config(k1=1.2, b=0.75)
    docs = tokenize(CORPUS, tokenizer, config.max_doc_length)
    queries = tokenize(["the cat near quarks", "door door dog"], tokenizer, config.max_query_length)
    index = BM25Index(docs, config)
    avg_len = np.mean([len(d) for d in docs])
    for query in queries:
        expected = []
        for doc in docs:
            score = 0.0
            for token in query:  # repeated query tokens count again, as Pyserini's query weights
                df = sum(token in d for d in docs)
                tf = doc.count(token)
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                score += idf * tf / (tf + config.k1 * (1 - config.b + config.b * len(doc) / avg_len))
            expected.append(score)
        np.testing.assert_allclose(index.scores(query), expected, rtol=1e-5)
        scores_QK, ids_QK = index.search_tokens([query], 5)
        ranked = [int(i) for i in np.argsort(-np.asarray(expected), kind="stable") if expected[i] > 0]
        assert ids_QK[0, :len(ranked)].tolist() == ranked


def test_bm25_batches_score_each_query_as_alone(tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    index = BM25Index.build(CORPUS, tokenizer)
    queries = tokenize(["the cat near quarks", "door door dog", "", "Uzbekistan", "cat mat"], tokenizer, 512)
    scores_QN = index.batch_scores(queries)
    assert scores_QN.shape == (5, len(CORPUS)) and scores_QN.dtype == np.float32
    for query, scores_N in zip(queries, scores_QN):
        np.testing.assert_array_equal(index.batch_scores([query] * 3)[1], scores_N)
    whole_QK = index.search_tokens(queries, 4)
    # Room for two queries' scores at a time: 5 queries cross two batch seams.
    monkeypatch.setattr(bm25_module, "_SCORES_PER_BATCH", 2 * len(CORPUS))
    for whole, batched in zip(whole_QK, index.search_tokens(queries, 4)):
        np.testing.assert_array_equal(whole, batched)


def test_bm25_tokens_exclude_specials_and_respect_the_length(tokenizer) -> None:
    specials = set(tokenizer.all_special_ids)
    tokens = tokenize(CORPUS + ["\u2603\u2603 snowman"], tokenizer, max_length=6)
    assert all(len(t) <= 4 for t in tokens)  # 6 minus <s> and </s>
    assert tokenizer.unk_token_id in tokenizer("\u2603")["input_ids"]
    assert not specials & {t for doc in tokens for t in doc}  # <unk> (the snowmen) dropped as well
    assert tokenize(CORPUS, tokenizer, None)[2] == tokenizer(CORPUS[2], add_special_tokens=False)["input_ids"]


def test_bm25_non_matching_documents_are_not_results(tokenizer) -> None:
    # XLM-R's lone "\u2581" piece occurs in almost any text, so only a query without tokens matches nothing.
    scores_QK, ids_QK = BM25Index.build(CORPUS, tokenizer).search([""], 3)
    assert (ids_QK == MISSING_ID).all() and (scores_QK == 0).all()
    scores_QK, ids_QK = BM25Index([["a", "b"], ["c"], ["a"]]).search_tokens([["b"]], 3)
    assert ids_QK[0].tolist() == [0, MISSING_ID, MISSING_ID] and scores_QK[0, 0] > 0 == scores_QK[0, 1]


def test_bm25_works_on_token_strings_and_breaks_ties_by_id() -> None:
    index = BM25Index([["a", "b"], ["c", "d"], ["a", "b"], ["a", "e"]])
    _, ids_QK = index.search_tokens([["a", "b"], ["a"]], 4)
    assert ids_QK[0].tolist() == [0, 2, 3, MISSING_ID]
    assert ids_QK[1].tolist() == [0, 2, 3, MISSING_ID]


def test_bm25_bad_input_names_the_fix(tokenizer) -> None:
    with pytest.raises(ValueError, match="no documents"):
        BM25Index([])
    with pytest.raises(ValueError, match="hold no tokens"):
        BM25Index([[], []])
    with pytest.raises(ValueError, match="search_tokens"):
        BM25Index([["a"]]).search(["a"], 1)
    with pytest.raises(ValueError, match="wrap it"):
        BM25Index.build("one string", tokenizer)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BM25Config(b=1.5)
