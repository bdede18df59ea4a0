"""DDTP rows as retrieval tables: the query -> positive pair and the rules that merge pairs into BEIR tables.

tools/ddtp (which builds the corpus from Debian's translations) writes its BEIR folders with these rules
and framework/evaluate/benchmark.py scores the shipped rows with the same ones, so an evaluation of rows
and of the exported folders give the same numbers. In the tables identical texts are merged: a synopsis
shared by several packages is one query with several relevant documents. Ids are md5s: a document is
"d" + the smallest md5 whose positive it is, a query "q" + the smallest md5 whose query it is.

The sample order (sha1 of a salted md5) picks the shipped sample's packages (tools/ddtp/sample.py) and
the capped subsets that bench/quality.py and the long-document task take from a full build, so that
the first 200 test packages per language of a full build are exactly data/ddtp/test.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from framework.evaluate.beir import read_jsonl


@dataclass(frozen=True)
class Pair:
    """One query -> positive pair of a direction."""

    query: str
    pos: str
    lang: str
    """Direction: "de" (monolingual) or "de-en" (German query, English positive)."""
    md5: str


def sample_order(md5: str) -> str:
    """Sort key of an md5 in the sample order."""
    return hashlib.sha1(f"ddtp-sample:{md5}".encode("ascii")).hexdigest()


def beir_tables(pairs: list[Pair]) -> tuple[list[dict], list[dict], list[tuple[str, str]]]:
    """(corpus, queries, qrels) of one direction, identical texts merged, everything sorted by id."""
    query_lang, _, doc_lang = pairs[0].lang.partition("-") if pairs else ("", "", "")
    doc_lang = doc_lang or query_lang
    doc_ids: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    for pair in sorted(pairs, key=lambda p: p.md5):
        doc_ids.setdefault(pair.pos, "d" + pair.md5)
        query_ids.setdefault(pair.query, "q" + pair.md5)
    corpus = sorted(({"_id": i, "text": t, "lang": doc_lang} for t, i in doc_ids.items()), key=lambda r: r["_id"])
    queries = sorted(({"_id": i, "text": t, "lang": query_lang} for t, i in query_ids.items()),
                     key=lambda r: r["_id"])
    qrels = sorted({(query_ids[p.query], doc_ids[p.pos]) for p in pairs})
    return corpus, queries, qrels


def read_pairs(path: Path) -> list[Pair]:
    """The pairs of a rows file (<direction>.jsonl.gz), naming the line of a bad row."""
    pairs = []
    for line_no, row in read_jsonl(path):
        query, pos = row.get("query"), row.get("pos")
        if not isinstance(query, str) or not isinstance(pos, list) or not pos or not isinstance(pos[0], str):
            raise ValueError(f"{path}:{line_no}: a DDTP row needs a 'query' string and a non-empty 'pos' list; "
                             "fix the row or rebuild with tools/build_ddtp.py")
        pairs.append(Pair(query, pos[0], str(row.get("lang", path.name)), str(row.get("md5", line_no))))
    return pairs
