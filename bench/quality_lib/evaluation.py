"""Evaluations of the quality bench: M3 models through framework.evaluate, groups with held-out languages apart.

Every number is nDCG@10 (x100 in the tables) unless said otherwise. A row's value for a group is the
macro average over the group's directions, as framework.evaluate averages its own groups:

    mono-seen / cross-seen     monolingual / cross-lingual directions of languages trained on
    mono-held / cross-held     those of the held-out languages (never seen in training)
    all                        every direction

Results are cached as JSON next to the model's run, so a rerun of the bench skips what is done.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from framework.evaluate.benchmark import Benchmark, load_benchmark

from .data import HELD_OUT, Prefixes, is_held_out

GROUPS = ("all", "mono-seen", "cross-seen", "mono-held", "cross-held")
M3_MODES = ("dense", "sparse", "colbert", "dense_sparse", "all", "bm25")


def task_group(direction: str, held_out: tuple[str, ...] = HELD_OUT) -> str:
    kind = "cross" if "-" in direction else "mono"
    return f"{kind}-{'held' if is_held_out(direction, held_out) else 'seen'}"


def with_prefixes(bench: Benchmark, prefixes: Prefixes) -> Benchmark:
    """The benchmark with every query and document text prefixed (the texts a prefix-trained model reads)."""
    if not prefixes.active:
        return bench
    tasks = [dataclasses.replace(t, query_texts=[prefixes.query + q for q in t.query_texts],
                                 corpus_texts=[prefixes.passage + d for d in t.corpus_texts]) for t in bench.tasks]
    return Benchmark(bench.name, bench.split, tasks)


def group_means(per_task: dict[str, dict[str, dict[str, float]]], metric: str = "ndcg_at_10",
                held_out: tuple[str, ...] = HELD_OUT) -> dict[str, dict[str, float]]:
    """{row (mode or pooling): {group: mean metric}} from {task: {row: {metric: value}}}."""
    rows = sorted({row for table in per_task.values() for row in table})
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        values: dict[str, list[float]] = {g: [] for g in GROUPS}
        for task, table in per_task.items():
            if row in table:
                values["all"].append(table[row][metric])
                values[task_group(task, held_out)].append(table[row][metric])
        out[row] = {g: sum(v) / len(v) for g, v in values.items() if v}
    return out


def evaluate_m3(model_dir: Path, rows_dir: Path, out: Path, prefixes: Prefixes = Prefixes(),
                modes: tuple[str, ...] = M3_MODES, batch_size: int = 32, passage_max_length: int | None = None,
                mcls: bool = False) -> dict:
    """framework.evaluate on a folder of DDTP rows (or BEIR folders); the results dict, cached at `out`."""
    if out.is_file():
        return json.loads(out.read_text(encoding="utf-8"))
    from framework.evaluate import EvalConfig, evaluate

    bench = with_prefixes(load_benchmark(rows_dir), prefixes)
    config = EvalConfig(modes=modes, progress=False, batch_size=batch_size, passage_max_length=passage_max_length,
                        mcls=mcls)
    began = time.monotonic()
    results = evaluate(model_dir, bench, config, out=out)
    print(f"    evaluated {model_dir} on {rows_dir.name} ({', '.join(results['modes'])}) in "
          f"{(time.monotonic() - began) / 60:.1f} min", flush=True)
    return results


def evaluate_reference(model_dir: Path, rows_dir: Path, out: Path, batch_size: int = 32) -> dict:
    """mE5's own recipe (prefixes, mean pooling) and CLS with prefixes, cached at `out`."""
    if out.is_file():
        return json.loads(out.read_text(encoding="utf-8"))
    from .me5 import PooledEncoder, evaluate_pooled

    prefixes = Prefixes.me5()
    began = time.monotonic()
    result = evaluate_pooled(PooledEncoder(str(model_dir)), load_benchmark(rows_dir), prefixes.query,
                             prefixes.passage, batch_size=batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"    mE5 recipe on {rows_dir.name} in {(time.monotonic() - began) / 60:.1f} min", flush=True)
    return result


def lexical_stats(model_dir: Path, rows_dir: Path, out: Path, prefixes: Prefixes, num_texts: int) -> dict:
    """Sparse-head health on the first `num_texts` queries and documents of every task, pooled, cached at `out`.

    zero_share: fraction of texts whose lexical vector is empty (every weight 0, the collapse of
    FlagEmbedding issues #982 / #914); mean_nonzero: tokens with a weight per text; mean_weight: their mean.
    """
    if out.is_file():
        return json.loads(out.read_text(encoding="utf-8"))
    from framework.inference import M3Embedder

    bench = with_prefixes(load_benchmark(rows_dir), prefixes)
    per_task = max(1, num_texts // max(1, len(bench.tasks)))
    texts = [t for task in bench.tasks for t in task.query_texts[:per_task] + task.corpus_texts[:per_task]]
    lexical = M3Embedder.from_pretrained(model_dir).encode(texts, dense=False, sparse=True, batch_size=32,
                                                           progress=False)["lexical_weights"]
    weights = [w for d in lexical for w in d.values()]
    stats = {"texts": len(texts), "zero_share": sum(1 for d in lexical if not d) / len(lexical),
             "mean_nonzero": len(weights) / len(lexical), "mean_weight": sum(weights) / len(weights) if weights else 0.0}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    return stats
