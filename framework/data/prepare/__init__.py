"""Shard preparation: JSONL or text inputs -> WebDataset tar shards + a manifest.

    config.py  ShardConfig, the typed job config of one run (one part of the input)
    job.py     make_shards (the run: inputs, workers, parts, the error budget, the manifest), verify_manifest
    inputs.py  lists the input files and reads this part's lines
    encode.py  parses, validates and tokenises them (in worker processes)
    writer.py  writes the samples to tar shards, one open shard per (source, length bucket)
    text.py    plain documents (the RetroMAE stage): their records and kind detection

tools/make_shards.py is the command line over this package; framework/data/manifest.py merges parts.
"""
from framework.data.budget import ErrorBudgetExceeded
from framework.data.prepare.config import ShardConfig
from framework.data.prepare.job import make_shards, verify_manifest

__all__ = ["ErrorBudgetExceeded", "ShardConfig", "make_shards", "verify_manifest"]
