"""Evaluation: metrics by hand, every retrieval mode against brute force, benchmark errors, MLflow, the CLI.

Brute force means numpy over the embedder's own outputs (dense inner products, lexical_match_score,
colbert_score): each mode's ranking must equal that exhaustive ranking when its depths cover the corpus.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from framework.evaluate import (Benchmark, BenchmarkConfig, EvalConfig, HybridConfig, Task, TrackingConfig, evaluate,
                                load_benchmark)
from framework.evaluate import cli
from framework.evaluate.benchmark import limit_task
from framework.evaluate.encode import Shard, encode_texts, merge_shards
from framework.evaluate.hybrid import candidate_union, colbert_candidate_scores, colbert_score_matrix, rescore
from framework.evaluate.metrics import evaluate_ranking, per_query_metrics, run_from_ranking
from framework.evaluate.pipeline import attach_colbert, encode_benchmark, resolve_modes, task_inputs
from framework.evaluate.search import TaskSearch
from framework.evaluate.sparse import SparseIndex
from framework.evaluate.tracking import log_evaluation
from framework.inference import M3Embedder, colbert_score, lexical_match_score
from framework.model import ModelConfig, load_m3
from framework.retrieval import MISSING_ID, DenseIndexConfig, top_k

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_LINES = (REPO_ROOT / "data" / "multilingual_sample.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(autouse=True)
def _no_mlflow_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="module")
def embedder(tiny_model_dir: Path) -> M3Embedder:
    # The tiny model ships without head files; seeding makes its random sparse/colbert heads reproducible.
    torch.manual_seed(3)
    model, tokenizer = load_m3(tiny_model_dir)
    return M3Embedder(model, tokenizer)


def known_answer_task(num_docs: int = 14, num_queries: int = 6) -> Task:
    """Passages are lines of the text sample; each query is the exact text of one passage (its answer)."""
    docs = SAMPLE_LINES[:num_docs]
    answers = list(range(0, num_docs, num_docs // num_queries))[:num_queries]
    return Task("sample", [f"d{i}" for i in range(num_docs)], docs, [f"q{i}" for i in answers],
                [docs[i] for i in answers], {f"q{i}": {f"d{i}": 1} for i in answers})


# ---------------------------------------------------------------- metrics


def test_metrics_match_hand_computed_values() -> None:
    qrels = {"q1": {"d1": 1, "d2": 0, "d3": 2}, "q2": {"d5": 1}, "q3": {"d7": 1}}
    corpus_ids = ["d1", "d2", "d3", "d4", "d5", "d6", "d7"] + [f"x{i}" for i in range(20)]
    ranking = {"q1": ["d2", "d1", "d4"], "q2": [], "q3": [f"x{i}" for i in range(10)] + ["d7"]}
    position = {d: i for i, d in enumerate(corpus_ids)}
    ids_QK = np.full((3, 11), MISSING_ID, dtype=np.int64)
    for row, docs in enumerate(ranking.values()):
        ids_QK[row, :len(docs)] = [position[d] for d in docs]
    per_query = per_query_metrics(qrels, run_from_ranking(ids_QK, list(ranking), corpus_ids))
    # q1: gains (linear, trec_eval) 0, 1, 0 at ranks 1..3; ideal 2, 1. Relevant (grade >= 1): d1, d3.
    dcg, ideal = 1 / math.log2(3), 2 + 1 / math.log2(3)
    assert per_query["q1"]["ndcg_at_10"] == pytest.approx(dcg / ideal)
    assert per_query["q1"]["recall_at_20"] == pytest.approx(0.5)
    assert per_query["q1"]["mrr_at_10"] == pytest.approx(0.5)
    # q2 returned nothing: 0 everywhere (trec_eval alone would drop it from the average).
    assert per_query["q2"] == {"ndcg_at_10": 0, "recall_at_20": 0, "recall_at_100": 0, "mrr_at_10": 0}
    # q3: the answer at rank 11 is outside nDCG@10 and MRR@10 but inside Recall@20.
    assert per_query["q3"]["mrr_at_10"] == 0 and per_query["q3"]["ndcg_at_10"] == 0
    assert per_query["q3"]["recall_at_20"] == 1
    means = evaluate_ranking(qrels, ids_QK, list(ranking), corpus_ids)
    assert means["ndcg_at_10"] == pytest.approx(dcg / ideal / 3)
    assert means["recall_at_100"] == pytest.approx((0.5 + 0 + 1) / 3)


def test_metrics_keep_our_order_for_equal_scores() -> None:
    # trec_eval re-sorts equal scores by document id (descending): "b" would jump ahead of "a".
    qrels = {"q": {"b": 1}}
    means = evaluate_ranking(qrels, np.array([[0, 1]]), ["q"], ["a", "b"])
    assert means["mrr_at_10"] == pytest.approx(0.5)


# ---------------------------------------------------------------- retrieval primitives


def random_lexical(num: int, vocab: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [{str(t): float(rng.uniform(0.1, 1)) for t in rng.choice(vocab, size=rng.integers(1, 6), replace=False)}
            for _ in range(num)]


def test_sparse_index_equals_brute_force() -> None:
    docs, queries = random_lexical(80, 40, seed=0), random_lexical(15, 40, seed=1) + [{"39999": 1.0}]
    index = SparseIndex(docs, vocab_size=40000, batch_size=4)
    scores_QK, ids_QK = index.search(queries, 10)
    brute_QN = np.array([[lexical_match_score(q, d) for d in docs] for q in queries])
    for row, scores_N in enumerate(brute_QN):
        matched = np.flatnonzero(scores_N > 0)
        expected_scores, expected_pos = top_k(scores_N[matched][None, :], 10)
        found = expected_pos.shape[1]
        np.testing.assert_array_equal(ids_QK[row, :found], matched[expected_pos[0]])
        np.testing.assert_allclose(scores_QK[row, :found], expected_scores[0], rtol=1e-5)
        assert (ids_QK[row, found:] == MISSING_ID).all()  # no shared token, no result (as Lucene)
    assert (ids_QK[-1] == MISSING_ID).all()
    np.testing.assert_allclose(index.scores(queries[0], np.array([3, 0, 7])), brute_QN[0, [3, 0, 7]], rtol=1e-5)


def test_colbert_scores_equal_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    queries = [rng.standard_normal((int(n), 8)).astype(np.float32) for n in (5, 2, 9, 1)]
    docs = [rng.standard_normal((int(n), 8)).astype(np.float32) for n in (1, 7, 3, 12)]
    expected_QN = np.array([[colbert_score(q, d) for d in docs] for q in queries])
    for q, query_LE in enumerate(queries):
        np.testing.assert_allclose(colbert_candidate_scores(query_LE, docs), expected_QN[q], rtol=1e-5, atol=1e-6)
    # A block of 23 similarities holds one or two queries at a time: the block seams are covered.
    for max_block in (23, 1 << 20):
        np.testing.assert_allclose(colbert_score_matrix(queries, docs, max_block=max_block), expected_QN,
                                   rtol=1e-5, atol=1e-6)


def test_hybrid_union_and_rescoring() -> None:
    union = candidate_union(np.array([[4, 2, MISSING_ID], [1, 1, 0]]), np.array([[2, 9], [MISSING_ID, 5]]))
    assert [u.tolist() for u in union] == [[2, 4, 9], [0, 1, 5]]
    rng = np.random.default_rng(1)
    doc_dense_ND = rng.standard_normal((10, 4)).astype(np.float32)
    query_dense_QD = rng.standard_normal((2, 4)).astype(np.float32)
    doc_lexical, query_lexical = random_lexical(10, 12, seed=2), random_lexical(2, 12, seed=3)
    index = SparseIndex(doc_lexical, vocab_size=12)
    scores_QK, ids_QK = rescore(union, (1.0, 0.3, 0.0), 5, query_dense_QD=query_dense_QD, doc_dense_ND=doc_dense_ND,
                                query_lexical=query_lexical, sparse_index=index)
    for q, cand in enumerate(union):
        # A candidate found by one list only still gets its exact score from the other head.
        expected = {int(d): float(doc_dense_ND[d] @ query_dense_QD[q]) + 0.3 * lexical_match_score(
            query_lexical[q], doc_lexical[d]) for d in cand}
        ranked = sorted(expected, key=lambda d: -expected[d])
        assert ids_QK[q, :3].tolist() == ranked and (ids_QK[q, 3:] == MISSING_ID).all()
        np.testing.assert_allclose(scores_QK[q, :3], [expected[d] for d in ranked], rtol=1e-5)


# ---------------------------------------------------------------- modes on the tiny model


def brute_force_scores(embedder: M3Embedder, task: Task, config: EvalConfig) -> dict[str, np.ndarray]:
    q = embedder.encode(task.query_texts, colbert=True, max_length=config.query_max_length, progress=False)
    p = embedder.encode(task.corpus_texts, colbert=True, progress=False)
    dense = q["dense_vecs"] @ p["dense_vecs"].T
    sparse = np.array([[lexical_match_score(a, b) for b in p["lexical_weights"]] for a in q["lexical_weights"]])
    multi = np.array([[colbert_score(a, b) for b in p["colbert_vecs"]] for a in q["colbert_vecs"]])
    return {"dense": dense, "sparse": sparse, "colbert": multi, "dense_sparse": dense + 0.3 * sparse,
            "all": dense + 0.3 * sparse + multi, "hybrid_0.2_0.5_0.3": 0.2 * dense + 0.5 * sparse + 0.3 * multi}


def task_search(embedder: M3Embedder, task: Task, config: EvalConfig) -> TaskSearch:
    hybrid = config.hybrid.weights()
    modes = resolve_modes(config, embedder.model.cfg, hybrid)
    enc = encode_benchmark(embedder, Benchmark("b", "test", [task]), modes, hybrid, config, None)
    search = TaskSearch(task_inputs(enc, 0, task), config, hybrid, embedder.tokenizer, len(embedder.tokenizer))
    attach_colbert(embedder, enc, [search], modes, config, None)
    return search


@pytest.mark.parametrize("colbert_memory_gb", [2.0, 0.0], ids=["colbert-kept", "colbert-re-encoded"])
def test_every_mode_equals_brute_force(embedder: M3Embedder, colbert_memory_gb: float) -> None:
    task = known_answer_task()
    # Depths cover the corpus, so candidate stages must give the exhaustive ranking.
    config = EvalConfig(k=8, candidates=14, rerank_depth=14, progress=False, colbert_memory_gb=colbert_memory_gb,
                        hybrid=HybridConfig(custom=((0.2, 0.5, 0.3),)))
    search = task_search(embedder, task, config)
    for mode, scores_QN in brute_force_scores(embedder, task, config).items():
        ids_QK = search.ranking(mode)
        for row, scores_N in enumerate(scores_QN):
            got = ids_QK[row][ids_QK[row] != MISSING_ID]
            # Only documents sharing a token are sparse results; the others rank everything.
            pool = scores_N[scores_N > 0] if mode == "sparse" else scores_N
            expected_K = np.sort(pool)[::-1][:8]
            # Compared by score: the random tiny model has near-ties that float rounding may order either way.
            np.testing.assert_allclose(scores_N[got], expected_K, atol=2e-5, err_msg=f"mode {mode}, query {row}")


def test_colbert_mode_reranks_only_the_dense_top_n(embedder: M3Embedder) -> None:
    # A rerank depth of 2 in 14 documents: each query's candidates differ (the per-query scoring path).
    task = known_answer_task()
    config = EvalConfig(modes=("dense", "colbert"), k=2, candidates=2, rerank_depth=2, progress=False)
    search = task_search(embedder, task, config)
    multi_QN = brute_force_scores(embedder, task, config)["colbert"]
    for row, dense_top in enumerate(search.dense()[1][:, :2]):
        expected = sorted(dense_top.tolist(), key=lambda d: -multi_QN[row, d])
        np.testing.assert_allclose(multi_QN[row, search.ranking("colbert")[row]], multi_QN[row, expected],
                                   atol=2e-5)


def test_known_answers_end_to_end(embedder: M3Embedder) -> None:
    # Each query is its answer's exact text: identical normalised vectors score the maximum 1 in dense
    # and multi-vector search, so those modes are perfect even with random weights.
    results = evaluate(embedder, Benchmark("known", "test", [known_answer_task()]),
                       EvalConfig(k=10, candidates=10, rerank_depth=10, progress=False))
    assert results["modes"] == ["dense", "sparse", "colbert", "dense_sparse", "all", "bm25"]
    for mode in ("dense", "colbert", "bm25"):
        assert results["overall"][mode]["ndcg_at_10"] == pytest.approx(1.0), mode
        assert results["overall"][mode]["mrr_at_10"] == pytest.approx(1.0), mode
    assert results["metrics"]["sample_dense_ndcg_at_10"] == pytest.approx(1.0)
    assert set(results["timings"]["search_ms_per_query"]) == set(results["modes"])


@pytest.mark.parametrize("index", [DenseIndexConfig(device="cpu"),
                                   DenseIndexConfig(kind="ivf", nlist=2, nprobe=2, device="cpu"),
                                   DenseIndexConfig(kind="hnsw", device="cpu")], ids=["flat", "ivf", "hnsw"])
def test_faiss_cpu_indexes(embedder: M3Embedder, index: DenseIndexConfig) -> None:
    config = EvalConfig(modes=("dense",), k=10, candidates=10, rerank_depth=10, progress=False, index=index)
    search = task_search(embedder, known_answer_task(), config)
    ids_QK = search.ranking("dense")
    assert not search._indexes["dense"].on_gpu
    assert ids_QK[:, 0].tolist() == [int(q[1:]) for q in known_answer_task().query_ids]


def test_mcls_mode(embedder: M3Embedder) -> None:
    bench = Benchmark("known", "test", [known_answer_task()])
    # Texts shorter than the interval get a single CLS: MCLS is then the plain dense vector.
    same = evaluate(embedder, bench, EvalConfig(modes=("dense",), mcls=True, progress=False))
    assert same["modes"] == ["dense", "dense_mcls"]
    assert same["overall"]["dense_mcls"] == pytest.approx(same["overall"]["dense"])
    config = EvalConfig(modes=("dense",), mcls=True, mcls_interval=4, progress=False)
    search = task_search(embedder, known_answer_task(), config)
    assert not np.allclose(search.inputs.doc_mcls_ND, search.inputs.doc_dense_ND)
    assert search.ranking("dense_mcls").shape[0] == 6


def test_sharded_encoding_equals_single_process(embedder: M3Embedder) -> None:
    texts = SAMPLE_LINES[:7]
    options = dict(dense=True, sparse=True, colbert=True, progress=False)
    parts = [embedder.encode(texts[rank::2], **options) for rank in range(2)]
    merged = encode_texts(embedder, texts, Shard(0, 2, all_gather=lambda part: [part, parts[1]]), **options)
    single = embedder.encode(texts, **options)
    np.testing.assert_allclose(merged["dense_vecs"], single["dense_vecs"], atol=1e-5)
    assert [w.keys() for w in merged["lexical_weights"]] == [w.keys() for w in single["lexical_weights"]]
    assert [len(c) for c in merge_shards(parts, 7)["colbert_vecs"]] == [len(c) for c in single["colbert_vecs"]]


def test_modes_need_their_heads(tiny_model_dir: Path) -> None:
    model, tokenizer = load_m3(tiny_model_dir, ModelConfig(path=str(tiny_model_dir), colbert=False))
    assert resolve_modes(EvalConfig(), model.cfg, HybridConfig().weights()) == \
        ["dense", "sparse", "dense_sparse", "bm25"]
    with pytest.raises(ValueError, match="mode 'colbert' needs the colbert head"):
        resolve_modes(EvalConfig(modes=("colbert",)), model.cfg, HybridConfig().weights())


def test_multi_vector_mode_spellings_name_colbert() -> None:
    config = EvalConfig(modes=("dense", "multivec", "multi_vector"), every_steps=5, benchmark_name="ddtp-dev",
                        best_metric="multivec.ndcg@10")
    assert config.modes == ("dense", "colbert", "colbert")
    assert config.best_key() == ("colbert", "ndcg_at_10")
    with pytest.raises(ValueError, match="unknown mode"):
        EvalConfig(modes=("multi_vec",))


def test_config_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown mode\(s\) \['dense\+sparse'\]"):
        EvalConfig(modes=("dense+sparse",))
    with pytest.raises(ValueError, match="candidates=50 < k=100"):
        EvalConfig(candidates=50)
    with pytest.raises(ValueError, match="hybrid preset 'msmarco'"):
        HybridConfig(preset="msmarco")
    assert HybridConfig(preset="mldr").weights() == {"dense_sparse": (0.2, 0.8, 0.0), "all": (0.15, 0.5, 0.35)}


# ---------------------------------------------------------------- benchmarks


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: str, split: str = "test") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / f"{split}.tsv").write_text(qrels, encoding="utf-8")
    return folder


CORPUS = [{"_id": "d1", "title": "Fox", "text": "the quick fox"}, {"_id": "d2", "text": "lazy dog"},
          {"_id": "d3", "title": "", "text": "a cat"}]
QUERIES = [{"_id": "q1", "text": "fox"}, {"_id": "q2", "text": "dog"}, {"_id": "q3", "text": "bird"}]


def test_beir_folder_loads(tmp_path: Path) -> None:
    write_beir(tmp_path / "en", CORPUS, QUERIES, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq3\td3\t0\n")
    write_beir(tmp_path / "fr", CORPUS, QUERIES, "q1 Q0 d1 1\n")  # TREC format, no header
    bench = load_benchmark(tmp_path)
    assert [t.name for t in bench.tasks] == ["en", "fr"]
    en = bench.tasks[0]
    assert en.corpus_texts == ["Fox the quick fox", "lazy dog", "a cat"]
    # q3 has only a grade-0 judgement: not evaluable, dropped and counted.
    assert en.query_ids == ["q1", "q2"] and en.dropped_queries == 1 and en.qrels["q2"] == {"d2": 2}
    assert bench.tasks[1].query_ids == ["q1"] and bench.tasks[1].dropped_queries == 2
    assert [t.name for t in load_benchmark(tmp_path / "fr").tasks] == ["fr"]


@pytest.mark.parametrize("case, message", [
    ("missing_qrels", r"qrels/dev.tsv is missing \(no qrels for split 'dev'\); choose one of the splits there: "
                      r"\['test'\]"),
    ("unknown_ids", r"qrels name 1 query id\(s\) not in the queries \['q9'\] and 2 document id\(s\) not in the "
                    r"corpus \['d8', 'd9'\]"),
    ("empty_corpus", "the corpus is empty"),
    ("malformed_json", r"queries.jsonl:2: malformed JSON"),
    ("no_text", r"corpus.jsonl:1: no text field"),
    ("bad_score", r"test.tsv:3: relevance 'high' is not a number"),
])
def test_bad_benchmark_input(tmp_path: Path, case: str, message: str) -> None:
    corpus, queries, qrels, split = list(CORPUS), list(QUERIES), "query-id\tcorpus-id\tscore\nq1\td1\t1\n", "test"
    if case == "missing_qrels":
        split = "dev"
    elif case == "unknown_ids":
        qrels += "q9\td1\t1\nq1\td9\t1\nq2\td8\t1\n"
    elif case == "empty_corpus":
        corpus = []
    elif case == "no_text":
        corpus = [{"_id": "d1"}]
    elif case == "bad_score":
        qrels += "q2\td2\thigh\n"
    folder = write_beir(tmp_path / "task", corpus, queries, qrels)
    if case == "malformed_json":
        (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "fox"}\n{"_id": "q2", "text": \n',
                                              encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_benchmark(folder, BenchmarkConfig(split=split))


def test_unknown_benchmark_and_task(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a known name"):
        load_benchmark(tmp_path / "nothing")
    with pytest.raises(ValueError, match="holds no corpus.jsonl"):
        load_benchmark(tmp_path)
    with pytest.raises(ValueError, match=r"task\(s\) \['xx'\] not in this benchmark"):
        load_benchmark("ddtp-dev", BenchmarkConfig(tasks=("xx",)))


def test_bad_ddtp_row_names_file_and_line(tmp_path: Path) -> None:
    rows = tmp_path / "rows"
    rows.mkdir()
    import gzip

    with gzip.open(rows / "de.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"query": "q", "pos": ["p"], "lang": "de", "md5": "a"}) + "\n")
        handle.write(json.dumps({"query": "q2", "pos": [], "lang": "de", "md5": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"de.jsonl.gz:2: a DDTP row needs a 'query' string and a non-empty 'pos'"):
        load_benchmark(rows)


def test_ddtp_by_name_equals_exported_beir_folders(tmp_path: Path) -> None:
    from tools.ddtp.export import beir_from_rows

    beir_from_rows(REPO_ROOT / "data" / "ddtp", tmp_path, splits=("dev",))
    config = BenchmarkConfig(split="dev", tasks=("de", "ja-en"))
    by_name, from_folders = load_benchmark("ddtp-dev", config), load_benchmark(tmp_path / "dev", config)
    assert by_name.split == "dev" and [t.name for t in by_name.tasks] == ["de", "ja-en"]
    assert [t.group for t in by_name.tasks] == ["monolingual", "cross-lingual"]
    for a, b in zip(by_name.tasks, from_folders.tasks):
        assert (a.corpus_ids, a.corpus_texts, a.query_ids, a.query_texts, a.qrels) == \
            (b.corpus_ids, b.corpus_texts, b.query_ids, b.query_texts, b.qrels)


def test_limits_keep_the_positives_of_kept_queries() -> None:
    task = known_answer_task()
    small = limit_task(task, max_queries=2, max_corpus=4)
    assert small.query_ids == ["q0", "q10"] and len(small.corpus_ids) == 4
    assert {"d0", "d10"} <= set(small.corpus_ids)
    assert limit_task(task, 2, 1).corpus_ids == ["d0", "d10"]  # never fewer than the judged documents


# ---------------------------------------------------------------- MLflow, compare_runs, CLI


@pytest.fixture(scope="module")
def small_results(embedder: M3Embedder) -> dict:
    return evaluate(embedder, Benchmark("known", "test", [known_answer_task()]),
                    EvalConfig(modes=("dense", "sparse"), k=10, candidates=10, progress=False))


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{folder}/mlflow.db", folder


def parent_run(uri: str, folder: Path) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("train")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        "train", artifact_location=(folder / "artifacts").as_uri())
    return client.create_run(experiment_id, run_name="stage1").info.run_id


def test_mlflow_run_nested_under_parent(small_results: dict, mlflow_store: tuple[str, Path]) -> None:
    from mlflow.tracking import MlflowClient

    uri, folder = mlflow_store
    parent_id = parent_run(uri, folder)
    run_id = log_evaluation(small_results, TrackingConfig(uri=uri, parent_run_id=parent_id))
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent_id and run.info.status == "FINISHED"
    assert run.info.experiment_id == client.get_run(parent_id).info.experiment_id
    assert run.data.params["benchmark"] == "known" and run.data.params["config.k"] == "10"
    assert run.data.metrics["dense_ndcg_at_10"] == pytest.approx(1.0)
    assert run.data.metrics["sample_sparse_recall_at_100"] == small_results["metrics"]["sample_sparse_recall_at_100"]
    assert set(run.data.metrics) == set(small_results["metrics"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"per_task.csv", "per_task.md", "results.json"} <= artifacts
    csv_text = (Path(client.download_artifacts(run_id, "per_task.csv", str(folder)))).read_text()
    assert csv_text.splitlines()[0] == "task,group,mode,ndcg_at_10,recall_at_20,recall_at_100,mrr_at_10"


def test_mlflow_run_nested_under_active_run(small_results: dict, mlflow_store: tuple[str, Path]) -> None:
    import mlflow

    uri, folder = mlflow_store
    parent_id = parent_run(uri, folder)
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=parent_id):
            run_id = log_evaluation(small_results, TrackingConfig())
            assert mlflow.active_run().info.run_id == parent_id  # the trainer's run stays active
    finally:
        mlflow.set_tracking_uri(None)
    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri).get_run(run_id).data.tags["mlflow.parentRunId"] == parent_id


def test_mlflow_failure_is_a_warning(small_results: dict, mlflow_store: tuple[str, Path],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    uri, _ = mlflow_store
    with pytest.warns(RuntimeWarning, match="MLflow logging of the evaluation failed"):
        assert log_evaluation(small_results, TrackingConfig(uri=uri, parent_run_id="no-such-run")) is None
    # An unreachable server (nothing listens on port 9 of the loopback); no retries to keep the test fast.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.warns(RuntimeWarning, match="MLflow logging of the evaluation failed"):
        assert log_evaluation(small_results, TrackingConfig(uri="http://127.0.0.1:9")) is None


def test_compare_runs(small_results: dict, mlflow_store: tuple[str, Path], capsys: pytest.CaptureFixture) -> None:
    from tools.compare_runs import main

    uri, folder = mlflow_store
    ids = [log_evaluation(small_results, TrackingConfig(uri=uri, parent_run_id=parent_run(uri, folder),
                                                        run_name=f"eval-{i}")) for i in range(2)]
    assert main(["--tracking-uri", uri, *ids, "--metrics", "dense_*,*passages*"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert f"eval-0 ({ids[0][:8]})" in table[0] and f"eval-1 ({ids[1][:8]})" in table[0]
    rows = {row.split("|")[1].strip(): row for row in table[2:]}
    assert list(rows) == ["corpus_passages_per_s", "dense_mrr_at_10", "dense_ms_per_query", "dense_ndcg_at_10",
                          "dense_recall_at_100", "dense_recall_at_20"]
    assert rows["dense_ndcg_at_10"].count("1.0000") == 2
    assert main(["--tracking-uri", uri, "--experiment", "nope"]) == 2
    assert "no experiment named 'nope'" in capsys.readouterr().err


def test_cli_end_to_end_on_ddtp_slice(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow's sqlite store keeps artifacts under ./mlruns
    out = tmp_path / "results.json"
    status = cli.main(["--model", str(tiny_model_dir), "--benchmark", "ddtp", "--tasks", "de,de-en",
                       "--max-queries", "6", "--max-corpus", "15", "--mcls", "--hybrid-weights", "0.4,0.4,0.2",
                       "--no-progress", "--out", str(out), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "Dense+Sparse" in printed and "avg cross-lingual" in printed and "wrote" in printed
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["modes"] == ["dense", "sparse", "colbert", "dense_sparse", "all", "bm25", "dense_mcls",
                                "hybrid_0.4_0.4_0.2"]
    assert results["tasks"]["de-en"] == {"group": "cross-lingual", "queries": 6, "corpus": 15, "qrels": 6,
                                         "dropped_queries": 0}
    assert set(results["groups"]) == {"monolingual", "cross-lingual"}
    assert "de-en_all_ndcg_at_10" in results["metrics"] and "cross-lingual_bm25_recall_at_100" in results["metrics"]
    assert results["timings"]["corpus_passages_per_s"] > 0 and results["mlflow_run_id"]
    assert all(0 <= v <= 1 for k, v in results["metrics"].items() if k.endswith(("_at_10", "_at_20", "_at_100")))
