"""Hard negatives for the train split: one BM25 ranking per language pool, shared by its directions.

Monolingual "xx": the pool is every distinct train long description in xx; a query's positives are the
texts of all train pairs with the same synopsis (Debian repeats synopses), and none of them may be a
negative. Cross-lingual "xx-en": the positive is English, so the negatives are English too; BM25 cannot
match an xx query against English text, so the ranking of the md5's *English* synopsis is reused, with
the English texts of every pair sharing the xx synopsis removed as well. A query's draw is seeded by
(seed, md5), so "de-en" picks the same negatives as "en" unless an extra exclusion applies, and mining a
subset of queries (the shipped sample) gives exactly the rows the full build has.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .mine import build_index, pick_negatives, query_rng, rank_pool, tokenize
from .pairs import PIVOT, Pair

# Extra ranking depth beyond the rank range, so that removing cross-lingual exclusions cannot empty it.
_SLACK = 16


def distinct_texts(pairs: list[Pair]) -> list[str]:
    """The pool: distinct positives in md5 order (pairs arrive sorted by md5)."""
    return list(dict.fromkeys(p.pos for p in pairs))


def positives_of_query(pairs: list[Pair], index_of: dict[str, int]) -> dict[str, set[int]]:
    """query text -> pool indices of every positive that query has."""
    positives: dict[str, set[int]] = defaultdict(set)
    for p in pairs:
        positives[p.query].add(index_of[p.pos])
    return positives


def _rank_language(pairs: list[Pair], wanted: set[str] | None, depth: int,
                   batch_size: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """(pool, md5 -> ranked pool indices) for the wanted md5s of one monolingual direction."""
    pool = distinct_texts(pairs)
    index_of = {text: i for i, text in enumerate(pool)}
    positives = positives_of_query(pairs, index_of)
    todo = [p for p in pairs if wanted is None or p.md5 in wanted]
    if not todo:
        return pool, {}
    lang = todo[0].lang
    ranked = rank_pool(build_index(pool, lang), [tokenize(p.query, lang) for p in todo],
                       [positives[p.query] for p in todo], depth, batch_size=batch_size, label=lang)
    return pool, {p.md5: r for p, r in zip(todo, ranked)}


def mine_train(train: dict[str, list[Pair]], wanted: dict[str, set[str]] | None = None, num_neg: int = 7,
               rank_range: tuple[int, int] = (3, 50), seed: int = 0,
               batch_size: int = 256) -> dict[str, dict[str, list[str]]]:
    """direction -> md5 -> negatives, for every train pair (or only the md5s in `wanted[direction]`)."""
    depth = rank_range[1] + num_neg + _SLACK
    mono = sorted(d for d in train if "-" not in d)
    cross = sorted(d for d in train if "-" in d)
    need: dict[str, set[str] | None] = {d: None if wanted is None else set(wanted.get(d, ())) for d in mono}
    if wanted is not None and PIVOT in need:
        # Cross-lingual rows reuse the English ranking of their md5, so rank those English queries too.
        for direction in cross:
            need[PIVOT] |= set(wanted.get(direction, ()))
    negatives: dict[str, dict[str, list[str]]] = {}
    pools: dict[str, tuple[list[str], dict[str, np.ndarray]]] = {}
    for lang in mono:
        if need[lang] is not None and not need[lang]:
            continue
        pool, ranking = _rank_language(train[lang], need[lang], depth, batch_size)
        pools[lang] = (pool, ranking)
        keep = wanted.get(lang, set()) if wanted is not None else ranking.keys()
        negatives[lang] = {m: [pool[j] for j in pick_negatives(ranking[m], rank_range, num_neg,
                                                               query_rng(seed, m))] for m in keep}
    for direction in cross:
        negatives[direction] = _cross_negatives(train[direction], pools.get(PIVOT), wanted, direction,
                                                rank_range, num_neg, seed)
    return negatives


def _cross_negatives(pairs: list[Pair], english: tuple[list[str], dict[str, np.ndarray]] | None,
                     wanted: dict[str, set[str]] | None, direction: str, rank_range: tuple[int, int],
                     num_neg: int, seed: int) -> dict[str, list[str]]:
    """md5 -> English negatives of one "xx-en" direction, from the English rankings."""
    todo = [p for p in pairs if wanted is None or p.md5 in wanted.get(direction, ())]
    if not todo:
        return {}
    if english is None:
        raise ValueError(f"mining {direction} needs the English train pool; keep 'en' in --languages")
    pool, ranking = english
    index_of = {text: i for i, text in enumerate(pool)}
    positives = positives_of_query(pairs, index_of)
    out: dict[str, list[str]] = {}
    for p in todo:
        ranked = ranking[p.md5]
        ranked = ranked[~np.isin(ranked, list(positives[p.query]))]
        picked = pick_negatives(ranked, rank_range, num_neg, query_rng(seed, p.md5))
        out[p.md5] = [pool[j] for j in picked]
    return out
