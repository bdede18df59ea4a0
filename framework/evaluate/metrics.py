"""Ranking metrics through trec_eval (pytrec-eval-terrier): nDCG@10, Recall@20, Recall@100, MRR@10.

Conventions are trec_eval's, as in BEIR, MIRACL and the paper's Pyserini evaluation: nDCG uses the
linear gain rel / log2(rank + 1); a document is relevant when its grade is >= 1; Recall@k divides by
all relevant documents of the query. MRR@10 is trec_eval's recip_rank over the first 10 results.

Two deliberate departures from handing trec_eval raw scores:
  * the run carries rank-derived scores (K - rank), because trec_eval re-sorts by score and breaks
    ties by document id in reverse, which would silently change the ranking our search returned;
  * a query with no result at all scores 0 on every metric (trec_eval leaves it out of the average,
    which would reward a retriever for returning nothing).

Shape legend (docs/shapes.md): Q queries, K results per query.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytrec_eval

from framework.retrieval import MISSING_ID

METRICS = ("ndcg_at_10", "recall_at_20", "recall_at_100", "mrr_at_10")
LABELS = {"ndcg_at_10": "nDCG@10", "recall_at_20": "R@20", "recall_at_100": "R@100", "mrr_at_10": "MRR@10"}
# Our name -> trec_eval's output key.
TREC_KEYS = {"ndcg_at_10": "ndcg_cut_10", "recall_at_20": "recall_20", "recall_at_100": "recall_100"}
MRR_CUTOFF = 10


def run_from_ranking(ids_QK: np.ndarray, query_ids: Sequence[str], corpus_ids: Sequence[str]) -> dict:
    """{query id: {document id: score}} of a ranking, scores K - rank so that trec_eval keeps our order."""
    num_results = ids_QK.shape[1]
    run = {}
    for query_id, ids_K in zip(query_ids, ids_QK):
        run[query_id] = {corpus_ids[d]: float(num_results - rank) for rank, d in enumerate(ids_K) if d != MISSING_ID}
    return run


def per_query_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
                      ) -> dict[str, dict[str, float]]:
    """{query id: {metric: value}} for every query of `qrels` (0 where the run has nothing for it)."""
    measures = {"ndcg_cut.10", "recall.20,100"}
    scored = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    top = {q: dict(sorted(docs.items(), key=lambda item: -item[1])[:MRR_CUTOFF]) for q, docs in run.items()}
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top)
    out = {}
    for query_id in qrels:
        values = {name: scored.get(query_id, {}).get(key, 0.0) for name, key in TREC_KEYS.items()}
        values["mrr_at_10"] = mrr.get(query_id, {}).get("recip_rank", 0.0)
        out[query_id] = values
    return out


def mean_metrics(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
    """Average of each metric over queries."""
    if not per_query:
        raise ValueError("no queries to average; the task has no evaluable query")
    return {name: float(np.mean([v[name] for v in per_query.values()])) for name in METRICS}


def evaluate_ranking(qrels: dict[str, dict[str, int]], ids_QK: np.ndarray, query_ids: Sequence[str],
                     corpus_ids: Sequence[str]) -> dict[str, float]:
    """Mean metrics of one task's ranking (rows of ids_QK follow query_ids)."""
    return mean_metrics(per_query_metrics(qrels, run_from_ranking(ids_QK, query_ids, corpus_ids)))
