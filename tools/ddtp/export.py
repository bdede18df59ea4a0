"""Write the corpus: gzip JSONL rows per split and direction, BEIR-style dev/test folders, stats.json.

Layout under the output directory (direction = "xx" monolingual or "xx-en" cross-lingual):

    stats.json
    {train,dev,test}/<direction>.jsonl.gz      one row per pair:
        {"query", "pos": [text], "neg": [texts], "lang": direction, "md5", "type": "ddtp"}
        (neg holds 7 BM25 negatives in train when mined, [] in dev/test)
    beir/{dev,test}/<direction>/corpus.jsonl   {"_id", "text", "lang"}  one per distinct long description
    beir/{dev,test}/<direction>/queries.jsonl  {"_id", "text", "lang"}  one per distinct synopsis
    beir/{dev,test}/<direction>/qrels/<split>.tsv  "query-id\\tcorpus-id\\tscore" with a header line

The full build writes the BEIR folders directly; the shipped sample (data/ddtp/) carries rows only and
beir_from_rows() (tools/build_ddtp.py --beir-from) derives the same folders from its dev/test rows.
In BEIR folders identical texts are merged, so a synopsis shared by several packages is one query with
several relevant documents (beir_tables, in framework/evaluate/ddtp.py because the evaluation of the shipped
rows applies the same rules). Files are byte-identical across runs (gzip mtime 0, rows sorted by md5).
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path

from framework.evaluate.ddtp import Pair, beir_tables

ROW_TYPE = "ddtp"


def pair_row(pair: Pair, negatives: list[str] | None) -> dict:
    """The reference JSONL record of one pair."""
    return {"query": pair.query, "pos": [pair.pos], "neg": list(negatives or []), "lang": pair.lang,
            "md5": pair.md5, "type": ROW_TYPE}


def _json_line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")) + "\n"


def write_jsonl_gz(path: Path, rows: Iterable[dict]) -> int:
    """Write rows as gzip JSONL with a fixed header timestamp; return the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
        for row in rows:
            handle.write(_json_line(row).encode("utf-8"))
            count += 1
    return count


def read_jsonl_gz(path: Path) -> list[dict]:
    """Rows of a .jsonl.gz file (the inverse of write_jsonl_gz)."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Plain JSONL, as BEIR loaders expect."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [_json_line(row) for row in rows]
    path.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def write_beir(folder: Path, pairs: list[Pair], split: str) -> dict[str, int]:
    """One BEIR-style folder (corpus, queries, qrels/<split>.tsv); returns its counts."""
    corpus, queries, qrels = beir_tables(pairs)
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    lines = ["query-id\tcorpus-id\tscore\n"] + [f"{q}\t{d}\t1\n" for q, d in qrels]
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "qrels" / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")
    return {"queries": len(queries), "corpus": len(corpus), "qrels": len(qrels)}


def read_beir(folder: Path, split: str) -> tuple[list[dict], list[dict], list[tuple[str, str, int]]]:
    """(corpus, queries, qrels) of a folder written by write_beir."""
    def load(name: str) -> list[dict]:
        return [json.loads(line) for line in (folder / name).read_text(encoding="utf-8").splitlines() if line]
    rows = (folder / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    qrels = [(q, d, int(s)) for q, d, s in (line.split("\t") for line in rows)]
    return load("corpus.jsonl"), load("queries.jsonl"), qrels


def write_rows(out_dir: Path, split: str, directions: dict[str, list[Pair]],
               negatives: dict[str, list[list[str]]] | None = None) -> dict[str, int]:
    """<split>/<direction>.jsonl.gz for every direction; returns rows per direction."""
    counts: dict[str, int] = {}
    for direction in sorted(directions):
        negs = (negatives or {}).get(direction)
        rows = (pair_row(p, negs[i] if negs else None) for i, p in enumerate(directions[direction]))
        counts[direction] = write_jsonl_gz(out_dir / split / f"{direction}.jsonl.gz", rows)
    return counts


def beir_counts(pairs: list[Pair]) -> dict[str, int]:
    """Queries, documents and qrels a BEIR folder of these pairs has (without writing it)."""
    corpus, queries, qrels = beir_tables(pairs)
    return {"queries": len(queries), "corpus": len(corpus), "qrels": len(qrels)}


def write_beir_split(beir_dir: Path, split: str, directions: dict[str, list[Pair]]) -> dict[str, dict[str, int]]:
    """beir/<split>/<direction>/ for every direction with pairs; returns their counts."""
    return {d: write_beir(beir_dir / split / d, directions[d], split) for d in sorted(directions) if directions[d]}


def pairs_from_rows(path: Path) -> list[Pair]:
    """The pairs of a rows file (the inverse of write_rows, negatives dropped)."""
    return [Pair(r["query"], r["pos"][0], r["lang"], r["md5"]) for r in read_jsonl_gz(path)]


def beir_from_rows(rows_dir: Path, beir_dir: Path, splits: tuple[str, ...] = ("dev", "test")
                   ) -> dict[str, dict[str, dict[str, int]]]:
    """BEIR folders from a built corpus's dev/test rows (the shipped sample carries rows only)."""
    out = {}
    for split in splits:
        files = sorted((rows_dir / split).glob("*.jsonl.gz"))
        if not files:
            raise FileNotFoundError(f"no {split}/*.jsonl.gz under {rows_dir}; pass a folder written by "
                                    "tools/build_ddtp.py (e.g. data/ddtp)")
        directions = {f.name[: -len(".jsonl.gz")]: pairs_from_rows(f) for f in files}
        out[split] = write_beir_split(beir_dir, split, directions)
    return out


def write_stats(path: Path, stats: dict) -> None:
    """stats.json, keys in insertion order, UTF-8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

