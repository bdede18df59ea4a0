"""Benchmarks: tasks of (corpus, queries, qrels), from BEIR folders or the shipped DDTP rows.

`load_benchmark(name_or_dir, config)` accepts
  * "ddtp" / "ddtp-test" / "ddtp-dev": the shipped DDTP sample (data/ddtp/{test,dev}, framework/resources.py);
  * a folder of DDTP rows (<direction>.jsonl.gz, e.g. the test/ folder of a full tools/build_ddtp.py build);
  * a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv): one task named after the folder;
  * a folder of BEIR folders (MIRACL per language, DDTP's beir/test/): one task per subfolder.

DDTP: every direction is its own task with its own corpus, exactly the folders tools/ddtp/export.py writes
(identical texts merged, md5 ids: framework/evaluate/ddtp.py holds the rules both use). A cross-lingual
direction xx-en searches the English descriptions of the packages that have an xx query, not one English
corpus shared by all xx-en: so xx and xx-en search the same packages in a corpus of the same size and
differ only in the query-document language pairing, and the numbers equal those of an evaluation of the
exported BEIR folders. Tasks are grouped "monolingual" and "cross-lingual" for averages. Encoding is
shared: a text in several corpora (an English description in en and in several xx-en) is encoded once.

Queries without any relevant judgement cannot be scored; they are dropped and counted (BEIR does the
same). Every other inconsistency raises ValueError naming the file and the fix.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from framework.evaluate.beir import beir_files, load_corpus, load_qrels, load_queries
from framework.evaluate.config import BenchmarkConfig
from framework.evaluate.ddtp import beir_tables, read_pairs
from framework.resources import ddtp_dir

DDTP_NAMES = {"ddtp": "test", "ddtp-test": "test", "ddtp-dev": "dev"}
ROWS_SUFFIX = ".jsonl.gz"
log = logging.getLogger(__name__)
# Ids shown in an error message; the counts are always exact.
MAX_SHOWN = 3


@dataclass
class Task:
    """One retrieval task: search `queries` over `corpus`, judged by `qrels`."""

    name: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    """query id -> {document id: relevance}; relevance >= 1 is relevant."""
    group: str = ""
    """Average group ("monolingual", "cross-lingual" for DDTP); "" = no group."""
    source: str = ""
    """File or folder the task came from (named in error messages)."""
    dropped_queries: int = 0
    """Queries dropped because no document is judged relevant for them."""

    @property
    def num_qrels(self) -> int:
        return sum(len(docs) for docs in self.qrels.values())


@dataclass
class Benchmark:
    """Named list of tasks."""

    name: str
    split: str
    tasks: list[Task] = field(default_factory=list)


def load_benchmark(name_or_dir: str | Path, config: BenchmarkConfig = BenchmarkConfig()) -> Benchmark:
    """Load, validate, filter and slice a benchmark (see the module docstring for what is accepted)."""
    key = str(name_or_dir)
    if key in DDTP_NAMES:
        split = DDTP_NAMES[key]
        tasks = load_ddtp_rows(ddtp_dir() / split)
        name = key
    else:
        path = Path(name_or_dir)
        if not path.exists():
            raise ValueError(f"benchmark {key!r} is neither a known name ({', '.join(DDTP_NAMES)}) nor an existing "
                             "folder; pass one of those names or a BEIR folder")
        split, tasks, name = config.split, _load_folder(path, config.split), path.name
    tasks = select_tasks(tasks, config.tasks)
    tasks = [limit_task(check_task(t), config.max_queries, config.max_corpus) for t in tasks]
    return Benchmark(name, split, tasks)


def _load_folder(path: Path, split: str) -> list[Task]:
    if (path / "corpus.jsonl").exists():
        return [load_beir_task(path, split)]
    if sorted(path.glob("*" + ROWS_SUFFIX)):
        return load_ddtp_rows(path)
    subfolders = sorted(p for p in path.iterdir() if p.is_dir() and (p / "corpus.jsonl").exists())
    if subfolders:
        return [load_beir_task(p, split) for p in subfolders]
    raise ValueError(f"{path} holds no corpus.jsonl, no *{ROWS_SUFFIX} rows and no subfolder with corpus.jsonl; "
                     "pass a BEIR folder, a folder of BEIR folders, or a folder of DDTP rows")


def load_beir_task(folder: Path, split: str) -> Task:
    """One task from a BEIR folder, named after the folder."""
    corpus_path, queries_path, qrels_path = beir_files(folder, split)
    corpus_ids, corpus_texts = load_corpus(corpus_path)
    query_ids, query_texts = load_queries(queries_path)
    return Task(folder.name, corpus_ids, corpus_texts, query_ids, query_texts, load_qrels(qrels_path),
                source=str(folder))


def load_ddtp_rows(folder: Path) -> list[Task]:
    """One task per <direction>.jsonl.gz of DDTP rows (data/ddtp/test, a full build's dev/test)."""
    # Each language's monolingual direction, then its cross-lingual one: cs, cs-en, da, da-en, ...
    files = sorted(folder.glob("*" + ROWS_SUFFIX), key=lambda p: p.name[: -len(ROWS_SUFFIX)])
    if not files:
        raise ValueError(f"no *{ROWS_SUFFIX} rows under {folder}; run tools/build_ddtp.py or pass another split")
    tasks = []
    for path in files:
        direction = path.name[: -len(ROWS_SUFFIX)]
        corpus, queries, qrels = beir_tables(read_pairs(path))
        relevant: dict[str, dict[str, int]] = {}
        for query_id, doc_id in qrels:
            relevant.setdefault(query_id, {})[doc_id] = 1
        group = "cross-lingual" if "-" in direction else "monolingual"
        tasks.append(Task(direction, [r["_id"] for r in corpus], [r["text"] for r in corpus],
                          [r["_id"] for r in queries], [r["text"] for r in queries], relevant, group, str(path)))
    return tasks


def select_tasks(tasks: list[Task], names: tuple[str, ...]) -> list[Task]:
    """The tasks named in `names` (all when empty), in benchmark order."""
    if not names:
        return tasks
    available = [t.name for t in tasks]
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise ValueError(f"task(s) {unknown} not in this benchmark; choose from {available}")
    return [t for t in tasks if t.name in names]


def check_task(task: Task) -> Task:
    """Validate ids against each other; drop (and count) queries that have no relevant document."""
    where = task.source or task.name
    if not task.corpus_ids:
        raise ValueError(f"{where}: the corpus is empty; a task needs at least one document")
    for what, ids in (("document", task.corpus_ids), ("query", task.query_ids)):
        duplicates = len(ids) - len(set(ids))
        if duplicates:
            raise ValueError(f"{where}: {duplicates} duplicate {what} id(s); give every {what} a unique id")
    known_queries, known_docs = set(task.query_ids), set(task.corpus_ids)
    bad_queries = sorted(set(task.qrels) - known_queries)
    bad_docs = sorted({d for docs in task.qrels.values() for d in docs} - known_docs)
    if bad_queries or bad_docs:
        raise ValueError(f"{where}: qrels name {len(bad_queries)} query id(s) not in the queries "
                         f"{bad_queries[:MAX_SHOWN]} and {len(bad_docs)} document id(s) not in the corpus "
                         f"{bad_docs[:MAX_SHOWN]}; use the qrels written with this corpus and these queries")
    evaluable = {q for q, docs in task.qrels.items() if any(rel > 0 for rel in docs.values())}
    keep = [i for i, q in enumerate(task.query_ids) if q in evaluable]
    if not keep:
        raise ValueError(f"{where}: no query has a relevant document in the qrels; check the split's qrels file")
    if len(keep) < len(task.query_ids):
        # Normal for BEIR folders whose queries.jsonl serves several splits; counted in results["tasks"].
        log.info("%s: %d of %d queries have no relevant document in the qrels and are not scored", where,
                 len(task.query_ids) - len(keep), len(task.query_ids))
    return replace(task, query_ids=[task.query_ids[i] for i in keep], query_texts=[task.query_texts[i] for i in keep],
                   qrels={q: task.qrels[q] for q in evaluable},
                   dropped_queries=task.dropped_queries + len(task.query_ids) - len(keep))


def limit_task(task: Task, max_queries: int | None, max_corpus: int | None) -> Task:
    """The first `max_queries` queries by id and a corpus of `max_corpus` documents that keeps their positives."""
    if max_queries is not None and max_queries < len(task.query_ids):
        order = sorted(range(len(task.query_ids)), key=lambda i: task.query_ids[i])[:max_queries]
        query_ids = [task.query_ids[i] for i in order]
        task = replace(task, query_ids=query_ids, query_texts=[task.query_texts[i] for i in order],
                       qrels={q: task.qrels[q] for q in query_ids})
    if max_corpus is not None and max_corpus < len(task.corpus_ids):
        judged = {d for docs in task.qrels.values() for d in docs}
        # Judged documents first, so that a smaller corpus never loses an answer of a kept query.
        order = sorted(range(len(task.corpus_ids)), key=lambda i: task.corpus_ids[i] not in judged)
        keep = sorted(order[:max(max_corpus, len(judged))])
        task = replace(task, corpus_ids=[task.corpus_ids[i] for i in keep],
                       corpus_texts=[task.corpus_texts[i] for i in keep])
    return task
