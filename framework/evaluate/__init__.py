"""Retrieval evaluation of M3 models: dense, sparse, multi-vector, hybrids and BM25 on BEIR or DDTP benchmarks.

    from framework.evaluate import EvalConfig, TrackingConfig, evaluate
    results = evaluate("runs/stage1/model", "ddtp-dev", EvalConfig(), tracking=TrackingConfig(parent_run_id=...))

Modules follow the data flow: config -> benchmark (beir) -> encode -> search (sparse, hybrid) -> metrics
-> report / tracking; pipeline.evaluate() runs them, cli.py is the command line.

Names are imported on first use, so that building the command-line parser (cli.add_arguments) does not
load torch and transformers.
"""
from importlib import import_module

_EXPORTS = {
    "Benchmark": "benchmark", "Task": "benchmark", "load_benchmark": "benchmark",
    "BenchmarkConfig": "config", "EvalConfig": "config", "HybridConfig": "config", "TrackingConfig": "config",
    "Shard": "encode", "evaluate": "pipeline", "summary": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'framework.evaluate' has no attribute {name!r}")
    return getattr(import_module(f"framework.evaluate.{_EXPORTS[name]}"), name)
