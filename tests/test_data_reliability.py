"""Data failures a long run meets (issue 16): truncated shards, corrupt token ids, damaged or empty
shard sets, duplicates, repeated negatives, undecodable members. Real tar shards in a temp dir."""
from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from transformers import AutoTokenizer

from framework.data.format import encode_token_ids, sample_key
from framework.data.manifest import Manifest, load_manifest
from framework.data.plan import ShardRef
from framework.data.records import validate_record
from framework.data.stream import PairStream, ResumableLoader, StreamConfig, StreamState, loader
from framework.data.prepare import ShardConfig, make_shards
from tools.make_shards import main

LOST = ("corrupt_shard", "missing_samples")


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def stream_config(batch_sizes: dict[int, int], **fields) -> StreamConfig:
    return StreamConfig.of(batch_sizes, **fields)


def _row(i: int, num_neg: int = 3) -> dict:
    return {"query": f"query {i}", "pos": [f"positive passage {i}"],
            "neg": [f"negative passage {i} {n}" for n in range(num_neg)], "source": "web"}


def write_pair_shards(root: Path, tok, num_shards: int = 4, per_shard: int = 12, rows=_row,
                      members=None) -> list[ShardRef]:
    """Pre-tokenised shards of one source and bucket; `members(i, sample)` may edit sample i's members."""
    refs = []
    for s in range(num_shards):
        path = root / f"web.b00.p00000.{s:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for j in range(per_shard):
                i = s * per_shard + j
                row = rows(i)
                sample = {"__key__": sample_key("web", 0, i), "json": json.dumps(row).encode(),
                          "tok": encode_token_ids(tok([row["query"], *row["pos"], *row["neg"]])["input_ids"])}
                if members is not None:
                    members(i, sample)
                sink.write(sample)
        refs.append(ShardRef(str(path), per_shard, "web", 0))
    return refs


def truncate_half(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:len(data) // 2])


def run(refs, tok, cfg, state=StreamState(), rank=0, world=1):
    return list(loader(PairStream(refs, cfg, tok, rank, world, validate_record, state)))


def num_lost(stats) -> int:
    return sum(stats.get(reason, 0) for reason in LOST)


# ---------------------------------------------------------------- issue 16.1: a truncated shard


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])  # 2: a process start per resume
def test_truncated_shard_then_resume_gives_the_uninterrupted_batches(tmp_path, tok, num_workers):
    """Fails on the old stream: a batch that met lost samples read spare ones, so resuming at
    batches x batch_size re-read samples the run had already seen."""
    refs = write_pair_shards(tmp_path, tok)
    truncate_half(refs[1].path)
    cfg = stream_config({0: 5}, group_size=2, num_workers=num_workers, shuffle_window=7, max_bad_fraction=1.0)
    full = run(refs, tok, cfg)
    assert any(num_lost(b.stats) for b in full), "the truncated shard must lie in this slot's range"
    damaged = {i for i, b in enumerate(full) if num_lost(b.stats)}
    # In-process: every position; with DataLoader workers (a process start per resume): around the damage.
    positions = range(1, len(full)) if num_workers == 0 else sorted(
        {1, len(full) - 1} | {k for i in damaged for k in (i, i + 1)} - {0, len(full)})
    for k in positions:
        resumed = run(refs, tok, cfg, StreamState(0, k))
        assert [b.keys for b in resumed] == [b.keys for b in full[k:]], f"resumed at batch {k}"
    # Each batch is exactly its planned sample slots: what was lost there is counted, never refilled.
    for batch in full:
        assert len(batch.keys) + num_lost(batch.stats) == 5
    seen = [k for b in full for k in b.keys]
    assert len(seen) == len(set(seen))


def test_lost_samples_are_reported_with_shard_and_count(tmp_path, tok):
    """Fails on the old stream: stats held a bare count, with no shard a console line could name."""
    refs = write_pair_shards(tmp_path, tok, num_shards=2)
    truncate_half(refs[0].path)
    cfg = stream_config({0: 4}, group_size=2, shuffle_window=24, max_bad_fraction=1.0)
    batches = run(refs, tok, cfg)
    lost = [entry for b in batches for entry in b.stats.bad]
    assert lost and {e.shard for e in lost} == {Path(refs[0].path).name}
    assert {e.reason for e in lost} <= set(LOST)
    assert sum(e.count for e in lost) == sum(num_lost(b.stats) for b in batches) == \
        24 - sum(len(b.keys) for b in batches)  # nothing is left over: 24 samples, 6 batches of 4


# ---------------------------------------------------------------- issue 16.2: corrupt ids, checksums


def test_out_of_vocabulary_token_id_is_a_counted_bad_record(tmp_path, tok):
    """Fails on the old stream: the id went into the batch and the embedding lookup crashed later."""
    def corrupt(i, sample):
        if i == 5:
            ids = tok(["q", "p", "n"])["input_ids"]
            ids[1][1] = len(tok) + 7
            sample["tok"] = encode_token_ids(ids)
    refs = write_pair_shards(tmp_path, tok, num_shards=1, members=corrupt)
    cfg = stream_config({0: 4}, group_size=2, shuffle_window=12, max_bad_fraction=1.0)
    batches = run(refs, tok, cfg)
    assert all(int(b.p_ids_PL.max()) < len(tok) and int(b.q_ids_QL.max()) < len(tok) for b in batches)
    assert sum(b.stats.get("token_out_of_vocab", 0) for b in batches) == 1
    (entry,) = [e for b in batches for e in b.stats.bad]
    assert entry.reason == "token_out_of_vocab" and entry.shard == Path(refs[0].path).name
    assert entry.example == sample_key("web", 0, 5) and str(len(tok) + 7) in entry.detail


def _prepared(tmp_path: Path, num_rows: int = 30) -> Path:
    src = tmp_path / "web.jsonl"
    src.write_text("".join(json.dumps(_row(i)) + "\n" for i in range(num_rows)))
    make_shards([src], ShardConfig(out_dir=tmp_path / "shards", shard_size=10, progress_seconds=1e9))
    return tmp_path / "shards" / "manifest.json"


def test_verify_subcommand_checks_every_checksum(tmp_path, capsys):
    """Fails on the old CLI: `verify` was taken for an input file."""
    manifest_path = _prepared(tmp_path)
    main(["verify", str(manifest_path)])
    assert "3 shard(s) match" in capsys.readouterr().out
    manifest = load_manifest(manifest_path)
    damaged = manifest.shard_path(manifest.shards[1])
    data = bytearray(damaged.read_bytes())
    data[700] ^= 0xFF  # same size, other bytes: only the checksum can tell
    damaged.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match=rf"1 of 3 shard\(s\) damaged.*{damaged.name}.*sha256"):
        main(["verify", str(manifest_path)])


def test_shard_size_is_checked_when_the_stream_opens(tmp_path, tok, caplog):
    """Fails on the old stream: a shard shorter than its manifest entry was opened without a word."""
    manifest_path = _prepared(tmp_path)
    manifest = load_manifest(manifest_path)
    damaged = manifest.shard_path(manifest.shards[2])
    truncate_half(str(damaged))
    with caplog.at_level(logging.WARNING):
        PairStream.from_manifest(manifest_path, stream_config({0: 2}), tok, 0, 1)
    assert damaged.name in caplog.text and str(manifest.shards[2].num_bytes) in caplog.text
    assert "verify" in caplog.text


# ---------------------------------------------------------------- issue 16: the quieter gaps


def test_make_shards_refuses_inputs_without_records(tmp_path, capsys):
    """Fails on the old tool: an empty input gave exit 0 and a 0-sample manifest."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit, match=r"no records.*empty\.jsonl"):
        main([str(empty), "--out", str(tmp_path / "out"), "--progress-seconds", "1e9"])
    assert not (tmp_path / "out" / "manifest.json").exists()
    full = tmp_path / "full.jsonl"
    full.write_text(json.dumps(_row(0)) + "\n")
    main([str(empty), str(full), "--out", str(tmp_path / "mixed"), "--progress-seconds", "1e9"])
    assert "warning" in capsys.readouterr().err.lower()
    assert load_manifest(tmp_path / "mixed" / "manifest.json").num_samples == 1


def test_an_empty_manifest_says_so_at_train_time(tmp_path, tok):
    """Fails on the old stream: it said "lower the batch sizes" for a manifest without samples."""
    Manifest(shards=(), root=tmp_path).save(tmp_path / "manifest.json")
    with pytest.raises(ValueError, match=r"manifest\.json holds no samples"):
        make = lambda state: PairStream.from_manifest(tmp_path / "manifest.json", stream_config({0: 2}), tok, 0, 1,  # noqa: E731
                                                      state)
        next(iter(ResumableLoader(make)))


def test_duplicate_records_are_counted_per_source_in_the_manifest(tmp_path):
    """Fails on the old tool: duplicates were kept without a count."""
    rows = [_row(i) for i in range(6)] + [_row(1), _row(1), _row(4)]
    src = tmp_path / "web.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    other = tmp_path / "wiki.jsonl"
    other.write_text("".join(json.dumps(dict(_row(i), source="wiki")) + "\n" for i in range(3)))
    manifest = make_shards([src, other], ShardConfig(out_dir=tmp_path / "out", progress_seconds=1e9))
    assert manifest.num_samples == 12 and manifest.duplicates == {"web": 3}
    assert load_manifest(tmp_path / "out" / "manifest.json").duplicates == {"web": 3}


def test_repeated_negatives_are_counted_per_source(tmp_path, tok):
    """Fails on the old stream: a group larger than a record's negatives repeated them silently."""
    refs = write_pair_shards(tmp_path, tok, num_shards=1, rows=lambda i: _row(i, num_neg=1 + i % 2))
    batches = run(refs, tok, stream_config({0: 4}, group_size=3, max_bad_fraction=1.0))
    # Records with one negative fill two negative slots with it; those with two have enough.
    assert sum(b.stats.get("negatives_repeated/web", 0) for b in batches) == 6


def test_undecodable_members_are_counted_under_the_documented_reasons(tmp_path, tok):
    """Fails on the old stream: it counted codec messages ("invalid start byte") and exception names."""
    def damage(i, sample):
        if i == 2:
            sample["json"] = b"\xff\xfe{"
        if i == 7:
            sample["json"] = b'{"query": "q", "pos": '
        if i == 9:
            del sample["json"]
    refs = write_pair_shards(tmp_path, tok, num_shards=1, members=damage)
    batches = run(refs, tok, stream_config({0: 4}, group_size=2, shuffle_window=12, max_bad_fraction=1.0))
    counts = {}
    for b in batches:
        for reason, n in b.stats.items():
            counts[reason] = counts.get(reason, 0) + n
    assert {k: counts.get(k) for k in ("non_utf8", "malformed_json", "missing_member")} == \
        {"non_utf8": 1, "malformed_json": 1, "missing_member": 1}
    from framework.data.records import STREAM_REASONS, REJECT_REASONS
    assert set(counts) - {"no_negatives", "truncated", "short_batches"} <= set(REJECT_REASONS + STREAM_REASONS)


def test_text_stream_reads_tar_members_written_by_tarfile(tmp_path, tok):
    """A guard for the tests above: members written without webdataset read the same."""
    path = tmp_path / "raw.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(4):
            data = json.dumps(_row(i)).encode()
            info = tarfile.TarInfo(f"{sample_key('web', 0, i)}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (batch,) = run([ShardRef(str(path), 4, "web", 0)], tok, stream_config({0: 4}, group_size=2))
    assert len(batch.keys) == 4 and np.all(batch.q_mask_QL.numpy().sum(1) > 0)


def test_a_console_line_names_reason_count_and_shard(tmp_path, tok):
    """What the trainer prints from batch stats: the bad records by reason with their shards; kept-record
    counts (truncated, repeated negatives...) are not bad records."""
    from framework.data.stats import bad_records_line, is_bad

    refs = write_pair_shards(tmp_path, tok, num_shards=3)
    truncate_half(refs[2].path)
    batches = run(refs, tok, stream_config({0: 4}, group_size=5, shuffle_window=36, max_bad_fraction=1.0))
    line = bad_records_line(entry for b in batches for entry in b.stats.bad)
    lost = sum(num_lost(b.stats) for b in batches)
    assert line.startswith("bad records: ") and Path(refs[2].path).name in line and str(lost) in line
    keys = {k for b in batches for k in b.stats}
    assert "negatives_repeated/web" in keys and not is_bad("negatives_repeated/web")
    assert {k for k in keys if is_bad(k)} <= set(LOST)
