"""The stream on real tar shards: lock-step buckets, exactly-once, resume, determinism, bad records."""
import io
import json
import tarfile

import pytest
import torch
import webdataset as wds
from transformers import AutoTokenizer

from framework.data.format import encode_token_ids, sample_key
from framework.data.plan import ShardRef
from framework.data.stream import DataError, PairStream, StreamConfig, StreamState, loader


class BadRecord(ValueError):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def validate(obj):
    if not isinstance(obj, dict) or not isinstance(obj.get("query"), str) or not obj.get("pos"):
        raise BadRecord("missing_field")
    return obj


def _record(source, bucket, i, num_neg=3):
    words = " ".join(["wort"] * (4 + 20 * bucket))
    return {"query": f"{source} query {i}", "pos": [f"{words} positive {i}"],
            "neg": [f"{words} negative {i}-{n}" for n in range(num_neg)], "source": source}


def write_shards(root, tok=None, sources=("a", "b"), buckets=(0, 1, 2), shards_per_stream=3, per_shard=10,
                 records=_record):
    shards = []
    for source in sources:
        for bucket in buckets:
            for s in range(shards_per_stream):
                path = root / f"{source}-{bucket}-{s}.tar"
                with wds.TarWriter(str(path)) as sink:
                    for i in range(per_shard):
                        rec = records(source, bucket, s * per_shard + i)
                        sample = {"__key__": sample_key(source, bucket * 100 + s, i), "json": json.dumps(rec).encode()}
                        if tok is not None and isinstance(rec, dict):
                            texts = [rec["query"], *rec["pos"], *rec["neg"]]
                            sample["tok"] = encode_token_ids(tok(texts)["input_ids"])
                        sink.write(sample)
                shards.append(ShardRef(str(path), per_shard, source, bucket))
    return shards


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


CFG = StreamConfig.of({0: 4, 1: 3, 2: 2}, group_size=3, seed=5, num_workers=2, shuffle_window=7)


def _run(shards, tok, rank, world, cfg=CFG, state=StreamState(), limit=None):
    stream = PairStream(shards, cfg, tok, rank, world, validate, state)
    out = []
    for batch in loader(stream):
        out.append(batch)
        if limit is not None and len(out) == limit:
            break
    return out


def test_two_ranks_two_workers_lockstep_and_exactly_once(tmp_path, tok):
    shards = write_shards(tmp_path)
    runs = [_run(shards, tok, r, 2) for r in range(2)]
    assert [b.stream for b in runs[0]] == [b.stream for b in runs[1]]  # same bucket at every step
    assert all(b.q_ids_QL.shape[0] == CFG.batch_sizes[b.stream[1]] for run in runs for b in run)
    keys = [k for run in runs for b in run for k in b.keys]
    assert len(keys) == len(set(keys))  # nobody reads a sample twice
    stream = PairStream(shards, CFG, tok, 0, 2, validate)
    left = sum(PairStream(shards, CFG, tok, r, 2, validate).plan(w).num_left_over for r in range(2) for w in range(2))
    assert len(keys) + left == sum(s.num_samples for s in shards)
    assert stream.schedule_lengths() and sum(stream.schedule_lengths()) == len(runs[0])


def test_batches_have_the_reference_layout(tmp_path, tok):
    shards = write_shards(tmp_path, buckets=(1,), sources=("a",))
    batch = _run(shards, tok, 0, 1, limit=1)[0]
    Q, G = batch.q_ids_QL.shape[0], batch.group_size
    assert batch.p_ids_PL.shape[0] == Q * G and batch.p_ids_PL.shape[1] % 8 == 0
    assert batch.passage_valid_P.all() and batch.teacher_scores_QG is None
    first = tok.decode(batch.p_ids_PL[0][batch.p_mask_PL[0].bool()], skip_special_tokens=True)
    assert "positive" in first  # the positive opens each group
    negs = [tok.decode(batch.p_ids_PL[i][batch.p_mask_PL[i].bool()], skip_special_tokens=True) for i in (1, 2)]
    assert all("negative" in n for n in negs)
    assert 0 < batch.num_tokens <= batch.num_padded_tokens


@pytest.mark.parametrize("position", [5, "after_first_worker_ends"])
def test_resume_mid_epoch_gives_the_same_batches(tmp_path, tok, position):
    shards = write_shards(tmp_path)
    full = _run(shards, tok, 1, 2)
    lengths = PairStream(shards, CFG, tok, 1, 2, validate).schedule_lengths()
    assert lengths[0] != lengths[1]  # one worker runs out first: resuming must handle its absence
    k = 5 if position == 5 else 2 * min(lengths) + 1
    resumed = _run(shards, tok, 1, 2, state=StreamState(epoch=0, batches=k))
    assert len(resumed) == len(full) - k
    for a, b in zip(full[k:], resumed):
        assert a.keys == b.keys and torch.equal(a.p_ids_PL, b.p_ids_PL) and torch.equal(a.q_ids_QL, b.q_ids_QL)


def test_deterministic_and_epochs_differ(tmp_path, tok):
    shards = write_shards(tmp_path)
    a, b = _run(shards, tok, 0, 1), _run(shards, tok, 0, 1)
    assert [x.keys for x in a] == [x.keys for x in b]
    c = _run(shards, tok, 0, 1, state=StreamState(epoch=1))
    assert [x.keys for x in a] != [x.keys for x in c]


def test_pretokenized_shards_equal_raw_text(tmp_path, tok):
    raw = _run(write_shards(tmp_path / "raw" if (tmp_path / "raw").mkdir() is None else None), tok, 0, 1)
    pre_dir = tmp_path / "pre"
    pre_dir.mkdir()
    pre = _run(write_shards(pre_dir, tok=tok), tok, 0, 1)
    for a, b in zip(raw, pre):
        assert torch.equal(a.p_ids_PL, b.p_ids_PL) and torch.equal(a.q_ids_QL, b.q_ids_QL)


def test_queries_without_negatives_are_counted_and_masked(tmp_path, tok):
    shards = write_shards(tmp_path, sources=("a",), buckets=(0,), records=lambda s, b, i: _record(s, b, i, num_neg=0))
    batches = _run(shards, tok, 0, 1, cfg=StreamConfig.of({0: 4}, group_size=3))
    assert sum(b.stats.get("no_negatives", 0) for b in batches) == 4 * len(batches)
    assert not batches[0].passage_valid_P.view(4, 3)[:, 1:].any() and batches[0].passage_valid_P.view(4, 3)[:, 0].all()


def test_bad_records_and_corrupt_shards_are_counted(tmp_path, tok):
    def records(source, bucket, i):
        return "not an object" if i % 10 == 3 else _record(source, bucket, i)
    shards = write_shards(tmp_path, sources=("a",), buckets=(0,), records=records)
    # Truncate one shard in the middle of its members.
    data = open(shards[0].path, "rb").read()
    open(shards[0].path, "wb").write(data[: len(data) // 2])
    cfg = StreamConfig.of({0: 2}, group_size=2, max_bad_fraction=1.0)
    batches = _run(shards, tok, 0, 1, cfg=cfg)
    stats = {}
    for b in batches:
        for k, v in b.stats.items():
            stats[k] = stats.get(k, 0) + v
    assert stats["missing_field"] >= 2 and stats["corrupt_shard"] >= 1
    # A batch is exactly its planned sample positions: a bad or lost sample leaves it short (refilling
    # from later samples would break exact resume), never missing, so every rank still takes every step.
    planned = PairStream(shards, cfg, tok, 0, 1, validate).schedule_lengths()
    assert len(batches) == sum(planned) and stats["short_batches"] >= 1
    assert all(len(b.keys) + b.stats.num_bad == 2 for b in batches)
    assert any(b.q_ids_QL.shape[0] < 2 for b in batches) and any(b.q_ids_QL.shape[0] == 2 for b in batches)
    with pytest.raises(DataError, match="max_bad_fraction"):
        _run(shards, tok, 0, 1, cfg=StreamConfig.of({0: 2}, group_size=2, max_bad_fraction=0.0,
                                                          bad_budget_after=1))


def test_worker_count_must_match_the_plan(tmp_path, tok):
    shards = write_shards(tmp_path, sources=("a",), buckets=(0,))
    stream = PairStream(shards, StreamConfig.of({0: 2}, num_workers=2), tok, 0, 1, validate)
    with pytest.raises(ValueError, match="must match"):
        list(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=1))


@pytest.mark.slow
def test_jsonl_to_shards_to_stream_end_to_end(tmp_path, tok, tokenizer_dir):
    """The real path: JSONL -> tools/make_shards.py (pre-tokenised, bucketed) -> manifest -> stream."""
    from framework.data.prepare import ShardConfig, make_shards

    rows = [_record("web", i % 3, i) for i in range(90)] + [{"query": "", "pos": ["x"]}]  # one bad row
    src = tmp_path / "web.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    manifest = make_shards([src], ShardConfig(out_dir=tmp_path / "shards", tokenizer=str(tokenizer_dir),
                                              pretokenize=True, shard_size=7, length_edges=(32, 64, 128),
                                              max_bad_fraction=0.05))
    assert manifest.num_samples == 90 and manifest.rejected.get("empty_text") == 1
    cfg = StreamConfig.of({0: 3, 1: 2, 2: 2}, group_size=2, num_workers=2, seed=1)
    path = tmp_path / "shards" / "manifest.json"
    runs = [list(loader(PairStream.from_manifest(path, cfg, tok, r, 2))) for r in range(2)]
    assert [b.stream for b in runs[0]] == [b.stream for b in runs[1]]
    keys = [k for run in runs for b in run for k in b.keys]
    assert len(keys) == len(set(keys)) and len(keys) > 60
    widths = {b.stream[1]: b.p_ids_PL.shape[1] for run in runs for b in run}
    assert widths[0] <= 32 and 32 < max(widths.values()) <= 128  # batches pad within their bucket
    with pytest.raises(ValueError, match=r"sources \['nope'\] are not in"):
        PairStream.from_manifest(path, StreamConfig.of({0: 1}, sources=("nope",)), tok, 0, 1)


def test_resumable_loader_state_round_trip_across_epochs(tmp_path, tok):
    from framework.data.stream import ResumableLoader

    shards = write_shards(tmp_path, sources=("a",), buckets=(0, 1))
    cfg = StreamConfig.of({0: 4, 1: 3}, group_size=2, num_workers=2)
    make = lambda state: PairStream(shards, cfg, tok, 0, 1, validate, state)  # noqa: E731
    steps_per_epoch = sum(make(StreamState()).schedule_lengths())
    first = ResumableLoader(make)
    it = iter(first)
    seen = [next(it).keys for _ in range(steps_per_epoch + 3)]  # into the second epoch
    saved = first.state_dict()
    assert saved == {"epoch": 1, "batches": 3, "world_size": 1, "num_workers": 2, "layouts": []}
    more = [next(it).keys for _ in range(4)]
    second = ResumableLoader(make)
    second.load_state_dict(saved)
    it2 = iter(second)
    assert [next(it2).keys for _ in range(4)] == more
    assert seen[steps_per_epoch:] != seen[:3]  # the next epoch reshuffles
