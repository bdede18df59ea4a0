"""An epoch re-split for another layout of ranks x workers (framework/data/resplit.py), on real tar shards:
every sample read at most once over the layouts, whatever is left over bounded as in a fresh epoch, the
ranks in lock-step, and a resume inside the re-split layout exact."""
import pytest
from transformers import AutoTokenizer

from framework.data.resplit import Layout
from framework.data.stream import PairStream, ResumableLoader, StreamConfig, StreamState, loader
from tests.test_stream import validate, write_shards

GLOBAL = {0: 8, 1: 6, 2: 4}  # sequences per step over all ranks, per bucket


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("resplit"))  # 2 sources x 3 buckets x 3 shards x 10 samples


def _cfg(world: int, workers: int) -> StreamConfig:
    return StreamConfig.of({b: n // world for b, n in GLOBAL.items()}, group_size=2, seed=3, num_workers=workers,
                           shuffle_window=7)


def _streams(shards, tok, world, workers, state):
    return [PairStream(shards, _cfg(world, workers), tok, r, world, validate, state) for r in range(world)]


def _read(streams, limit=None):
    """Each rank's batches (up to `limit` per rank) as a list of steps: [(bucket, keys per rank), ...]."""
    runs = []
    for stream in streams:
        got = []
        for batch in loader(stream):
            if limit is not None and len(got) == limit:
                break
            got.append(batch)
        runs.append(got)
    assert len({len(run) for run in runs}) == 1, "ranks yield different numbers of batches"
    steps = []
    for batches in zip(*runs):
        assert len({b.stream for b in batches}) == 1, "ranks drew different buckets at one step"
        steps.append((batches[0].stream[1], [b.keys for b in batches]))
    return steps


def _check_step_sizes(steps, world):
    for bucket, keys in steps:
        assert all(len(k) == GLOBAL[bucket] // world for k in keys), (bucket, [len(k) for k in keys])


@pytest.mark.parametrize("before,after", [((2, 2), (1, 0)), ((1, 2), (2, 1)), ((2, 1), (1, 2))])
def test_the_rest_of_the_epoch_on_another_layout_reads_each_sample_once(shards, tok, before, after):
    """k steps on `before` (ranks, workers), the rest of the epoch on `after`: no sample twice, and the
    samples of neither part nor the left-over add up to the epoch."""
    (world, workers), k = before, 5
    first = _read(_streams(shards, tok, world, workers, StreamState()), limit=k)
    layout = Layout(world, max(workers, 1), k)
    (world2, workers2) = after
    rest_streams = _streams(shards, tok, world2, workers2, StreamState(0, 0, (layout,)))
    rest = _read(rest_streams)
    _check_step_sizes(first, world)
    _check_step_sizes(rest, world2)
    keys = [key for _, per_rank in first + rest for ks in per_rank for key in ks]
    assert len(keys) == len(set(keys)), "a sample was read twice"
    slots = [s.plan(w) for s in rest_streams for w in range(s.num_workers)]
    left = sum(p.num_left_over for p in slots)
    total = sum(s.num_samples for s in shards)
    assert len(keys) + left == total
    num_streams = len({(s.source, s.bucket) for s in shards})
    assert left < num_streams * len(slots) * (max(GLOBAL.values()) // world2 + 1)
    assert len(rest) > 5                                         # the re-split layout did real work


def test_a_chain_of_layouts_and_a_resume_inside_the_last(shards, tok):
    """2 ranks -> 1 rank -> 2 ranks (one worker each): still each sample once; a resume after j steps of
    the last layout gives exactly the batches that came next."""
    a = _read(_streams(shards, tok, 2, 1, StreamState()), limit=4)
    b_state = StreamState(0, 0, (Layout(2, 1, 4),))
    b = _read(_streams(shards, tok, 1, 1, b_state), limit=3)
    c_state = StreamState(0, 0, (Layout(2, 1, 4), Layout(1, 1, 3)))
    c = _read(_streams(shards, tok, 2, 1, c_state))
    keys = [key for _, per_rank in a + b + c for ks in per_rank for key in ks]
    assert len(keys) == len(set(keys))
    j = 2
    resumed = _read(_streams(shards, tok, 2, 1, StreamState(0, j, c_state.layouts)))
    assert resumed == c[j:]


def test_the_loader_records_its_layout_and_resplits_a_state_of_another(shards, tok):
    def make(world):
        return lambda state: PairStream(shards, _cfg(world, 0), tok, 0, world, validate, state)

    two = ResumableLoader(make(2))
    it = iter(two)
    for _ in range(3):
        next(it)
    saved = two.state_dict()
    assert saved == {"epoch": 0, "batches": 3, "world_size": 2, "num_workers": 1, "layouts": []}
    one = ResumableLoader(make(1))
    one.load_state_dict(saved)
    assert one.state == StreamState(0, 0, (Layout(2, 1, 3),))
    assert one.state_dict()["layouts"] == [[2, 1, 3]] and one.state_dict()["world_size"] == 1
    again = ResumableLoader(make(1))
    again.load_state_dict(one.state_dict())
    assert again.state == one.state                              # the same layout: the position as it was
    fresh = ResumableLoader(make(1))
    fresh.load_state_dict({"epoch": 2, "batches": 0, "world_size": 2, "num_workers": 1, "layouts": []})
    assert fresh.state == StreamState(2, 0)                      # nothing read yet: a fresh epoch here
    old = ResumableLoader(make(1))
    old.load_state_dict({"epoch": 0, "batches": 4})              # a state of before layouts were kept
    assert old.state == StreamState(0, 4)


def test_a_layout_that_read_its_whole_epoch_leaves_only_its_left_over(shards, tok):
    """Resumed after the last batch of the epoch on 2 ranks: 1 rank reads what the two ranks' left-overs
    make together (possibly nothing), then the next epoch starts fresh; no DataError, no sample twice."""
    two = [PairStream(shards, _cfg(2, 0), tok, r, 2, validate) for r in range(2)]
    whole = _read(two)
    loader_one = ResumableLoader(lambda state: PairStream(shards, _cfg(1, 0), tok, 0, 1, validate, state))
    loader_one.load_state_dict({"epoch": 0, "batches": len(whole), "world_size": 2, "num_workers": 1, "layouts": []})
    extra = []
    for batch in loader_one:
        if loader_one.state.epoch == 1:
            break
        extra.extend(batch.keys)
    keys = [k for _, per_rank in whole for ks in per_rank for k in ks] + extra
    assert len(keys) == len(set(keys))
    assert loader_one.state == StreamState(1, 1)                 # the first batch of the next epoch was drawn
