"""Data of the quality bench: held-out languages, capped test subsets, training rows with mE5's prefixes.

Everything is derived from a full `tools/build_ddtp.py` build (DDTP_DIR: train/dev/test rows of the 29
directions) into the bench's work folder, deterministically:

  * test/dev subsets: per language the first `cap` md5s in the shipped sample's order (sha1 of the md5,
    tools/ddtp/sample.py); "xx-en" takes the md5s of "xx", so both directions describe the same packages.
    A cap of 200 on the test split gives exactly data/ddtp/test (the shipped sample is this selection).
  * train rows: the directions of the languages that are *not* held out, at most `rows` per direction
    in the same order (0 = all), with mE5's "query: " / "passage: " prefixes applied when asked (the
    framework has no prompt support yet, so the prefixes are part of the text from the shards on).

Held-out languages are absent from training altogether, in both directions (their queries and, for
"xx", their descriptions); they measure forgetting, never in-domain gain.
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from framework.evaluate.ddtp import sample_order

ROWS_SUFFIX = ".jsonl.gz"
# Held out of training: three CJK scripts (a model can forget a script it does not see) and two Slavic
# languages close to trained ones (uk ~ ru, sk ~ cs), each with its cross-lingual direction.
HELD_OUT = ("ja", "ko", "sk", "uk", "zh_CN")
QUERY_PREFIX, PASSAGE_PREFIX = "query: ", "passage: "


@dataclass(frozen=True)
class Prefixes:
    """Texts put before queries and passages (mE5 was trained with "query: " and "passage: ")."""

    query: str = ""
    """Prefix of every query."""
    passage: str = ""
    """Prefix of every positive and negative passage."""

    @classmethod
    def me5(cls) -> "Prefixes":
        return cls(QUERY_PREFIX, PASSAGE_PREFIX)

    @property
    def active(self) -> bool:
        return bool(self.query or self.passage)


def language(direction: str) -> str:
    """Query language of a direction: "de" for "de" and "de-en"."""
    return direction.split("-")[0]


def is_held_out(direction: str, held_out: Iterable[str] = HELD_OUT) -> bool:
    return language(direction) in set(held_out)


def read_rows(path: Path) -> Iterator[dict]:
    """Rows of a DDTP .jsonl.gz file; a malformed line raises naming the file and line."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: malformed JSON ({err.msg}); rebuild with tools/build_ddtp.py") from None
            if not isinstance(row.get("query"), str) or not row.get("pos") or not row.get("md5"):
                raise ValueError(f"{path}:{line_no}: a DDTP row needs 'query', 'pos' and 'md5'; rebuild with "
                                 "tools/build_ddtp.py")
            yield row


def write_rows(path: Path, rows: Iterable[dict]) -> int:
    """gzip JSONL with a fixed timestamp (identical bytes across runs); returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
        for row in rows:
            handle.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            count += 1
    return count


def direction_files(split_dir: Path) -> dict[str, Path]:
    """direction -> rows file of one split of a build."""
    files = {p.name[: -len(ROWS_SUFFIX)]: p for p in sorted(split_dir.glob("*" + ROWS_SUFFIX))}
    if not files:
        raise ValueError(f"no *{ROWS_SUFFIX} under {split_dir}; build the corpus with "
                         "tools/build_ddtp.py --out DIR and pass --ddtp DIR")
    return files


def chosen_md5s(files: dict[str, Path], cap: int) -> dict[str, set[str]]:
    """language -> the first `cap` md5s of its monolingual direction in sample order (cap 0 = all)."""
    chosen = {}
    for direction, path in files.items():
        if "-" in direction:
            continue
        md5s = sorted((row["md5"] for row in read_rows(path)), key=sample_order)
        chosen[direction] = set(md5s[:cap] if cap else md5s)
    return chosen


def prefixed(row: dict, prefixes: Prefixes) -> dict:
    if not prefixes.active:
        return row
    return dict(row, query=prefixes.query + row["query"], pos=[prefixes.passage + p for p in row["pos"]],
                neg=[prefixes.passage + n for n in row.get("neg", [])])


def write_subset(split_dir: Path, out_dir: Path, cap: int, held_out: Iterable[str] = (),
                 prefixes: Prefixes = Prefixes()) -> dict[str, int]:
    """Rows of the chosen md5s of every direction not held out -> out_dir; direction -> rows written.

    Rows keep the build's order (md5-sorted); an existing complete subset (its counts.json) is reused.
    """
    done = out_dir / "counts.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    files = direction_files(split_dir)
    chosen = chosen_md5s(files, cap)
    counts = {}
    for direction, path in files.items():
        if is_held_out(direction, held_out):
            continue
        keep = chosen.get(language(direction), set())
        rows = (prefixed(row, prefixes) for row in read_rows(path) if row["md5"] in keep)
        counts[direction] = write_rows(out_dir / path.name, rows)
    done.write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return counts
