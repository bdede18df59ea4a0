"""The small deterministic subset of the corpus shipped in data/ddtp/.

Per split and language the sample takes the first pairs in a fixed pseudo-random order of md5s (sha1 of
a salted md5, independent of the split hash); a cross-lingual direction "xx-en" takes the same md5s as
"xx" where they have English, so the two directions of a language describe the same packages. Rows are
exactly the full build's rows (same negatives), because mining is seeded per md5 against the full pool.
"""
from __future__ import annotations

from framework.evaluate.ddtp import sample_order

from .pairs import Pair

# Pairs per monolingual direction (cross-lingual directions follow their language's md5s).
SAMPLE_CAPS = {"train": 80, "dev": 40, "test": 200}


def select_sample(directions: dict[str, list[Pair]], cap: int) -> dict[str, list[Pair]]:
    """direction -> the sampled pairs (md5 order) of one split."""
    chosen: dict[str, set[str]] = {}
    for direction in sorted(d for d in directions if "-" not in d):
        md5s = sorted((p.md5 for p in directions[direction]), key=sample_order)
        chosen[direction] = set(md5s[:cap])
    sampled: dict[str, list[Pair]] = {}
    for direction, pairs in directions.items():
        keep = chosen.get(direction.split("-")[0], set())
        sampled[direction] = [p for p in pairs if p.md5 in keep]
    return sampled


def counts_table(stats: dict) -> str:
    """Markdown table of pairs per direction and split plus test BEIR sizes (data/ddtp/README.md has it)."""
    pairs, beir = stats["pairs"], stats["beir"]
    lines = ["| direction | train | dev | test | test queries | test corpus |",
             "|---|---:|---:|---:|---:|---:|"]
    for direction in sorted(pairs["train"]):
        test = beir["test"].get(direction, {"queries": 0, "corpus": 0})
        lines.append(f"| {direction} | {pairs['train'][direction]} | {pairs['dev'].get(direction, 0)} | "
                     f"{pairs['test'].get(direction, 0)} | {test['queries']} | {test['corpus']} |")
    sizes = stats["split_sizes"]
    lines.append(f"| **total** | {sizes['train']} | {sizes['dev']} | {sizes['test']} | | |")
    return "\n".join(lines) + "\n"
