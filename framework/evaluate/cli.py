"""`python -m framework evaluate --model DIR --benchmark NAME_OR_DIR [--out results.json]`.

Wired into framework/__main__.py with add_arguments(subparser) and run(args); `python -m
framework.evaluate` runs the same command on its own. Prints the mode table and the per-task nDCG@10
table at the end; logs an MLflow run unless --no-mlflow.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from framework.evaluate.config import (BASE_MODES, HYBRID_PRESETS, BenchmarkConfig, EvalConfig, HybridConfig,
                                       TrackingConfig)
from framework.retrieval import DenseIndexConfig
from framework.retrieval.dense import DEVICES, INDEX_KINDS


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _weights(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give three numbers w_dense,w_sparse,w_colbert") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give exactly three numbers w_dense,w_sparse,w_colbert")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluate command's options."""
    data = parser.add_argument_group("model and benchmark")
    data.add_argument("--model", required=True, help="M3 model directory (BGE-M3 layout)")
    data.add_argument("--benchmark", required=True,
                      help="ddtp (test split), ddtp-dev, a BEIR folder, a folder of BEIR folders or of DDTP rows")
    data.add_argument("--split", default="test", help="qrels split of BEIR folders (qrels/<split>.tsv)")
    data.add_argument("--tasks", type=_names, default=(), help="comma-separated tasks, e.g. de,de-en (default: all)")
    data.add_argument("--max-queries", type=int, help="per task, evaluate only the first N queries (quick runs)")
    data.add_argument("--max-corpus", type=int, help="per task, keep N documents (positives of kept queries first)")
    search = parser.add_argument_group("retrieval")
    search.add_argument("--modes", type=_names, default=(),
                        help=f"comma-separated subset of {','.join(BASE_MODES)} (default: all the heads allow; "
                             "multivec and multi_vector name colbert)")
    search.add_argument("--k", type=int, default=100, help="results kept per query for the metrics")
    search.add_argument("--candidates", type=int, default=1000, help="dense and sparse depth merged by dense_sparse")
    search.add_argument("--rerank-depth", type=int, default=200, help="candidates rescored by multi-vector")
    search.add_argument("--hybrid-preset", choices=sorted(HYBRID_PRESETS), default="miracl",
                        help="weights of dense_sparse and all: miracl 1/0.3/0, 1/0.3/1; mldr 0.2/0.8/0, 0.15/0.5/0.35")
    search.add_argument("--hybrid-weights", type=_weights, action="append", default=[], metavar="WD,WS,WC",
                        help="an extra hybrid mode with these weights (repeatable)")
    search.add_argument("--mcls", action="store_true", help="also report dense with MCLS document vectors")
    search.add_argument("--mcls-interval", type=int, default=256, help="MCLS: one CLS per this many tokens")
    search.add_argument("--dense-dim", type=int, metavar="N",
                        help="truncate dense vectors to their first N dims, renormalised (Matryoshka models)")
    search.add_argument("--index", choices=INDEX_KINDS, default="flat", help="faiss index of the dense search")
    search.add_argument("--nlist", type=int, default=1024, help="IVF cells")
    search.add_argument("--nprobe", type=int, default=32, help="IVF cells probed per query")
    search.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node")
    search.add_argument("--ef-search", type=int, default=128, help="HNSW search list size")
    search.add_argument("--faiss-device", choices=DEVICES, default="auto", help="where the faiss index lives")
    encode = parser.add_argument_group("encoding")
    encode.add_argument("--device", help="model device (default: cuda when available, else cpu)")
    encode.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    encode.add_argument("--query-max-length", type=int, default=512, help="query tokens kept")
    encode.add_argument("--passage-max-length", type=int, help="passage tokens kept (default: the model's limit)")
    encode.add_argument("--query-prompt", help="text before every query (default: the model's saved query prompt)")
    encode.add_argument("--passage-prompt", help="text before every document (default: the model's passage prompt)")
    encode.add_argument("--no-progress", action="store_true", help="hide progress bars")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, help="write all metrics, tables and timings to this JSON file")
    output.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    output.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    output.add_argument("--experiment", default="evaluation", help="MLflow experiment of a top-level run")
    output.add_argument("--parent-run-id", help="nest the evaluation run under this MLflow run")
    output.add_argument("--run-name", help="MLflow run name (default: eval-<benchmark>)")


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """EvalConfig of the parsed options (the dataclasses check the values)."""
    index = DenseIndexConfig(kind=args.index, nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m,
                             ef_search=args.ef_search, device=args.faiss_device)
    benchmark = BenchmarkConfig(split=args.split, tasks=args.tasks, max_queries=args.max_queries,
                                max_corpus=args.max_corpus)
    hybrid = HybridConfig(preset=args.hybrid_preset, custom=tuple(args.hybrid_weights))
    return EvalConfig(modes=args.modes, k=args.k, candidates=args.candidates,
                      rerank_depth=args.rerank_depth, mcls=args.mcls, mcls_interval=args.mcls_interval,
                      dense_dim=args.dense_dim,
                      batch_size=args.batch_size, query_max_length=args.query_max_length,
                      passage_max_length=args.passage_max_length, query_prompt=args.query_prompt,
                      passage_prompt=args.passage_prompt, progress=not args.no_progress,
                      benchmark=benchmark, hybrid=hybrid, index=index)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the tables, write --out; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from framework.evaluate.pipeline import evaluate
    from framework.evaluate.report import summary

    config = config_from_args(args)
    tracking = None if args.no_mlflow else TrackingConfig(uri=args.tracking_uri, parent_run_id=args.parent_run_id,
                                                          experiment=args.experiment, run_name=args.run_name)
    results = evaluate(args.model, args.benchmark, config, tracking=tracking, out=args.out, device=args.device)
    print(summary(results))
    if args.out is not None:
        print(f"\nwrote {args.out}")
    if results.get("mlflow_run_id"):
        print(f"MLflow run {results['mlflow_run_id']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m framework.evaluate`: the same command as `python -m framework evaluate`, quiet by default."""
    from framework.errors import exit_on_user_error
    from framework.logs import configure

    parser = argparse.ArgumentParser(prog="python -m framework.evaluate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also print library logs and load reports; tracebacks for user errors")
    args = parser.parse_args(argv)
    configure(args.verbose)
    with exit_on_user_error("evaluate", args.verbose):
        return run(args)
