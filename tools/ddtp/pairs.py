"""Join descriptions on Description-md5, split them by group, and form query -> positive pairs.

Directions: monolingual "xx" (synopsis in xx -> long description in xx) for every language, and
cross-lingual "xx-en" (synopsis in xx -> English long description) for every language but English.

Split unit. Debian reuses text: 69 node-* packages share one long description, 26 cross compilers share
the synopsis "GNU C preprocessor". Splitting by md5 alone would put the same positive (or the same query)
in train and test. So md5s that share a long description or a synopsis in any language are joined into
one group (union-find), and the group's smallest md5 is hashed to pick its split: deterministic (sha1,
not Python's salted hash), mostly stable across archive updates (only a group whose smallest md5 changes
can move), and no query or positive text is in two splits in any language.
"""
from __future__ import annotations

import hashlib
from collections import Counter

from framework.evaluate.ddtp import Pair
from .parse import Description

SPLITS = ("train", "dev", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
PIVOT = "en"


def index_by_md5(descriptions: dict[str, list[Description]],
                 skipped: dict[str, Counter]) -> dict[str, dict[str, Description]]:
    """lang -> md5 -> description; repeated md5s and verbatim English copies are counted and dropped."""
    by_lang: dict[str, dict[str, Description]] = {}
    for lang in sorted(descriptions):
        table: dict[str, Description] = {}
        for d in descriptions[lang]:
            if d.md5 in table:
                # Several binary packages can share one description: Translation files repeat the block.
                skipped[lang]["duplicate_md5"] += 1
            else:
                table[d.md5] = d
        by_lang[lang] = table
    english = by_lang.get(PIVOT, {})
    for lang, table in by_lang.items():
        if lang == PIVOT:
            continue
        copies = [m for m, d in table.items() if m in english and d.text == english[m].text]
        for md5 in copies:
            # An "xx" text that is the English text verbatim would teach the model that English is xx.
            skipped[lang]["untranslated_copy"] += 1
            del table[md5]
    return by_lang


class _UnionFind:
    """Groups of md5s; a group's root is its smallest md5, so groups do not depend on input order."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def group_md5s(by_lang: dict[str, dict[str, Description]]) -> dict[str, str]:
    """md5 -> group key: md5s sharing a synopsis or long description in any language are one group."""
    groups = _UnionFind()
    for lang in sorted(by_lang):
        first_seen: dict[tuple[str, str], str] = {}
        for md5 in sorted(by_lang[lang]):
            d = by_lang[lang][md5]
            groups.find(md5)
            for key in (("text", d.text), ("synopsis", d.synopsis)):
                if key in first_seen:
                    groups.union(md5, first_seen[key])
                else:
                    first_seen[key] = md5
    return {md5: groups.find(md5) for md5 in groups.parent}


def split_of(group_key: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    """train/dev/test from a hash of the group key (sha1, so it is the same on every machine)."""
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {fractions} must be three non-negative numbers summing to 1, "
                         "e.g. 0.8,0.1,0.1")
    digest = hashlib.sha1(f"ddtp-split:{group_key}".encode("ascii")).hexdigest()
    unit = int(digest[:15], 16) / 16**15
    bound = 0.0
    for name, fraction in zip(SPLITS, fractions):
        bound += fraction
        if unit < bound:
            return name
    return SPLITS[-1]


def assign_splits(by_lang: dict[str, dict[str, Description]],
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> dict[str, str]:
    """md5 -> split name, for every md5 of every language."""
    return {md5: split_of(key, fractions) for md5, key in group_md5s(by_lang).items()}


def monolingual_pairs(by_lang: dict[str, dict[str, Description]], lang: str) -> list[Pair]:
    """Synopsis -> long description within one language, sorted by md5."""
    table = by_lang[lang]
    return [Pair(table[m].synopsis, table[m].text, lang, m) for m in sorted(table)]


def crosslingual_pairs(by_lang: dict[str, dict[str, Description]], lang: str,
                       skipped: Counter) -> list[Pair]:
    """Synopsis in `lang` -> English long description of the same md5, sorted by md5."""
    table, english = by_lang[lang], by_lang[PIVOT]
    pairs = []
    for md5 in sorted(table):
        if md5 not in english:
            # A translation kept for a description this release no longer has in English.
            skipped["no_english_description"] += 1
            continue
        pairs.append(Pair(table[md5].synopsis, english[md5].text, f"{lang}-{PIVOT}", md5))
    return pairs


def all_pairs(by_lang: dict[str, dict[str, Description]],
              skipped: dict[str, Counter]) -> dict[str, list[Pair]]:
    """direction -> pairs: "xx" for each language, "xx-en" for each language with an English pivot."""
    directions: dict[str, list[Pair]] = {}
    for lang in sorted(by_lang):
        directions[lang] = monolingual_pairs(by_lang, lang)
    if PIVOT in by_lang:
        for lang in sorted(by_lang):
            if lang != PIVOT:
                directions[f"{lang}-{PIVOT}"] = crosslingual_pairs(by_lang, lang, skipped[lang])
    return directions


def split_pairs(directions: dict[str, list[Pair]], splits: dict[str, str]) -> dict[str, dict[str, list[Pair]]]:
    """split -> direction -> pairs (order kept)."""
    out: dict[str, dict[str, list[Pair]]] = {name: {} for name in SPLITS}
    for direction, pairs in directions.items():
        for name in SPLITS:
            out[name][direction] = [p for p in pairs if splits[p.md5] == name]
    return out
