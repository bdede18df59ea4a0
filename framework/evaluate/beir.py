"""Read BEIR-style folders (BEIR, MIRACL, MKQA, MLDR exports, tools/build_ddtp.py --beir-from).

    corpus.jsonl            {"_id", "title"?, "text"}   one document per line (MIRACL's "docid" accepted)
    queries.jsonl           {"_id", "text"}             one query per line
    qrels/<split>.tsv       query-id<TAB>corpus-id<TAB>score, header line optional; TREC's 4-column
                            "qid Q0 docid rel" lines are accepted too

A document's text is "title text" when it has a non-empty title, as BEIR and the M3 evaluation scripts
embed it. Every problem raises ValueError naming the file, the line and the fix; a document or query id
given twice names the id and both lines.
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

CORPUS_ID_KEYS = ("_id", "docid", "id")
QUERY_ID_KEYS = ("_id", "query_id", "qid", "id")
QUERY_TEXT_KEYS = ("text", "query")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a .jsonl or .jsonl.gz file."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: malformed JSON ({err.msg} at column {err.colno}); fix or "
                                 "delete that line") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}; write one "
                                 "object per line")
            yield line_no, obj


def _field(obj: dict, keys: tuple[str, ...], path: Path, line_no: int, what: str) -> str:
    for key in keys:
        if key in obj and obj[key] is not None:
            return str(obj[key])
    raise ValueError(f"{path}:{line_no}: no {what} field (looked for {', '.join(keys)}); add it to that line")


def _unique(ids: list[str], seen: dict[str, int], new_id: str, path: Path, line_no: int, what: str) -> None:
    """Append `new_id`, or raise naming it and both lines (a duplicate would make the qrels ambiguous)."""
    first = seen.setdefault(new_id, line_no)
    if first != line_no:
        raise ValueError(f"{path}:{line_no}: {what} id {new_id!r} was already given on line {first}; give every "
                         f"{what} its own id (remove or rename one of the two lines)")
    ids.append(new_id)


def load_corpus(path: Path) -> tuple[list[str], list[str]]:
    """(ids, texts) of a corpus.jsonl, title prepended to text when present."""
    ids, texts, seen = [], [], {}
    for line_no, obj in read_jsonl(path):
        _unique(ids, seen, _field(obj, CORPUS_ID_KEYS, path, line_no, "document id"), path, line_no, "document")
        text = _field(obj, ("text",), path, line_no, "text")
        title = str(obj.get("title") or "").strip()
        texts.append(f"{title} {text}" if title else text)
    return ids, texts


def load_queries(path: Path) -> tuple[list[str], list[str]]:
    """(ids, texts) of a queries.jsonl."""
    ids, texts, seen = [], [], {}
    for line_no, obj in read_jsonl(path):
        _unique(ids, seen, _field(obj, QUERY_ID_KEYS, path, line_no, "query id"), path, line_no, "query")
        texts.append(_field(obj, QUERY_TEXT_KEYS, path, line_no, "query text"))
    return ids, texts


def _qrels_fields(line: str) -> list[str]:
    fields = line.split("\t") if "\t" in line else line.split()
    # TREC qrels: "qid Q0 docid rel" (the second column is unused).
    return [fields[0], fields[2], fields[3]] if len(fields) == 4 else fields


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """query id -> {document id: relevance} of a qrels TSV (BEIR header line optional)."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = _qrels_fields(line.rstrip("\n"))
            if line_no == 1 and fields[-1].strip().lower() in ("score", "relevance", "rel"):
                continue
            if len(fields) != 3:
                raise ValueError(f"{path}:{line_no}: expected 'query-id<TAB>corpus-id<TAB>score', got {len(fields)} "
                                 f"field(s) in {line.strip()[:80]!r}; fix that line")
            query_id, doc_id, score = (f.strip() for f in fields)
            try:
                relevance = int(float(score))
            except ValueError:
                raise ValueError(f"{path}:{line_no}: relevance {score!r} is not a number; use an integer grade "
                                 "(0 = not relevant, 1+ = relevant)") from None
            qrels.setdefault(query_id, {})[doc_id] = relevance
    return qrels


def beir_files(folder: Path, split: str) -> tuple[Path, Path, Path]:
    """(corpus, queries, qrels) paths of a BEIR folder; ValueError naming what is missing."""
    corpus, queries = folder / "corpus.jsonl", folder / "queries.jsonl"
    for path in (corpus, queries):
        if not path.is_file():
            raise ValueError(f"{path} is missing; a BEIR folder holds corpus.jsonl, queries.jsonl and "
                             "qrels/<split>.tsv (tools/build_ddtp.py --beir-from writes them for DDTP)")
    qrels = folder / "qrels" / f"{split}.tsv"
    if not qrels.is_file():
        found = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        hint = f"choose one of the splits there: {found}" if found else "add the qrels file"
        raise ValueError(f"{qrels} is missing (no qrels for split {split!r}); {hint}")
    return corpus, queries, qrels
