"""evaluate(): encode a benchmark once, search it in every mode, score the rankings, log and report.

    embedder <- model directory or M3Embedder
    benchmark <- name / folder (benchmark.py)
    encode distinct queries and documents once (encode.py; sharded over ranks when given a Shard)
    per task: first-stage searches, colbert candidates, rescoring (search.py, hybrid.py)
    metrics per task and mode (metrics.py), averaged per group and overall (macro: tasks weigh equally,
    as the paper's "Avg" columns)
    results dict -> results.json, MLflow run (tracking.py), tables (report.py)

Single process by default. With a `Shard`, the encoding (the expensive part) is split over the ranks;
every rank then searches and scores the same encodings and returns the same results, and only rank 0
writes files and logs to MLflow.

Shape legend (docs/shapes.md): N documents, D dense size.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from framework.evaluate.benchmark import Benchmark, load_benchmark
from framework.evaluate.config import BASE_MODES, HYBRID_PRESETS, MCLS_MODE, MODE_HEADS, EvalConfig, TrackingConfig
from framework.evaluate.encode import BenchmarkEncoding, Shard, TextPool, colbert_fits, encode_texts
from framework.evaluate.metrics import METRICS, evaluate_ranking
from framework.evaluate.report import flat_metrics, write_results
from framework.evaluate.search import TaskInputs, TaskSearch
from framework.inference import M3Embedder

log = logging.getLogger(__name__)


def as_embedder(model, device: str | None = None) -> M3Embedder:
    """An M3Embedder as given, or loaded from a model directory (GPU when torch sees one)."""
    if isinstance(model, M3Embedder):
        return model
    import torch

    return M3Embedder.from_pretrained(model, device or ("cuda" if torch.cuda.is_available() else "cpu"))


def mode_heads(mode: str, hybrid: dict[str, tuple[float, float, float]]) -> tuple[str, ...]:
    """Heads a mode reads: MODE_HEADS, or for a custom hybrid dense + sparse (+ colbert when weighed)."""
    if mode in MODE_HEADS:
        return MODE_HEADS[mode]
    return ("dense", "sparse", "colbert") if hybrid[mode][2] else ("dense", "sparse")


def resolve_modes(config: EvalConfig, model_cfg, hybrid: dict[str, tuple[float, float, float]]) -> list[str]:
    """Modes to run: config.modes (or all the heads allow), then dense_mcls and custom hybrids."""
    heads_on = {name for name in ("dense", "sparse", "colbert") if getattr(model_cfg, name)}
    modes = list(config.modes) or [m for m in BASE_MODES if set(MODE_HEADS[m]) <= heads_on]
    if config.mcls and MCLS_MODE not in modes:
        modes.append(MCLS_MODE)
    modes += [m for m in hybrid if m not in HYBRID_PRESETS[config.hybrid.preset] and m not in modes]
    for mode in modes:
        missing = sorted(set(mode_heads(mode, hybrid)) - heads_on)
        if missing:
            raise ValueError(f"mode {mode!r} needs the {'/'.join(missing)} head(s), which this model has switched "
                             "off; drop the mode (--modes) or evaluate a model with those heads")
    return modes


def encode_benchmark(embedder: M3Embedder, bench: Benchmark, modes: list[str], hybrid: dict, config: EvalConfig,
                     shard: Shard | None) -> BenchmarkEncoding:
    """Encode every distinct query and document of the benchmark once, with the heads the modes need."""
    heads = {head for mode in modes for head in mode_heads(mode, hybrid)}
    query_pool, corpus_pool = TextPool(), TextPool()
    query_positions = [query_pool.add(t.query_texts) for t in bench.tasks]
    corpus_positions = [corpus_pool.add(t.corpus_texts) for t in bench.tasks]
    limit = embedder.model.max_positions
    query_len = min(config.query_max_length, limit)
    passage_len = min(config.passage_max_length or limit, limit)
    dense, sparse, colbert = ("dense" in heads), ("sparse" in heads), ("colbert" in heads)
    # The forward pass computes every head anyway; keeping colbert outputs only costs memory.
    keep_colbert = colbert and colbert_fits(embedder.tokenizer, corpus_pool.texts, passage_len,
                                            embedder.model.colbert_linear.out_features,
                                            config.colbert_memory_gb * 2**30)
    options = dict(batch_size=config.batch_size, progress=config.progress, dense_dim=config.dense_dim)
    query_prompt, passage_prompt = prompts_used(embedder, config)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    queries = encode_texts(embedder, query_pool.texts, shard, dense=dense, sparse=sparse, colbert=colbert,
                           max_length=query_len, prompt=query_prompt, **options) if dense or sparse or colbert else {}
    seconds["queries"] = time.perf_counter() - start
    corpus: dict = {}
    start = time.perf_counter()
    if dense or sparse or keep_colbert:
        corpus = encode_texts(embedder, corpus_pool.texts, shard, dense=dense, sparse=sparse,
                              colbert=keep_colbert, max_length=passage_len, prompt=passage_prompt, **options)
        seconds["corpus"] = time.perf_counter() - start
    mcls_ND = None
    if MCLS_MODE in modes:
        start = time.perf_counter()
        mcls_ND = encode_texts(embedder, corpus_pool.texts, shard, dense=True, sparse=False, mcls=True,
                               mcls_interval=config.mcls_interval, max_length=passage_len, prompt=passage_prompt,
                               **options)["dense_vecs"]
        seconds["corpus_mcls"] = time.perf_counter() - start
    return BenchmarkEncoding(queries, corpus, corpus_pool.texts, query_positions, corpus_positions, mcls_ND, seconds)


def prompts_used(embedder: M3Embedder, config: EvalConfig) -> tuple[str, str]:
    """(query, passage) prompts of the evaluation: the config's, else the model's saved ones (M3Embedder)."""
    query = embedder.prompt_for(is_query=True) if config.query_prompt is None else config.query_prompt
    passage = embedder.prompt_for(is_query=False) if config.passage_prompt is None else config.passage_prompt
    return query, passage


def task_inputs(enc: BenchmarkEncoding, index: int, task) -> TaskInputs:
    """Rows of one task, taken from the pooled encodings."""
    q_pos, d_pos = enc.query_positions[index], enc.corpus_positions[index]
    def rows(source: dict, key: str, positions: np.ndarray):
        if key not in source:
            return None
        values = source[key]
        return values[positions] if isinstance(values, np.ndarray) else [values[p] for p in positions]
    return TaskInputs(task.query_texts, task.corpus_texts,
                      query_dense_QD=rows(enc.queries, "dense_vecs", q_pos),
                      doc_dense_ND=rows(enc.corpus, "dense_vecs", d_pos),
                      query_lexical=rows(enc.queries, "lexical_weights", q_pos),
                      doc_lexical=rows(enc.corpus, "lexical_weights", d_pos),
                      query_colbert=rows(enc.queries, "colbert_vecs", q_pos),
                      doc_mcls_ND=None if enc.corpus_mcls_ND is None else enc.corpus_mcls_ND[d_pos])


def attach_colbert(embedder: M3Embedder, enc: BenchmarkEncoding, searches: list[TaskSearch], modes: list[str],
                   config: EvalConfig, shard: Shard | None) -> float:
    """Give each task the multi-vector outputs of its rerank candidates; returns seconds spent encoding."""
    needed = [sorted(s.colbert_candidates(modes)) for s in searches]
    if not any(needed):
        return 0.0
    source = enc.corpus.get("colbert_vecs")
    seconds = 0.0
    if source is None:
        # Large corpus: encode only the documents some query reranks (at most queries x depth of them).
        positions = sorted({int(enc.corpus_positions[i][row]) for i, rows in enumerate(needed) for row in rows})
        limit = embedder.model.max_positions
        start = time.perf_counter()
        out = encode_texts(embedder, [enc.corpus_texts[p] for p in positions], shard, dense=False, sparse=False,
                           colbert=True, batch_size=config.batch_size, progress=config.progress,
                           max_length=min(config.passage_max_length or limit, limit),
                           prompt=prompts_used(embedder, config)[1])
        seconds = time.perf_counter() - start
        source = dict(zip(positions, out["colbert_vecs"]))
    for i, (search, rows) in enumerate(zip(searches, needed)):
        search.inputs.doc_colbert = {row: source[int(enc.corpus_positions[i][row])] for row in rows}
    return seconds


def evaluate(model, benchmark, config: EvalConfig = EvalConfig(), *, tracking: TrackingConfig | None = None,
             out: str | Path | None = None, shard: Shard | None = None, device: str | None = None) -> dict:
    """Evaluate a model (directory or M3Embedder) on a benchmark (name, folder or Benchmark).

    Returns the results dict (see report.py). `tracking` logs the evaluation as an MLflow run (nested
    under tracking.parent_run_id or the active run); `out` writes results.json. Only rank 0 of a
    `shard` writes or logs. Note that M3Embedder(model, ...) puts a training model in eval mode.
    """
    started = time.perf_counter()
    embedder = as_embedder(model, device)
    bench = benchmark if isinstance(benchmark, Benchmark) else load_benchmark(benchmark, config.benchmark)
    hybrid = config.hybrid.weights()
    modes = resolve_modes(config, embedder.model.cfg, hybrid)
    enc = encode_benchmark(embedder, bench, modes, hybrid, config, shard)
    vocab_size = max(len(embedder.tokenizer), embedder.model.encoder.config.vocab_size)
    searches = [TaskSearch(task_inputs(enc, i, t), config, hybrid, embedder.tokenizer, vocab_size)
                for i, t in enumerate(bench.tasks)]
    enc.seconds["colbert_candidates"] = attach_colbert(embedder, enc, searches, modes, config, shard)
    per_task = {}
    for task, search in zip(bench.tasks, searches):
        per_task[task.name] = {mode: evaluate_ranking(task.qrels, search.ranking(mode), task.query_ids,
                                                      task.corpus_ids) for mode in modes}
    results = build_results(embedder, model, bench, modes, config, per_task, searches, enc)
    results["timings"]["total_s"] = time.perf_counter() - started
    if shard is None or shard.rank == 0:
        if tracking is not None:
            from framework.evaluate.tracking import log_evaluation

            results["mlflow_run_id"] = log_evaluation(results, tracking)
        if out is not None:
            write_results(results, Path(out))
    return results


def _average(tables: list[dict[str, dict[str, float]]], modes: list[str]) -> dict[str, dict[str, float]]:
    return {mode: {m: float(np.mean([t[mode][m] for t in tables])) for m in METRICS} for mode in modes}


def build_results(embedder, model, bench: Benchmark, modes: list[str], config: EvalConfig, per_task: dict,
                  searches: list[TaskSearch], enc: BenchmarkEncoding) -> dict:
    """The results dict: overall / per group / per task metrics, task sizes, timings, config."""
    groups = sorted({t.group for t in bench.tasks if t.group})
    num_queries = sum(len(t.query_ids) for t in bench.tasks)
    corpus_s = enc.seconds.get("corpus", 0.0)
    timings = {
        "corpus_texts": len(enc.corpus_texts),
        "corpus_encode_s": corpus_s,
        "corpus_passages_per_s": len(enc.corpus_texts) / corpus_s if corpus_s else None,
        "query_texts": num_queries,
        "query_encode_s": enc.seconds["queries"],
        "encode_s": dict(enc.seconds),
        "search_ms_per_query": {m: 1000 * sum(s.latency_seconds(m) for s in searches) / num_queries for m in modes},
        "index_build_s": {k: sum(s.build_seconds.get(k, 0.0) for s in searches)
                          for k in sorted({k for s in searches for k in s.build_seconds})},
    }
    results = {
        "model": str(model) if not isinstance(model, M3Embedder) else (embedder.model.cfg.path or "M3Embedder"),
        "benchmark": bench.name,
        "split": bench.split,
        "modes": modes,
        "overall": _average(list(per_task.values()), modes),
        "groups": {g: _average([per_task[t.name] for t in bench.tasks if t.group == g], modes) for g in groups},
        "per_task": per_task,
        "tasks": {t.name: {"group": t.group, "queries": len(t.query_ids), "corpus": len(t.corpus_ids),
                           "qrels": t.num_qrels, "dropped_queries": t.dropped_queries} for t in bench.tasks},
        "timings": timings,
        "prompts": dict(zip(("query", "passage"), prompts_used(embedder, config))),
        "config": dataclasses.asdict(config),
        "mlflow_run_id": None,
    }
    results["metrics"] = flat_metrics(results)
    return results
