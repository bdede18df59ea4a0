"""Hard-negative mining on a small JSONL file: invariants, bad rows, determinism, resume and parts, both
retrievers; the choosing rules (rank and score windows, margins to the positive) on crafted rankings and
against an independent BM25 / cross-encoder computation; teacher rescoring and written scores.

Shape suffixes: K results per query, C candidates.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from framework.data.prepare.inputs import expand_inputs
from framework.inference import M3Embedder
from framework.retrieval import MISSING_ID, BM25Config, BM25Index, DenseIndex, tokenize
from framework.teacher import CrossEncoderConfig, ScorePair, load_teacher
from tools.build_cross_encoder import build_cross_encoder
from tools.mine_hard_negatives import main
from tools.mining import (RULES, MiningConfig, MiningReport, ScoreRules, counts_path_of, merge_mined, mine,
                          report_path_of, state_path_of)
from tools.mining.choose import apply_margins, draw, margin_limits, window_candidates
from tools.mining.rankers import BM25Retriever

NUM_ROWS = 80
CHUNK = 16
# 1-based input line -> (raw bytes, reason); inserted between the good rows.
BAD_LINES = {
    4: (b'{"query": "broken", "pos": ["x"]', "malformed_json"),
    9: (b'{"query": "no positives here"}', "missing_field"),
    17: (b"", "blank_line"),
    23: ('{"query": "caf\u00e9", "pos": ["x"]}'.encode("latin-1"), "non_utf8"),
    30: (b'{"query": "q", "pos": 5}', "wrong_type"),
    41: (b'{"query": "q", "pos": ["  "]}', "no_positive"),
    50: (b"[1, 2]", "not_an_object"),
    66: (b'{"query": "   ", "pos": ["p"]}', "empty_text"),
}


def good_rows(sample_text_file: Path) -> list[dict]:
    lines = [line.strip() for line in sample_text_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [{"query": line.split(", ")[0], "pos": [line], "id": i} for i, line in enumerate(lines[:NUM_ROWS])]
    for row in rows[::3]:
        row["source"] = "alpha"  # the others count under the input file's name, as make_shards names them
    rows[3]["pos"].append(lines[40])          # a second positive that is another row's only positive
    rows[5]["pos"] = ["  " + lines[6] + "  "]  # the same passage as row 6's, up to surrounding whitespace
    rows[7]["neg"], rows[7]["neg_scores"] = ["old negative"], [0.5]
    return rows


@pytest.fixture(scope="module")
def input_file(sample_text_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = iter(good_rows(sample_text_file))
    out: list[bytes] = []
    while len(out) < NUM_ROWS + len(BAD_LINES):
        line = len(out) + 1
        out.append(BAD_LINES[line][0] if line in BAD_LINES else json.dumps(next(rows), ensure_ascii=False).encode())
    path = tmp_path_factory.mktemp("mine") / "train.jsonl"
    path.write_bytes(b"\n".join(out))  # no newline after the last line: that must work too
    return path


def config_for(model_dir: Path, method: str = "bm25", **changes) -> MiningConfig:
    options = {"num_neg": 5, "range_start": 2, "range_end": 30, "chunk_size": CHUNK, **changes}
    return MiningConfig(model=str(model_dir), method=method, **options)


def input_lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


def valid_pairs(input_file: Path, output_file: Path) -> list[tuple[dict, dict]]:
    """(input row, output row) of every good line; bad lines must come out unchanged."""
    out_lines = output_file.read_bytes().split(b"\n")
    assert out_lines[-1] == b"" and len(out_lines) - 1 == NUM_ROWS + len(BAD_LINES)
    pairs = []
    for line, (raw_in, raw_out) in enumerate(zip(input_lines(input_file), out_lines), start=1):
        if line in BAD_LINES:
            assert raw_out == raw_in, line
        else:
            pairs.append((json.loads(raw_in), json.loads(raw_out)))
    return pairs


def pool_of(input_file: Path) -> list[str]:
    """The default pool, rebuilt independently: distinct positives (first spelling) in input order."""
    first: dict[str, str] = {}
    for line, raw in enumerate(input_lines(input_file), start=1):
        if line not in BAD_LINES:
            for text in json.loads(raw)["pos"]:
                first.setdefault(text.strip(), text)
    return list(first.values())


def check_rows(pairs: list[tuple[dict, dict]], band_of) -> int:
    """Every valid row: same fields, distinct negatives from its rank band, never a positive or the query.

    A row gets 5 negatives unless its band holds fewer candidates; returns how many rows are short.
    """
    num_short = 0
    for row, out in pairs:
        assert {k: v for k, v in out.items() if k != "neg"} == {k: v for k, v in row.items()
                                                                if k not in ("neg", "neg_scores")}
        negatives = out["neg"]
        forbidden = {p.strip() for p in row["pos"]} | {row["query"].strip()}
        assert not forbidden & {n.strip() for n in negatives}, row["query"]
        candidates = {text for text in band_of(row) if text.strip() not in forbidden}
        assert set(negatives) <= candidates, row["query"]
        assert len(set(negatives)) == len(negatives) == min(5, len(candidates)), row["query"]
        num_short += len(negatives) < 5
    return num_short


def test_bm25_mining_keeps_rows_and_draws_from_the_rank_band(input_file: Path, tokenizer_dir: Path,
                                                            tmp_path: Path) -> None:
    report = mine(input_file, tmp_path / "out.jsonl", config_for(tokenizer_dir))
    pool = pool_of(input_file)
    index = BM25Index.build(pool, AutoTokenizer.from_pretrained(str(tokenizer_dir)),
                            BM25Config(max_doc_length=512, max_query_length=512))

    def band(row: dict) -> set[str]:
        return {pool[i] for i in index.search([row["query"]], 30)[1][0, 2:30] if i >= 0}

    num_short = check_rows(valid_pairs(input_file, tmp_path / "out.jsonl"), band)
    # BM25 returns only documents sharing a token, so a one-word query can have a thin band.
    assert 0 < num_short < NUM_ROWS // 4 and report.num_short == num_short
    assert report.pool_size == len(pool) == NUM_ROWS - 1  # row 5's positive is row 6's, row 3's second is 40's
    assert report.num_mined == NUM_ROWS and report.num_neg_scores_dropped == 1
    assert report.bad == {reason: 1 for _, reason in BAD_LINES.values()}
    assert {reason: lines[0][0] for reason, lines in report.bad_lines.items()} == {
        reason: line for line, (_, reason) in BAD_LINES.items()}


def test_dense_mining_with_the_tiny_model(input_file: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    mine(input_file, tmp_path / "out.jsonl", config_for(tiny_model_dir, "dense"))
    pool = pool_of(input_file)
    embedder = M3Embedder.from_pretrained(tiny_model_dir)
    index = DenseIndex.build(embedder.encode(pool, sparse=False, max_length=512, batch_size=64)["dense_vecs"])
    # A random tiny model puts every cosine within 1e-5 of 1, so ranks hinge on the last float bits, and
    # those depend on which texts share a batch: encode the queries a chunk at a time, as the tool does.
    pairs = valid_pairs(input_file, tmp_path / "out.jsonl")
    lines = [line for line in range(1, NUM_ROWS + len(BAD_LINES) + 1) if line not in BAD_LINES]
    bands: dict[int, set[str]] = {}
    for chunk in range(0, len(lines) + len(BAD_LINES), CHUNK):
        rows = [row for line, (row, _) in zip(lines, pairs) if chunk < line <= chunk + CHUNK]
        queries_QD = embedder.encode([row["query"] for row in rows], sparse=False, max_length=512,
                                     batch_size=64)["dense_vecs"]
        for row, ids_K in zip(rows, index.search(queries_QD, 30)[1]):
            bands[row["id"]] = {pool[i] for i in ids_K[2:30]}
    assert check_rows(pairs, lambda row: bands[row["id"]]) == 0


def test_mining_is_deterministic_and_seeded(input_file: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    mine(input_file, tmp_path / "a.jsonl", config_for(tokenizer_dir))
    mine(input_file, tmp_path / "b.jsonl", config_for(tokenizer_dir))
    mine(input_file, tmp_path / "c.jsonl", config_for(tokenizer_dir, seed=1))
    # BM25 scores do not depend on which queries share a chunk, and each row's draw is seeded by its line.
    mine(input_file, tmp_path / "d.jsonl", config_for(tokenizer_dir, chunk_size=5))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "d.jsonl").read_bytes()


def cut_points(full: bytes) -> list[int]:
    """Byte offsets where a run could have died: nothing, mid-line, chunk seams, mid-chunk, almost done."""
    ends = [i + 1 for i, byte in enumerate(full) if byte == ord("\n")]
    return [0, ends[4] + 10, ends[CHUNK - 1], ends[CHUNK + 2], ends[2 * CHUNK + 5] + 3, len(full) - 1, len(full)]


@pytest.mark.parametrize("method", ["bm25", "dense"])
def test_resume_gives_the_uninterrupted_file(input_file: Path, tokenizer_dir: Path, tiny_model_dir: Path,
                                             tmp_path: Path, method: str) -> None:
    config = config_for(tokenizer_dir if method == "bm25" else tiny_model_dir, method)
    complete = tmp_path / "complete.jsonl"
    full_report = mine(input_file, complete, config)
    full = complete.read_bytes()
    cuts = cut_points(full) if method == "bm25" else [cut_points(full)[3]]
    for cut in cuts:
        out = tmp_path / f"resumed-{cut}.jsonl"
        out.write_bytes(full[:cut])
        shutil.copyfile(state_path_of(complete), state_path_of(out))
        shutil.copyfile(counts_path_of(complete), counts_path_of(out))  # written before each chunk's lines
        report = mine(input_file, out, config)
        assert out.read_bytes() == full, cut
        # Kept lines are checked and counted too, so the report covers the whole file either way.
        assert (report.bad, report.num_mined, report.num_neg_scores_dropped) == (
            full_report.bad, full_report.num_mined, full_report.num_neg_scores_dropped)
        kept = full[:cut].count(b"\n")
        assert report.num_resumed == (kept if kept == len(input_lines(input_file)) else kept - kept % CHUNK)


def test_resume_refuses_a_foreign_output(input_file: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    mine(input_file, out, config_for(tokenizer_dir))
    with pytest.raises(ValueError, match="--seed.*--overwrite"):
        mine(input_file, out, config_for(tokenizer_dir, seed=1))
    lines = out.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"query": "', b'"query": "X')
    out.write_bytes(b"\n".join(lines[:CHUNK + 1]))
    with pytest.raises(ValueError, match="line 3 is not what input line 3 becomes"):
        mine(input_file, out, config_for(tokenizer_dir))
    state_path_of(out).unlink()
    with pytest.raises(ValueError, match="missing"):
        mine(input_file, out, config_for(tokenizer_dir))
    mine(input_file, out, config_for(tokenizer_dir, seed=1), overwrite=True)
    mine(input_file, tmp_path / "fresh.jsonl", config_for(tokenizer_dir, seed=1))
    assert out.read_bytes() == (tmp_path / "fresh.jsonl").read_bytes()


def test_corpus_files_replace_the_pool(input_file: Path, tokenizer_dir: Path, sample_text_file: Path,
                                       tmp_path: Path) -> None:
    passages = [line for line in sample_text_file.read_text(encoding="utf-8").splitlines()[100:160] if line.strip()]
    (tmp_path / "corpus.txt").write_text("\n".join(passages) + "\n\n", encoding="utf-8")
    report = mine(input_file, tmp_path / "plain.jsonl", config_for(tokenizer_dir), corpus_path=tmp_path / "corpus.txt")
    assert report.pool_size == len(set(passages)) and report.corpus_bad == {"no_text": 1}
    for _, out in valid_pairs(input_file, tmp_path / "plain.jsonl"):
        assert set(out["neg"]) <= set(passages)
    jsonl = [json.dumps({"text": p, "id": i}) for i, p in enumerate(passages)] + ["{oops", json.dumps(passages[0])]
    (tmp_path / "corpus.jsonl").write_text("\n".join(jsonl) + "\n", encoding="utf-8")
    report = mine(input_file, tmp_path / "json.jsonl", config_for(tokenizer_dir), corpus_path=tmp_path / "corpus.jsonl")
    assert report.corpus_bad == {"unreadable": 1} and report.pool_size == len(set(passages))
    assert (tmp_path / "json.jsonl").read_bytes() == (tmp_path / "plain.jsonl").read_bytes()


def test_cli(input_file: Path, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli.jsonl"
    report = main([str(input_file), "--out", str(out), "--model", str(tokenizer_dir), "--method", "bm25",
                   "--num-neg", "5", "--range-start", "2", "--range-end", "30", "--chunk-size", str(CHUNK)])
    assert report.num_mined == NUM_ROWS
    mine(input_file, tmp_path / "api.jsonl", config_for(tokenizer_dir))
    assert out.read_bytes() == (tmp_path / "api.jsonl").read_bytes()
    printed = capsys.readouterr().out
    assert f"{NUM_ROWS + len(BAD_LINES)}/{NUM_ROWS + len(BAD_LINES)} lines" in printed
    assert "bad malformed_json: 1 at line 4" in printed
    with pytest.raises(SystemExit) as exited:
        main([str(input_file), "--out", str(out), "--model", str(tokenizer_dir), "--range-start", "9",
              "--range-end", "9"])
    assert exited.value.code == 2 and "range_start < range_end" in capsys.readouterr().err


def test_lone_surrogates_do_not_crash(tokenizer_dir: Path, tmp_path: Path) -> None:
    # json.loads accepts lone surrogate escapes (backslash-ud800), which no tokenizer or UTF-8 writer takes.
    lines = ['{"query": "Albania", "pos": ["Albania, Algeria"], "note": "\\ud800"}',
             '{"query": "\\ud800 Chad", "pos": ["Chad, Chile"]}', '{"query": "Chile", "pos": ["Chile, China"]}',
             '{"query": "Chad", "pos": ["Chad, Chile", "bad \\udfff"]}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="ascii")
    config = dataclasses.replace(config_for(tokenizer_dir), num_neg=1, range_start=0, range_end=3)
    report = mine(tmp_path / "in.jsonl", tmp_path / "out.jsonl", config)
    # Rows are parsed as make_shards parses them (framework/data/records.py): a lone surrogate in any text
    # makes the row bad (non_utf8), so it is copied through unchanged, as the shards would reject it.
    assert report.bad == {"non_utf8": 2} and report.num_mined == 2 and report.pool_size == 2
    out = (tmp_path / "out.jsonl").read_bytes().decode("utf-8").splitlines()
    assert json.loads(out[0])["note"] == "\ud800" and out[1] == lines[1] and out[3] == lines[3]
    assert "Chile, China" not in json.loads(out[2])["neg"]  # never its positive (BM25: no other shares a token)


@pytest.mark.parametrize("changes, match", [
    ({"method": "colbert"}, "dense"), ({"num_neg": 0}, "at least one"), ({"range_start": -1}, "0 <= range_start"),
    ({"range_end": 4}, "fewer than num_neg"), ({"chunk_size": 0}, "positive"),
])
def test_config_errors_name_the_fix(tokenizer_dir: Path, changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(config_for(tokenizer_dir), **changes)


def test_rows_are_parsed_as_make_shards_parses_them() -> None:
    """Mining parses rows with framework/data/records.py: the same aliases, checks and reasons as the shards
    (before, tools/mining/rows.py parsed them again: it refused pair aliases and kept rows the shards reject)."""
    from framework.data.records import REJECT_REASONS
    from tools.mining.config import BAD_REASONS, BadRow
    from tools.mining.rows import parse_row, render_row

    row, record = parse_row(b'{"text_a": "a query", "text_b": "its passage", "negative": ["old"], "id": 3}')
    assert (record.query, record.pos, record.neg) == ("a query", ("its passage",), ("old",))
    rendered = json.loads(render_row(row, ["mined"], MiningReport()))
    assert rendered == {"text_a": "a query", "text_b": "its passage", "negative": ["mined"], "id": 3}
    with pytest.raises(BadRow) as caught:
        parse_row(b'{"query": "q", "pos": ["p"], "pos_scores": [1.0, 2.0]}')
    assert caught.value.reason == "scores_length_mismatch" and set(BAD_REASONS) == set(REJECT_REASONS)
    long = "x" * 200_000  # make_shards cuts texts to max_chars; mining writes them back whole
    assert parse_row(json.dumps({"query": "q", "pos": [long]}).encode())[1].pos == (long,)


# --- The choosing rules on crafted rankings ----------------------------------------------------------------

def test_window_rules_count_a_candidate_under_the_first_rule_that_drops_it(tokenizer_dir: Path) -> None:
    config = config_for(tokenizer_dir, num_neg=2, range_start=2, range_end=8,
                        rules=ScoreRules(max_score=0.9, min_score=0.2))
    ids_K = np.array([10, 11, 12, 13, 14, 15, 16, MISSING_ID])
    scores_K = np.array([0.99, 0.8, 0.95, 0.7, 0.5, 0.1, 0.3, 0.0], dtype=np.float32)
    found = window_candidates(ids_K, scores_K, exclude={10, 13}, config=config)
    # Rank 0 is a positive, before range_start and above max_score: it counts once, as a positive.
    assert found.ids_C.tolist() == [14, 16] and found.scores_C.tolist() == pytest.approx([0.5, 0.3])
    assert found.counts.candidates == 7 and found.counts.eligible == 2  # MISSING_ID is no candidate
    assert found.counts.removed == {"positive": 2, "rank_window": 1, "max_score": 1, "min_score": 1,
                                    "absolute_margin": 0, "relative_margin": 0}


@pytest.mark.parametrize("positives, rules, limits", [
    ([0.8, 0.9], ScoreRules(absolute_margin=0.1), {"absolute_margin": 0.7}),  # the weakest positive counts
    ([0.8], ScoreRules(relative_margin=0.05), {"relative_margin": 0.76}),     # pos x (1 - margin)
    ([-2.0], ScoreRules(relative_margin=0.1), {"relative_margin": -2.2}),     # a logit below 0: still below pos
    ([3.0], ScoreRules(absolute_margin=0.0, relative_margin=0.5), {"absolute_margin": 3.0, "relative_margin": 1.5}),
    ([3.0], ScoreRules(max_score=5.0), {}),
])
def test_margin_limits_are_relative_to_the_weakest_positive(positives: list[float], rules: ScoreRules,
                                                            limits: dict[str, float]) -> None:
    assert margin_limits(np.array(positives, dtype=np.float32), rules) == pytest.approx(limits)


def test_margins_drop_what_scores_too_close_to_the_positive(tokenizer_dir: Path) -> None:
    config = config_for(tokenizer_dir, num_neg=2, range_start=0, range_end=6)
    found = window_candidates(np.arange(5), np.array([0.85, 0.75, 0.7, 0.5, 0.79], dtype=np.float32), set(), config)
    # absolute limit 0.8 - 0.02 = 0.78 drops 0.85 and 0.79; relative limit 0.8 x 0.9 = 0.72 drops 0.75 too.
    rules = ScoreRules(absolute_margin=0.02, relative_margin=0.1)
    kept = apply_margins(found, np.array([0.8], dtype=np.float32), rules)
    assert kept.ids_C.tolist() == [2, 3]
    assert (kept.counts.removed["absolute_margin"], kept.counts.removed["relative_margin"]) == (2, 1)
    chosen = draw(kept, config, line=1)  # no more than num_neg left: all of them, nothing drawn
    assert chosen.ids_C.tolist() == [2, 3] and (chosen.counts.chosen, chosen.counts.short_rows) == (2, 0)


def test_the_draw_is_seeded_by_the_line_and_keeps_rank_order(tokenizer_dir: Path) -> None:
    config = config_for(tokenizer_dir, num_neg=4, range_start=0, range_end=20)

    def drawn(line: int, seed: int = 0) -> list[int]:
        found = window_candidates(np.arange(20) + 100, np.linspace(1, 0, 20, dtype=np.float32), set(), config)
        return draw(found, dataclasses.replace(config, seed=seed), line).ids_C.tolist()

    assert drawn(7) == drawn(7) == sorted(drawn(7)) and len(set(drawn(7))) == 4
    assert len({tuple(drawn(line)) for line in range(1, 9)}) > 4 and drawn(7) != drawn(7, seed=1)
    short = draw(window_candidates(np.arange(3), np.zeros(3, np.float32), {1}, config), config, 1)
    assert short.ids_C.tolist() == [0, 2] and (short.counts.chosen, short.counts.short_rows) == (2, 1)


@pytest.mark.parametrize("changes, match", [
    ({"relative_margin": 1.0}, r"\[0, 1\)"), ({"absolute_margin": -0.1}, ">= 0"),
    ({"max_score": float("nan")}, "finite"),
    ({"min_score": 2.0, "max_score": 1.0}, "window is empty"),
])
def test_score_rule_errors_name_the_fix(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ScoreRules(**changes)


def test_rescoring_without_a_margin_or_scores_is_refused(tokenizer_dir: Path) -> None:
    with pytest.raises(ValueError, match="--relative-margin, or --output-scores"):
        config_for(tokenizer_dir, rescore_with=str(tokenizer_dir))
    with pytest.raises(ValueError, match="scale"):
        config_for(tokenizer_dir, output_scores=True, scale=0.0)


# --- The rules in whole runs, against independent computations ---------------------------------------------

SURE = 1e-4  # a score this close to a threshold is float noise away from it: counted as either side


def expected_counts(input_file: Path, ranked, score_pos, rules: ScoreRules, range_start: int, range_end: int,
                    sure: float = SURE) -> tuple[dict[str, dict[str, int]], dict[str, set[str]], int]:
    """Source -> rule -> removed, row query -> eligible texts, and how many candidates lie within SURE of
    the threshold that decides them (`sure`), recomputed from `ranked(query) -> [(text, choosing score)]` and
    `score_pos(query, positives) -> scores`, by the rules' definitions."""
    counts: dict[str, dict[str, int]] = {}
    eligible: dict[str, set[str]] = {}
    near = 0
    for line, raw in enumerate(input_lines(input_file), start=1):
        if line in BAD_LINES:
            continue
        row = json.loads(raw)
        forbidden = {p.strip() for p in row["pos"]} | {row["query"].strip()}
        weakest = float(np.min(score_pos(row["query"], row["pos"])))
        limits = {"absolute_margin": None if rules.absolute_margin is None else weakest - rules.absolute_margin,
                  "relative_margin": None if rules.relative_margin is None else
                  weakest - rules.relative_margin * abs(weakest)}
        removed = counts.setdefault(row.get("source", "train"), dict.fromkeys(RULES, 0))
        eligible[row["query"]] = set()
        for rank, (text, retrieved, choosing) in enumerate(ranked(row)[:range_end]):
            if text.strip() in forbidden:
                removed["positive"] += 1
                continue
            if rank < range_start:
                removed["rank_window"] += 1
                continue
            checks = [("max_score", retrieved, rules.max_score, 1), ("min_score", retrieved, rules.min_score, -1),
                      *((rule, choosing, limit, 1) for rule, limit in limits.items())]
            rule = None
            for name, score, threshold, sign in checks:
                if threshold is None:
                    continue
                near += abs(score - threshold) < sure
                if sign * (score - threshold) > 0:
                    rule = name
                    break
            if rule is None:
                eligible[row["query"]].add(text)
            else:
                removed[rule] += 1
    return counts, eligible, near


def bm25_of(input_file: Path, tokenizer_dir: Path):
    """An independent BM25 over the default pool: ranked(row) -> [(text, score, score)], score_pos."""
    pool = pool_of(input_file)
    index = BM25Index.build(pool, AutoTokenizer.from_pretrained(str(tokenizer_dir)),
                            BM25Config(max_doc_length=512, max_query_length=512))
    by_text = {text.strip(): i for i, text in enumerate(pool)}

    def scores_of(query: str) -> dict[int, float]:
        scores_K, ids_K = index.search([query], len(pool))
        return {int(i): float(s) for i, s in zip(ids_K[0], scores_K[0]) if i != MISSING_ID}

    def ranked(row: dict) -> list[tuple[str, float, float]]:
        scores_K, ids_K = index.search([row["query"]], 30)
        return [(pool[i], float(s), float(s)) for i, s in zip(ids_K[0], scores_K[0]) if i != MISSING_ID]

    def score_pos(query: str, positives: list[str]) -> list[float]:
        found = scores_of(query)  # every positive is in the default pool; one sharing no token scores 0
        return [found.get(by_text[p.strip()], 0.0) for p in positives]

    return ranked, score_pos, scores_of, by_text


def test_bm25_score_rules_and_written_scores_match_an_independent_bm25(input_file: Path, tokenizer_dir: Path,
                                                                       tmp_path: Path) -> None:
    rules = ScoreRules(max_score=6.0, min_score=0.3, absolute_margin=0.5, relative_margin=0.5)
    config = config_for(tokenizer_dir, rules=rules, output_scores=True, scale=2.0)
    report = mine(input_file, tmp_path / "out.jsonl", config)
    ranked, score_pos, scores_of, by_text = bm25_of(input_file, tokenizer_dir)
    counts, eligible, near = expected_counts(input_file, ranked, score_pos, rules, 2, 30)
    assert near == 0  # no candidate of this input sits on a threshold, so the counts must match exactly
    assert {name: c.removed for name, c in report.sources.items()} == counts
    assert all(count > 0 for rule, count in report.overall().removed.items()), report.overall().removed
    assert set(report.sources) == {"alpha", "train"} and report.num_scores_written == NUM_ROWS
    for row, out in valid_pairs(input_file, tmp_path / "out.jsonl"):
        assert set(out["neg"]) <= eligible[row["query"]]
        assert len(out["neg"]) == min(5, len(eligible[row["query"]]))
        found = scores_of(row["query"])
        assert out["neg_scores"] == pytest.approx([2 * found[by_text[t.strip()]] for t in out["neg"]], rel=1e-5)
        assert out["pos_scores"] == pytest.approx([2 * s for s in score_pos(row["query"], row["pos"])], rel=1e-5)
    saved = json.loads(report_path_of(tmp_path / "out.jsonl").read_text(encoding="utf-8"))
    assert saved["sources"]["alpha"]["removed"] == counts["alpha"] and saved["overall"]["rows"] == NUM_ROWS
    # The side files are not rows: make_shards, given the folder, reads the mined file alone.
    assert expand_inputs([str(tmp_path)]) == [str(tmp_path / "out.jsonl")]


@pytest.fixture(scope="module")
def cross_encoder_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random one-logit XLM-R cross-encoder of the tiny shape (as tests/test_teacher.py builds); read-only."""
    return build_cross_encoder(tokenizer_dir, tmp_path_factory.mktemp("cross_encoder"), seed=0)


@pytest.mark.slow  # ~6 s on the loaded 2-core machine (two BM25 indexes, the teacher twice); the resume test
# below runs the rescoring path in the fast tier
def test_cross_encoder_rescoring_chooses_by_the_teachers_scores(input_file: Path, tokenizer_dir: Path,
                                                                 cross_encoder_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    # The random teacher's scores spread over ~1e-4 around 0.027, so a 0.1 % relative margin drops about half.
    out = tmp_path / "cli.jsonl"
    report = main([str(input_file), "--out", str(out), "--model", str(tokenizer_dir), "--method", "bm25",
                   "--num-neg", "5", "--range-start", "2", "--range-end", "30", "--chunk-size", str(CHUNK),
                   "--max-score", "15", "--relative-margin", "0.001", "--rescore-with", str(cross_encoder_dir),
                   "--rescore-max-length", "128", "--output-scores"])
    assert "relative_margin" in capsys.readouterr().out
    teacher = load_teacher(CrossEncoderConfig(str(cross_encoder_dir), max_length=128))
    ranked_bm25, _, _, _ = bm25_of(input_file, tokenizer_dir)
    rows = [json.loads(raw) for line, raw in enumerate(input_lines(input_file), 1) if line not in BAD_LINES]
    # Every pair the checks need, scored by the teacher in one call.
    pairs = list(dict.fromkeys(ScorePair(row["query"], text) for row in rows
                               for text in [*row["pos"], *(t for t, _, _ in ranked_bm25(row))]))
    teacher_score = dict(zip(pairs, teacher.score(pairs).tolist()))

    def ranked(row: dict) -> list[tuple[str, float, float]]:
        return [(text, retrieved, teacher_score[ScorePair(row["query"], text)])
                for text, retrieved, _ in ranked_bm25(row)]

    def score_pos(query: str, positives: list[str]) -> np.ndarray:
        return np.array([teacher_score[ScorePair(query, p)] for p in positives])

    rules = ScoreRules(max_score=15.0, relative_margin=0.001)
    # Scored again here in other batches, a pair's score may move by float noise: the margin's count must
    # match up to the candidates that lie that close to their limit.
    counts, eligible, near = expected_counts(input_file, ranked, score_pos, rules, 2, 30, sure=1e-6)
    assert near < 40
    for name, removed in counts.items():
        got = report.sources[name].removed
        assert {r: got[r] for r in RULES if r != "relative_margin"} == {
            r: removed[r] for r in RULES if r != "relative_margin"}
        assert abs(got["relative_margin"] - removed["relative_margin"]) <= near
    total = report.overall()
    assert 0.2 < total.removed["relative_margin"] / (total.removed["relative_margin"] + total.eligible) < 0.8
    assert report.num_teacher_pairs == sum(len(json.loads(raw)["pos"]) for line, raw in
                                           enumerate(input_lines(input_file), 1) if line not in BAD_LINES) + \
        total.removed["relative_margin"] + total.eligible
    for row, out_row in valid_pairs(input_file, out):
        pos_C = score_pos(row["query"], row["pos"])
        assert out_row["pos_scores"] == pytest.approx(pos_C.tolist(), abs=1e-6)
        neg_C = [teacher_score[ScorePair(row["query"], text)] for text in out_row["neg"]]
        assert out_row["neg_scores"] == pytest.approx(neg_C, abs=1e-6)
        limit = float(pos_C.min()) * (1 - 0.001)
        assert all(score <= limit + 1e-6 for score in out_row["neg_scores"]), row["query"]
        assert set(out_row["neg"]) <= {text for text, retrieved, _ in ranked_bm25(row)[2:30] if retrieved <= 15}
    assert MiningReport.load(report_path_of(out)).to_json() == report.to_json()


def test_rescored_runs_resume_and_merge_byte_identical(input_file: Path, tokenizer_dir: Path,
                                                       cross_encoder_dir: Path, tmp_path: Path) -> None:
    config = config_for(tokenizer_dir, rules=ScoreRules(relative_margin=0.001), rescore_with=str(cross_encoder_dir),
                        rescore_max_length=128, output_scores=True)
    complete = tmp_path / "complete.jsonl"
    full_report = mine(input_file, complete, config).to_json()
    full = complete.read_bytes()
    out = tmp_path / "resumed.jsonl"
    out.write_bytes(full[:cut_points(full)[3]])  # died mid-chunk, after one chunk's counts
    shutil.copyfile(state_path_of(complete), state_path_of(out))
    shutil.copyfile(counts_path_of(complete), counts_path_of(out))
    resumed = mine(input_file, out, config).to_json()
    assert out.read_bytes() == full and resumed["num_resumed"] == CHUNK
    assert {**resumed, "num_resumed": 0, "num_teacher_pairs": 0} == {**full_report, "num_resumed": 0,
                                                                    "num_teacher_pairs": 0}
    split = tmp_path / "split.jsonl"
    for part in range(3):
        mine(input_file, split, config, part=part, num_parts=3)
    merged = merge_mined(split, 3).to_json()
    assert split.read_bytes() == full and merged == full_report
    assert mine(input_file, split, config).num_resumed == NUM_ROWS + len(BAD_LINES)  # found finished


@pytest.mark.slurm
def test_slurm_array_mines_the_parts_and_the_dependent_merge_joins_them(input_file: Path, tokenizer_dir: Path,
                                                                       tmp_path: Path) -> None:
    import sys

    from tests.slurm_cluster import LocalSlurm, ensure_installed

    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    repo = Path(__file__).resolve().parents[1]
    cluster, out = LocalSlurm(tmp_path / "slurm"), tmp_path / "mined.jsonl"
    env = {"M3_REPO": str(repo), **({"M3_VENV": sys.prefix} if sys.prefix != sys.base_prefix else {})}
    args = [str(input_file), "--out", str(out), "--model", str(tokenizer_dir), "--method", "bm25", "--num-neg", "5",
            "--range-start", "2", "--range-end", "30", "--chunk-size", str(CHUNK), "--absolute-margin", "0.5",
            "--output-scores"]
    try:
        cluster.start()
        # The test node has no GPU: --gpus=0 cancels the script's GPU request.
        array_id = cluster.sbatch(["--array=0-1", "--gpus=0", "--cpus-per-task=1", f"--output={tmp_path}/part-%a.out",
                                   str(repo / "slurm" / "mine_hard_negatives.sbatch"), *args], env=env, cwd=tmp_path)
        merge_id = cluster.sbatch([f"--dependency=afterok:{array_id}", f"--output={tmp_path}/merge.out",
                                   str(repo / "slurm" / "merge_mined.sbatch"), "--out", str(out), "--num-parts", "2"],
                                  env=env, cwd=tmp_path)
        states = cluster.wait([array_id, merge_id], timeout=300)
        logs = "".join(log.read_text(errors="replace") for log in sorted(tmp_path.glob("*.out")))
        assert set(states.values()) == {"COMPLETED"}, f"{states}\n{logs}\n{cluster.daemon_logs()}"
    finally:
        cluster.stop()
    assert f"merged 2 parts -> {out}" in logs and "absolute_margin" in logs
    config = config_for(tokenizer_dir, rules=ScoreRules(absolute_margin=0.5), output_scores=True)
    single = mine(input_file, tmp_path / "single.jsonl", config)
    assert out.read_bytes() == (tmp_path / "single.jsonl").read_bytes()
    assert MiningReport.load(report_path_of(out)).sources.keys() == single.sources.keys()


@pytest.mark.slow  # two rescored runs and the teacher again: ~5 s on the loaded machine
def test_the_rescoring_teacher_sees_the_prompts(input_file: Path, tokenizer_dir: Path, cross_encoder_dir: Path,
                                                tmp_path: Path) -> None:
    """With a --source-rules file, the teacher scores what training will read (prefixes, a row's own prompt),
    as tools/score_pairs.py does; the rows are written back with their own texts."""
    from framework.data.sources import SourceRules

    rules = {"*": SourceRules(query_prefix="query: ", passage_prefix="passage: "),
             "alpha": SourceRules(query_prefix="Find it: ", passage_prefix="")}
    options = dict(rescore_with=str(cross_encoder_dir), rescore_max_length=128, output_scores=True,
                   rules=ScoreRules(relative_margin=0.001))
    mine(input_file, tmp_path / "prompted.jsonl", config_for(tokenizer_dir, **options, source_rules=rules))
    mine(input_file, tmp_path / "plain.jsonl", config_for(tokenizer_dir, **options))
    teacher = load_teacher(CrossEncoderConfig(str(cross_encoder_dir), max_length=128))
    prompted = valid_pairs(input_file, tmp_path / "prompted.jsonl")
    plain = valid_pairs(input_file, tmp_path / "plain.jsonl")
    pairs = [ScorePair(("Find it: " if row.get("source") == "alpha" else "query: ") + row["query"],
                       ("" if row.get("source") == "alpha" else "passage: ") + text)
             for row, _ in prompted for text in row["pos"]]
    written = [score for _, out in prompted for score in out["pos_scores"]]
    assert written == pytest.approx(teacher.score(pairs).tolist(), abs=1e-6)
    assert written != pytest.approx([s for _, out in plain for s in out["pos_scores"]], abs=1e-7)
    assert [out["query"] for _, out in prompted] == [row["query"] for row, _ in prompted]
