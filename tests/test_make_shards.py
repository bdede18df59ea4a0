"""Shard preparation: record validation, tools/make_shards.py, manifests and merge, on real tar shards."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from transformers import AutoTokenizer

from framework.data.buckets import DEFAULT_EDGES, PAPER_EDGES, bucket_of
from framework.data.format import decode_token_ids
from framework.data.manifest import load_manifest, merge_manifests
from framework.data.records import REJECT_REASONS, BadRecord, RecordConfig, normalize_record, parse_record
from tools.make_shards import ErrorBudgetExceeded, ShardConfig, main, make_shards

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_LINES = (REPO_ROOT / "data" / "multilingual_sample.txt").read_text(encoding="utf-8").splitlines()


def good_rows(num: int, offset: int = 0) -> list[dict]:
    """Reference-format rows of real multilingual text; every 5th is a plain pair, every 3rd has a lang."""
    rows = []
    for i in range(offset, offset + num):
        line = SAMPLE_LINES[(7 * i) % len(SAMPLE_LINES)]
        query = ", ".join(line.split(", ")[:2])
        if i % 5 == 0:
            row = {"query": query, "pos": line}
        else:
            row = {"query": query, "pos": [line], "neg": [SAMPLE_LINES[(7 * i + 1) % len(SAMPLE_LINES)],
                                                          SAMPLE_LINES[(7 * i + 2) % len(SAMPLE_LINES)]],
                   "pos_scores": [0.9], "neg_scores": [0.1, 0.2], "type": "normal"}
        if i % 3 == 0:
            row["lang"] = "xx"
        rows.append(row)
    return rows


def write_jsonl(path: Path, lines: list) -> Path:
    """Write dicts as JSON lines, str and bytes as they are; .gz paths are gzip-compressed."""
    data = b"".join((json.dumps(x, ensure_ascii=False).encode() if isinstance(x, dict)
                     else x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def read_samples(manifest) -> dict[str, dict]:
    """Every sample of a manifest's shards, read with webdataset.WebDataset, by key."""
    urls = [str(manifest.shard_path(s)) for s in manifest.shards]
    samples = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        assert sample["__key__"] not in samples, f"duplicate key {sample['__key__']}"
        samples[sample["__key__"]] = sample
    assert len(samples) == manifest.num_samples
    return samples


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def quiet(out_dir: Path, **kwargs) -> ShardConfig:
    return ShardConfig(out_dir=out_dir, progress_seconds=1e9, **kwargs)


# ---------------------------------------------------------------- records


def test_normalize_accepts_reference_rows_and_pair_aliases() -> None:
    row = {"query": "q", "pos": ["p"], "neg": ["n1", "n2"], "pos_scores": [1], "neg_scores": [0.5, 0.25],
           "prompt": "Represent: ", "type": "normal", "source": "msmarco", "lang": "en", "id": 7}
    expected = {k: v for k, v in row.items() if k != "id"} | {"pos_scores": [1.0]}
    assert normalize_record(row).to_json() == expected
    for pair in ({"query": "q", "pos": "p"}, {"query": "q", "passage": "p"}, {"text_a": "q", "text_b": "p"},
                 {"anchor": "q", "positive": "p"}):
        assert normalize_record(pair).to_json() == {"query": "q", "pos": ["p"], "neg": []}
    # Empty negatives are dropped together with their teacher scores, and each drop is counted.
    record = normalize_record({"query": "q", "pos": ["p", " "], "neg": ["", "n", "\t"],
                               "pos_scores": [1, 2], "neg_scores": [3, 4, 5]})
    assert (record.pos, record.pos_scores, record.neg, record.neg_scores) == (("p",), (1.0,), ("n",), (4.0,))
    assert Counter(record.fixes) == {"empty_neg_dropped": 2, "empty_pos_dropped": 1}
    long = normalize_record({"query": "q" * 30, "pos": ["p" * 10, "x" * 31]}, RecordConfig(max_chars=20))
    assert (long.query, long.pos) == ("q" * 20, ("p" * 10, "x" * 20)) and long.fixes == ("too_long", "too_long")


@pytest.mark.parametrize("payload, reason", [
    (b"\xff{\"query\": 1}", "non_utf8"),
    (b"  ", "blank_line"),
    (b"{\"query\": \"q\", \"pos\": [\"p\"]", "malformed_json"),
    (b"[1, 2]", "not_an_object"),
    (b"{\"pos\": [\"p\"]}", "missing_field"),
    (b"{\"query\": \"q\"}", "missing_field"),
    (b"{\"query\": \"q\", \"text_a\": \"q\", \"pos\": \"p\"}", "conflicting_fields"),
    (b"{\"query\": \"q\", \"pos\": 5}", "wrong_type"),
    (b"{\"query\": \"q\", \"pos\": [\"p\", 3]}", "wrong_type"),
    (b"{\"query\": \"q\", \"pos\": [\"p\"], \"prompt\": 1}", "wrong_type"),
    (b"{\"query\": \"q\", \"pos\": [\"p\"], \"pos_scores\": [true]}", "wrong_type"),
    (b"{\"query\": \" \", \"pos\": [\"p\"]}", "empty_text"),
    (b"{\"query\": \"q\", \"pos\": [\"\", \" \"]}", "no_positive"),
    (b"{\"query\": \"q\", \"pos\": []}", "no_positive"),
    (b"{\"query\": \"q\", \"pos\": [\"p\"], \"neg\": [\"n\"], \"neg_scores\": [1, 2]}", "scores_length_mismatch"),
    (b"{\"query\": \"q\", \"pos\": [\"p\"], \"pos_scores\": [NaN]}", "bad_score"),
    (b"{\"query\": \"q\\ud800\", \"pos\": [\"p\"]}", "non_utf8"),
    (b"{\"query\": \"q\", \"pos\": [\"p\"], \"source\": \"a.b\"}", "bad_source"),
])
def test_bad_records_raise_their_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(BadRecord) as caught:
        parse_record(payload)
    assert caught.value.reason == reason and reason in REJECT_REASONS


# ---------------------------------------------------------------- make_shards


def test_plain_gz_directory_and_glob_inputs(tmp_path: Path) -> None:
    rows_a, rows_b = good_rows(9), good_rows(6, offset=100)
    write_jsonl(tmp_path / "in" / "alpha.jsonl", rows_a)
    write_jsonl(tmp_path / "in" / "sub" / "beta.v2.jsonl.gz", rows_b)
    (tmp_path / "in" / "notes.txt").write_text("not an input")
    by_dir = make_shards([tmp_path / "in"], quiet(tmp_path / "by_dir"))
    by_glob = make_shards([str(tmp_path / "in" / "**" / "*.jsonl*")], quiet(tmp_path / "by_glob"))
    assert tree_bytes(tmp_path / "by_dir") == tree_bytes(tmp_path / "by_glob")

    assert by_dir.samples_by_source() == {"alpha": 9, "beta_v2": 6}
    assert by_dir.length_edges is None and {s.bucket for s in by_dir.shards} == {0}
    samples = read_samples(load_manifest(tmp_path / "by_dir" / "manifest.json"))
    assert set(samples["alpha/00000/0000000000"]) == {"__key__", "__url__", "__local_path__", "json"}
    for source, rows in (("alpha", rows_a), ("beta_v2", rows_b)):
        for index, row in enumerate(rows):
            stored = json.loads(samples[f"{source}/00000/{index:010d}"]["json"])
            assert stored == normalize_record(row).to_json() | {"source": source}


def test_source_and_lang_precedence(tmp_path: Path) -> None:
    rows = [{"query": "q", "pos": "p"}, {"query": "q", "pos": "p", "source": "own", "lang": "de"}]
    write_jsonl(tmp_path / "file.jsonl", rows)
    default = make_shards([tmp_path / "file.jsonl"], quiet(tmp_path / "a"))
    assert default.samples_by_source() == {"file": 1, "own": 1}
    assert {s.source: s.lang for s in default.shards} == {"file": None, "own": "de"}
    forced = make_shards([tmp_path / "file.jsonl"], quiet(tmp_path / "b", source="given", lang="fr"))
    assert forced.samples_by_source() == {"given": 2} and [s.lang for s in forced.shards] == ["fr"]


def test_pretokenized_ids_match_the_tokenizer(tmp_path: Path, tokenizer_dir: Path) -> None:
    short = [{"query": line.split(", ")[0], "pos": line.split(", ")[1]} for line in SAMPLE_LINES[:300:60]]
    rows = good_rows(20) + short
    write_jsonl(tmp_path / "data.jsonl", rows)
    edges, max_length = (12, 24, 40), 40
    manifest = make_shards([tmp_path / "data.jsonl"], quiet(tmp_path / "out", tokenizer=str(tokenizer_dir),
                                                               pretokenize=True, max_length=max_length,
                                                               length_edges=edges))
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    samples = read_samples(manifest)
    bucket_by_path = {s.path: s.bucket for s in manifest.shards}
    num_truncated = 0
    for sample in samples.values():
        record = json.loads(sample["json"])
        texts = [record["query"], *record["pos"], *record["neg"]]
        ids = [a.tolist() for a in decode_token_ids(sample["tok"])]
        assert ids == tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        num_truncated += sum(len(seq) > max_length for seq in tokenizer(texts)["input_ids"])
        shard = Path(sample["__local_path__"]).name
        assert bucket_by_path[shard] == bucket_of(max(map(len, ids)), edges)
    assert num_truncated > 0, "the test data should exercise token truncation"
    assert manifest.fixed.get("truncated_tokens") == num_truncated
    assert sum(manifest.length_counts) == manifest.num_samples == len(rows)
    assert len({s.bucket for s in manifest.shards}) >= 2, "the test data should span several buckets"
    assert manifest.tokenizer.max_length == max_length and manifest.tokenizer.file == "tokenizer.json"
    assert all(s.pretokenized for s in manifest.shards)


def test_output_is_deterministic_across_reruns_and_workers(tmp_path: Path, tokenizer_dir: Path) -> None:
    write_jsonl(tmp_path / "in" / "a.jsonl", good_rows(23) + ["{broken"])
    write_jsonl(tmp_path / "in" / "b.jsonl.gz", good_rows(17, offset=50))
    common = dict(tokenizer=str(tokenizer_dir), pretokenize=True, max_length=32, length_edges=(16, 32),
                  shard_size=4, max_bad_fraction=0.1, chunk_size=3)
    make_shards([tmp_path / "in"], quiet(tmp_path / "first", **common))
    make_shards([tmp_path / "in"], quiet(tmp_path / "again", **common))
    make_shards([tmp_path / "in"], quiet(tmp_path / "workers", num_workers=2, **common))
    first = tree_bytes(tmp_path / "first")
    assert len([name for name in first if name.endswith(".tar")]) >= 6
    assert first == tree_bytes(tmp_path / "again") == tree_bytes(tmp_path / "workers")
    # Two quick runs can fall in the same second, so check the header fields that would differ directly.
    for tar_path in (tmp_path / "first").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            headers = {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tar.getmembers()}
        assert headers == {(0, 0, 0, "m3", "m3", 0o444)}


def test_shards_rotate_by_count_and_size(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", good_rows(10))
    by_count = make_shards([tmp_path / "d.jsonl"], quiet(tmp_path / "count", shard_size=4))
    assert [s.num_samples for s in by_count.shards] == [4, 4, 2]
    by_size = make_shards([tmp_path / "d.jsonl"], quiet(tmp_path / "size", shard_max_bytes=1))
    assert [s.num_samples for s in by_size.shards] == [1] * 10
    assert sorted(read_samples(by_size)) == sorted(read_samples(by_count))


def test_default_edges_are_the_buckets_and_the_cli_can_pick_the_papers(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", good_rows(12))
    default = make_shards([path], quiet(tmp_path / "default", tokenizer=str(tokenizer_dir)))
    assert default.length_edges == DEFAULT_EDGES and default.tokenizer.max_length == DEFAULT_EDGES[-1]
    main([str(path), "--out", str(tmp_path / "paper"), "--tokenizer", str(tokenizer_dir), "--progress-seconds", "1e9",
          "--length-edges", ",".join(map(str, PAPER_EDGES))])
    paper = load_manifest(tmp_path / "paper" / "manifest.json")
    assert paper.length_edges == PAPER_EDGES and sum(paper.length_counts) == paper.num_samples == 12
    assert {s.bucket for s in paper.shards} == {0}, "every test text is under the paper's first edge (500)"


@pytest.mark.parametrize("split", ["lines", "files"])
def test_parts_cover_every_record_once_and_merge_adds_up(tmp_path: Path, tokenizer_dir: Path,
                                                         split: str) -> None:
    for name, offset in (("a", 0), ("b", 40), ("c", 80), ("d", 120)):
        write_jsonl(tmp_path / "in" / f"{name}.jsonl", good_rows(11, offset) + ["not json", ""])
    common = dict(tokenizer=str(tokenizer_dir), max_length=48, length_edges=(16, 48), max_bad_fraction=0.5,
                  split=split, shard_size=5)
    whole = make_shards([tmp_path / "in"], quiet(tmp_path / "whole", **common))
    part_paths = []
    for part in range(3):
        manifest = make_shards([tmp_path / "in"], quiet(tmp_path / "parts", part=part, num_parts=3, **common))
        assert 0 < manifest.num_records < whole.num_records
        part_paths.append(tmp_path / "parts" / f"manifest-part{part:05d}-of-00003.json")
    main(["merge", str(tmp_path / "merged" / "all.json"), *map(str, part_paths)])
    merged = load_manifest(tmp_path / "merged" / "all.json", verify_sha256=True)

    records = lambda m: Counter(s["json"] for s in read_samples(m).values())  # noqa: E731
    assert records(merged) == records(whole)
    for name in ("num_samples", "num_records", "num_rejected", "rejected", "length_counts", "tokenizer"):
        assert getattr(merged, name) == getattr(whole, name), name
    assert merged.num_rejected == 8 and merged.parts == ((0, 3), (1, 3), (2, 3))
    assert [(e.file, e.line) for e in merged.reject_examples] == [(e.file, e.line) for e in whole.reject_examples]


def test_every_bad_record_is_counted_with_file_and_line(tmp_path: Path) -> None:
    lines = [
        {"query": "fine", "pos": ["p"]},                            # 1
        '{"query": "broken", "pos": ["p"]',                         # 2 malformed_json
        {"pos": ["p"], "neg": ["n"]},                               # 3 missing_field
        {"query": "q", "pos": {"text": "p"}},                       # 4 wrong_type
        {"query": "", "pos": ["p"]},                                # 5 empty_text
        b'{"query": "caf\xe9", "pos": ["p"]}',                      # 6 non_utf8 (Latin-1 byte)
        {"query": "q", "pos": ["p"], "pos_scores": [1.0, 2.0]},     # 7 scores_length_mismatch
        {"query": "long", "pos": ["x" * 500], "neg": ["", "n"]},    # 8 kept: too_long, empty_neg_dropped
        "",                                                         # 9 blank_line
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    manifest = make_shards([path], quiet(tmp_path / "out", max_chars=100, max_bad_fraction=1.0))
    assert manifest.rejected == {"malformed_json": 1, "missing_field": 1, "wrong_type": 1, "empty_text": 1,
                                 "non_utf8": 1, "scores_length_mismatch": 1, "blank_line": 1}
    assert [(e.file, e.line, e.reason) for e in manifest.reject_examples] == [
        (str(path), 2, "malformed_json"), (str(path), 3, "missing_field"), (str(path), 4, "wrong_type"),
        (str(path), 5, "empty_text"), (str(path), 6, "non_utf8"), (str(path), 7, "scores_length_mismatch"),
        (str(path), 9, "blank_line")]
    assert manifest.fixed == {"too_long": 1, "empty_neg_dropped": 1}
    assert (manifest.num_records, manifest.num_samples) == (9, 2)
    kept = [json.loads(s["json"]) for s in read_samples(manifest).values()]
    assert [r["query"] for r in kept] == ["fine", "long"]
    assert kept[1]["pos"] == ["x" * 100] and kept[1]["neg"] == ["n"]
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["reject_examples"][0]["detail"].startswith("Expecting")


def test_error_budget_stops_with_a_clear_message_and_keeps_nothing(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", good_rows(8) + ["{oops", "[]", {"query": "q"}])
    with pytest.raises(ErrorBudgetExceeded, match=r"3 of 11 records rejected .*--max-bad-fraction 0\.2.*"
                                                   r"malformed_json 1.*d\.jsonl:9 malformed_json"):
        make_shards([path], quiet(tmp_path / "out", max_bad_fraction=0.2))
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(SystemExit, match="make_shards: 3 of 11 records rejected"):
        main([str(path), "--out", str(tmp_path / "cli"), "--max-bad-fraction", "0.2"])
    assert make_shards([path], quiet(tmp_path / "ok", max_bad_fraction=0.3)).num_samples == 8


def test_load_manifest_rejects_missing_shards_versions_and_edits(tmp_path: Path, tokenizer_dir: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", good_rows(6))
    manifest = make_shards([tmp_path / "d.jsonl"], quiet(tmp_path / "out", shard_size=2))
    path = tmp_path / "out" / "manifest.json"
    original = json.loads(path.read_text())
    for change, error, pattern in (
            (lambda d: d.update(version=99), ValueError, "version 99"),
            (lambda d: d["shards"][0].update(num_samples=5), ValueError, "totals"),
            (lambda d: d.pop("shards"), ValueError, "malformed"),
    ):
        edited = json.loads(json.dumps(original))
        change(edited)
        (tmp_path / "edited.json").write_text(json.dumps(edited))
        with pytest.raises(error, match=pattern):
            load_manifest(tmp_path / "edited.json")
    (tmp_path / "out" / manifest.shards[1].path).unlink()
    with pytest.raises(FileNotFoundError, match=manifest.shards[1].path):
        load_manifest(path)


def test_merge_refuses_mismatched_or_repeated_manifests(tmp_path: Path, tokenizer_dir: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", good_rows(4))
    make_shards([tmp_path / "d.jsonl"], quiet(tmp_path / "plain"))
    make_shards([tmp_path / "d.jsonl"], quiet(tmp_path / "tok", tokenizer=str(tokenizer_dir)))
    plain, tok = tmp_path / "plain" / "manifest.json", tmp_path / "tok" / "manifest.json"
    with pytest.raises(ValueError, match="tokenizer differ"):
        merge_manifests([plain, tok], tmp_path / "m.json")
    with pytest.raises(ValueError, match="listed by two"):
        merge_manifests([plain, plain], tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(pretokenize=True), "need a tokenizer"),
    (dict(tokenizer="tok", max_length=9000), "max_length=9000"),
    (dict(tokenizer="tok", length_edges=(100, 50)), "increasing"),
    (dict(part=3, num_parts=3), "part=3"),
    (dict(source="a.b"), "source 'a.b'"),
    (dict(split="bytes"), "split="),
])
def test_config_errors_name_the_fix(tmp_path: Path, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ShardConfig(out_dir=tmp_path, **kwargs)


def test_cli_help_and_input_errors(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "make_shards.py"), "--help"],
                            capture_output=True, text=True, check=True)
    assert "--num-parts" in result.stdout and "merge" in result.stdout
    with pytest.raises(SystemExit, match="does not exist"):
        main([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="matches no files"):
        main([str(tmp_path / "*.jsonl"), "--out", str(tmp_path / "out")])


# ---------------------------------------------------------------- plain documents (--kind text)


def test_text_documents_from_txt_and_jsonl(tmp_path: Path, tokenizer_dir: Path) -> None:
    docs = [", ".join(line.split(", ")[:1 + i % 6]) for i, line in enumerate(SAMPLE_LINES[:40])]
    (tmp_path / "in").mkdir()
    # Blank lines of a .txt file separate documents: they are not records.
    (tmp_path / "in" / "web.txt").write_text("\n".join(docs[:20]) + "\n\n \n" + "\n".join(docs[20:25]) + "\n")
    write_jsonl(tmp_path / "in" / "wudao.jsonl.gz", [{"content": d, "lang": "zh"} for d in docs[25:]]
                + ["{broken", {"title": "no text"}])
    common = dict(tokenizer=str(tokenizer_dir), pretokenize=True, max_length=40, length_edges=(12, 40),
                  max_bad_fraction=0.1)
    manifest = make_shards([tmp_path / "in"], quiet(tmp_path / "out", kind="text", **common))
    assert manifest.samples_by_source() == {"web": 25, "wudao": 15}
    assert (manifest.num_records, manifest.rejected) == (42, {"malformed_json": 1, "missing_field": 1})
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    bucket_by_path = {s.path: s.bucket for s in manifest.shards}
    lengths = []
    for key, sample in read_samples(manifest).items():
        source, _, index = key.split("/")
        text = docs[int(index) + (25 if source == "wudao" else 0)]
        lang = {"lang": "zh"} if source == "wudao" else {}
        assert json.loads(sample["json"]) == {"text": text, "source": source} | lang
        (ids,) = decode_token_ids(sample["tok"])
        assert ids.tolist() == tokenizer(text, truncation=True, max_length=40)["input_ids"]
        assert bucket_by_path[Path(sample["__local_path__"]).name] == bucket_of(len(ids), (12, 40))
        lengths.append(len(ids))
    # The histogram is over document lengths, in the pair manifests' format.
    assert list(manifest.length_counts) == [sum(n <= 12 for n in lengths), sum(n > 12 for n in lengths)]
    assert all(manifest.length_counts) and manifest.fixed.get("truncated_tokens")
    # Given as files, the same inputs are recognised as documents without --kind.
    auto = make_shards([str(tmp_path / "in" / "web.txt"), str(tmp_path / "in" / "wudao.jsonl.gz")],
                       quiet(tmp_path / "auto", **common))
    assert tree_bytes(tmp_path / "auto") == tree_bytes(tmp_path / "out") and auto.num_samples == 40


def test_text_kind_detection_and_mixed_inputs(tmp_path: Path) -> None:
    pairs = write_jsonl(tmp_path / "in" / "pairs.jsonl", good_rows(3))
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": "one document"}, {"text": "another"}])
    (tmp_path / "in" / "notes.txt").write_text("a note\n")
    # A directory's .txt files are documents only with --kind text: pairs stay pairs by default.
    assert make_shards([tmp_path / "in"], quiet(tmp_path / "a")).num_samples == 3
    assert make_shards([texts], quiet(tmp_path / "b")).samples_by_source() == {"texts": 2}
    with pytest.raises(ValueError, match=r"mix query/passage pairs .*pairs\.jsonl.* and plain documents .*notes\.txt"):
        make_shards([tmp_path / "in" / "notes.txt", pairs], quiet(tmp_path / "c"))
    with pytest.raises(ErrorBudgetExceeded, match="missing_field 3"):
        make_shards([pairs], quiet(tmp_path / "d", kind="text"))
    main([str(tmp_path / "in"), "--out", str(tmp_path / "e"), "--kind", "text", "--max-bad-fraction", "1",
          "--progress-seconds", "1e9"])
    mixed = load_manifest(tmp_path / "e" / "manifest.json")
    assert mixed.samples_by_source() == {"notes": 1} and mixed.rejected == {"missing_field": 3}
