"""A long-document retrieval task from short (query, text) pairs: the relevant text hidden deep inside filler.

MLDR-style (paper section 4.3, Table 7): each query's one relevant document is a long concatenation of
unrelated texts ("fillers") with the query's own text (the "needle") placed at a random depth, so that a
model has to represent a whole document of `min_tokens`..`max_tokens` tokens to find it. Built from DDTP:
needles are test-split descriptions, fillers descriptions of the dev split, which shares no package, no
synopsis and no description with the test split (tools/ddtp/pairs.py splits by groups), so no filler is
relevant to any query.

    doc = filler_1 SEP ... SEP filler_j SEP needle SEP filler_j+1 ... SEP filler_n

Per document (seeded by (seed, query id), so a document does not change when others are added): a
target length T ~ U[min_tokens, max_tokens]; a depth d ~ U[min_depth, max_depth]; fillers drawn without
replacement are put before the needle until they hold d * T tokens, then after it until the document
holds T; a filler that would push the document past max_tokens is skipped. Token counts are the
tokenizer's, without special tokens, summed over the parts (separators are not counted).

The task is written as a BEIR folder (framework/evaluate/beir.py reads it): corpus.jsonl,
queries.jsonl, qrels/test.tsv, plus needles.jsonl (per document: its tokens, the needle's first token
offset and its language) for analyses by depth. `build_ddtp_task` (tools/build_long_docs.py) writes one
folder per language from a full DDTP build: the first test packages in the sample order
(framework/evaluate/ddtp.py), fillers from the dev split of the same language.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from framework.evaluate.beir import read_jsonl
from framework.evaluate.ddtp import sample_order

SEPARATOR = "\n\n"


@dataclass(frozen=True)
class LongDocConfig:
    """Lengths and needle placement of the long documents."""

    min_tokens: int = 1024
    """Shortest target document length in tokens (specials not counted)."""
    max_tokens: int = 4096
    """Longest document in tokens; fillers that would exceed it are skipped."""
    min_depth: float = 0.25
    """Lowest needle depth as a fraction of the target length (0 = at the start)."""
    max_depth: float = 0.9
    """Highest needle depth as a fraction of the target length."""
    seed: int = 0
    """Seed of every draw (length, depth, fillers), combined with the query id."""

    def __post_init__(self) -> None:
        if not 0 < self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens={self.min_tokens}, max_tokens={self.max_tokens}: need "
                             "0 < min_tokens <= max_tokens")
        if not 0 <= self.min_depth <= self.max_depth <= 1:
            raise ValueError(f"min_depth={self.min_depth}, max_depth={self.max_depth}: need "
                             "0 <= min_depth <= max_depth <= 1")


@dataclass(frozen=True)
class Needle:
    """One query and the text its long document must contain."""

    query_id: str
    query: str
    text: str
    lang: str = ""


@dataclass(frozen=True)
class LongDoc:
    """One built document and where its needle sits."""

    doc_id: str
    query_id: str
    text: str
    tokens: int
    """Tokens of the parts (the tokenizer's count, no specials, separators not counted)."""
    needle_offset: int
    """Tokens before the needle."""
    lang: str = ""


def _rng(seed: int, key: str) -> random.Random:
    digest = hashlib.sha1(f"long-docs:{seed}:{key}".encode("utf-8")).hexdigest()
    return random.Random(int(digest[:16], 16))


def _fill(order: list[int], lengths: Sequence[int], start: int, budget: int, limit: int, used: set[int]
          ) -> tuple[list[int], int]:
    """Filler indices (taken from `order`, skipping `used`) until `budget` tokens, never past `limit`."""
    taken, total = [], start
    for index in order:
        if total >= budget:
            break
        if index in used or total + lengths[index] > limit:
            continue
        taken.append(index)
        used.add(index)
        total += lengths[index]
    return taken, total


def build_long_doc(needle: Needle, needle_tokens: int, fillers: Sequence[str], filler_tokens: Sequence[int],
                   config: LongDocConfig) -> LongDoc:
    """The long document of one needle (see the module docstring for the draw)."""
    if needle_tokens > config.max_tokens:
        raise ValueError(f"query {needle.query_id}: its text has {needle_tokens} tokens > max_tokens="
                         f"{config.max_tokens}; raise max_tokens or leave that query out")
    rng = _rng(config.seed, needle.query_id)
    target = rng.randint(config.min_tokens, config.max_tokens)
    depth = rng.uniform(config.min_depth, config.max_depth)
    order = list(range(len(fillers)))
    rng.shuffle(order)
    used: set[int] = set()
    room_before = config.max_tokens - needle_tokens
    before, offset = _fill(order, filler_tokens, 0, int(depth * target), room_before, used)
    after, total = _fill(order, filler_tokens, offset + needle_tokens, target, config.max_tokens, used)
    if total < config.min_tokens:
        raise ValueError(f"query {needle.query_id}: only {total} tokens after using every filler; give more "
                         f"filler texts (have {len(fillers)}) or lower min_tokens={config.min_tokens}")
    parts = [fillers[i] for i in before] + [needle.text] + [fillers[i] for i in after]
    return LongDoc("d" + needle.query_id, needle.query_id, SEPARATOR.join(parts), total, offset, needle.lang)


def build_long_docs(needles: Sequence[Needle], fillers: Sequence[str], count_tokens: Callable[[list[str]], list[int]],
                    config: LongDocConfig = LongDocConfig()) -> list[LongDoc]:
    """One long document per needle; `count_tokens(texts)` returns each text's token count (no specials)."""
    ids = [n.query_id for n in needles]
    if len(set(ids)) != len(ids):
        raise ValueError("needles: query ids repeat; give every query its own id")
    texts = set(fillers)
    clashes = [n.query_id for n in needles if n.text in texts]
    if clashes:
        raise ValueError(f"{len(clashes)} needle text(s) are also fillers (e.g. query {clashes[0]}): that document "
                         "would be relevant to two queries; draw fillers from a disjoint split")
    filler_tokens = count_tokens(list(fillers))
    needle_tokens = count_tokens([n.text for n in needles])
    return [build_long_doc(n, t, fillers, filler_tokens, config) for n, t in zip(needles, needle_tokens)]


def write_beir_task(folder: Path, needles: Sequence[Needle], docs: Sequence[LongDoc], split: str = "test") -> Path:
    """corpus.jsonl, queries.jsonl, qrels/<split>.tsv and needles.jsonl of one task under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)

    def lines(rows) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    (folder / "corpus.jsonl").write_text(lines({"_id": d.doc_id, "text": d.text, "lang": d.lang} for d in docs),
                                         encoding="utf-8")
    (folder / "queries.jsonl").write_text(lines({"_id": n.query_id, "text": n.query, "lang": n.lang}
                                                for n in needles), encoding="utf-8")
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"{d.query_id}\t{d.doc_id}\t1\n" for d in docs)
    (folder / "qrels" / f"{split}.tsv").write_text(qrels, encoding="utf-8")
    (folder / "needles.jsonl").write_text(lines({"_id": d.doc_id, "tokens": d.tokens, "needle_offset": d.needle_offset,
                                                 "lang": d.lang} for d in docs), encoding="utf-8")
    return folder


def read_direction(path: Path) -> list[dict]:
    """Rows of one DDTP direction file; a missing file names the fix."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; build the corpus with tools/build_ddtp.py --out DIR (or pick "
                                "languages it has)")
    return [row for _, row in read_jsonl(path)]


def choose_needles(rows: list[dict], lang: str, count: int) -> tuple[list[Needle], int]:
    """(the first `count` packages in sample order, how many were skipped because their synopsis or
    description repeats one already chosen: every query must have exactly one relevant document)."""
    seen_queries, seen_texts, needles, skipped = set(), set(), [], 0
    for row in sorted(rows, key=lambda r: sample_order(r["md5"])):
        if len(needles) == count:
            break
        text = row["pos"][0]
        if row["query"] in seen_queries or text in seen_texts:
            skipped += 1
            continue
        seen_queries.add(row["query"])
        seen_texts.add(text)
        needles.append(Needle("q" + row["md5"], row["query"], text, lang))
    return needles, skipped


def build_ddtp_task(ddtp: Path, tokenizer_dir: Path, out: Path, languages: Sequence[str], queries: int,
                    config: LongDocConfig = LongDocConfig(), say: Callable[[str], None] = print) -> dict:
    """OUT/<lang>/ for every language of a full DDTP build, and OUT/stats.json (returned)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def count_tokens(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]

    stats: dict = {"config": asdict(config), "queries_per_language": queries, "tokenizer": str(tokenizer_dir),
                   "languages": {}}
    for lang in languages:
        needles, skipped = choose_needles(read_direction(Path(ddtp) / "test" / f"{lang}.jsonl.gz"), lang, queries)
        fillers = list(dict.fromkeys(r["pos"][0] for r in read_direction(Path(ddtp) / "dev" / f"{lang}.jsonl.gz")))
        docs = build_long_docs(needles, fillers, count_tokens, config)
        write_beir_task(Path(out) / lang, needles, docs)
        tokens = sorted(d.tokens for d in docs)
        offsets = sorted(d.needle_offset for d in docs)
        stats["languages"][lang] = {"queries": len(needles), "skipped_repeats": skipped, "fillers": len(fillers),
                                    "tokens_min": tokens[0], "tokens_median": tokens[len(tokens) // 2],
                                    "tokens_max": tokens[-1], "needle_offset_median": offsets[len(offsets) // 2]}
        say(f"{lang}: {stats['languages'][lang]}")
    (Path(out) / "stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    return stats
