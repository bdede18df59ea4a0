"""The long-document task builder (framework/evaluate/long_docs.py) and its DDTP tool (tools/build_long_docs.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework.evaluate import load_benchmark
from framework.evaluate.long_docs import SEPARATOR, LongDocConfig, Needle, build_long_docs, write_beir_task
from tools.build_long_docs import main as build_long_docs_main


def word_count(texts: list[str]) -> list[int]:
    """A transparent token counter for the unit tests: one token per whitespace-separated word."""
    return [len(t.split()) for t in texts]


def make_inputs(num_needles: int = 12, num_fillers: int = 80) -> tuple[list[Needle], list[str]]:
    needles = [Needle(f"q{i:02d}", f"query {i}", " ".join(f"needle{i}-w{j}" for j in range(30 + i)), "xx")
               for i in range(num_needles)]
    fillers = [" ".join(f"filler{i}-w{j}" for j in range(20 + (7 * i) % 90)) for i in range(num_fillers)]
    return needles, fillers


def test_documents_hold_their_needle_deep_inside_within_the_length_bounds() -> None:
    needles, fillers = make_inputs()
    config = LongDocConfig(min_tokens=400, max_tokens=1200, min_depth=0.3, max_depth=0.8, seed=1)
    docs = build_long_docs(needles, fillers, word_count, config)
    assert [d.query_id for d in docs] == [n.query_id for n in needles]
    for needle, doc in zip(needles, docs):
        parts = doc.text.split(SEPARATOR)
        assert parts.count(needle.text) == 1
        assert not any(other.text in doc.text for other in needles if other is not needle)
        assert len(set(parts)) == len(parts), "a filler is used twice in one document"
        assert doc.tokens == sum(word_count(parts))
        assert config.min_tokens <= doc.tokens <= config.max_tokens
        before = parts[:parts.index(needle.text)]
        assert doc.needle_offset == sum(word_count(before))
        # The needle starts at a depth of at least min_depth of the shortest possible target.
        assert doc.needle_offset >= int(config.min_depth * config.min_tokens)
    assert len({d.needle_offset for d in docs}) > len(docs) // 2, "depths should vary between documents"


def test_a_document_depends_on_its_query_and_the_seed_only() -> None:
    needles, fillers = make_inputs()
    config = LongDocConfig(min_tokens=300, max_tokens=900)
    full = build_long_docs(needles, fillers, word_count, config)
    alone = build_long_docs(needles[3:4], fillers, word_count, config)
    assert alone[0] == full[3]
    reseeded = build_long_docs(needles, fillers, word_count, LongDocConfig(min_tokens=300, max_tokens=900, seed=5))
    assert [d.text for d in reseeded] != [d.text for d in full]


@pytest.mark.parametrize("case, message", [
    ("few_fillers", "only"), ("needle_too_long", "max_tokens"), ("needle_is_filler", "disjoint split"),
    ("repeated_id", "repeat")])
def test_bad_input_is_refused_with_the_fix(case: str, message: str) -> None:
    needles, fillers = make_inputs()
    config = LongDocConfig(min_tokens=400, max_tokens=1200)
    if case == "few_fillers":
        fillers = fillers[:3]
    elif case == "needle_too_long":
        config = LongDocConfig(min_tokens=10, max_tokens=35)
    elif case == "needle_is_filler":
        fillers = fillers + [needles[2].text]
    else:
        needles = needles + [needles[0]]
    with pytest.raises(ValueError, match=message):
        build_long_docs(needles, fillers, word_count, config)


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="min_tokens"):
        LongDocConfig(min_tokens=500, max_tokens=100)
    with pytest.raises(ValueError, match="depth"):
        LongDocConfig(min_depth=0.9, max_depth=0.2)


def test_written_task_loads_as_a_beir_folder(tmp_path: Path) -> None:
    needles, fillers = make_inputs(num_needles=5)
    docs = build_long_docs(needles, fillers, word_count, LongDocConfig(min_tokens=200, max_tokens=600))
    folder = write_beir_task(tmp_path / "xx", needles, docs)
    bench = load_benchmark(tmp_path)
    (task,) = bench.tasks
    assert task.name == "xx"
    assert task.query_texts == [n.query for n in needles]
    assert task.qrels == {n.query_id: {"d" + n.query_id: 1} for n in needles}
    assert dict(zip(task.corpus_ids, task.corpus_texts)) == {d.doc_id: d.text for d in docs}
    meta = [json.loads(line) for line in (folder / "needles.jsonl").read_text().splitlines()]
    assert [m["needle_offset"] for m in meta] == [d.needle_offset for d in docs]


def test_tool_on_ddtp_rows_with_a_real_tokenizer(tmp_path: Path, tokenizer_dir: Path) -> None:
    """tools/build_long_docs.py on the shipped sample's rows: test needles, dev fillers, the model's token counts."""
    ddtp = Path(__file__).resolve().parents[1] / "data" / "ddtp"
    out = tmp_path / "long"
    build_long_docs_main(["--ddtp", str(ddtp), "--tokenizer", str(tokenizer_dir), "--out", str(out),
                          "--languages", "de,ja", "--queries", "6", "--min-tokens", "300", "--max-tokens", "800"])
    stats = json.loads((out / "stats.json").read_text())
    bench = load_benchmark(out)
    assert [t.name for t in bench.tasks] == ["de", "ja"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    for task in bench.tasks:
        assert len(task.query_ids) == 6 == stats["languages"][task.name]["queries"]
        lengths = [len(ids) for ids in tokenizer(task.corpus_texts, add_special_tokens=False)["input_ids"]]
        # Separators add a few tokens to the counted parts; the bounds hold up to them.
        assert min(lengths) >= 300 and max(lengths) <= 800 + 2 * 40
