"""The epoch plan at the paper's scale, simulated without processes (96 ranks x 4 workers)."""
import numpy as np
import pytest

from framework.data.plan import ShardRef, build_slot_plan, slot_bounds


def _shards(num: int, seed: int = 0, sizes=(200, 1200)) -> list[ShardRef]:
    rng = np.random.default_rng(seed)
    return [ShardRef(f"shard-{i:05d}.tar", int(rng.integers(*sizes)), f"src{i % 4}", int(rng.integers(0, 9)))
            for i in range(num)]


def _coverage(plans) -> int:
    """Samples the slots plan to batch; asserts no sample is planned twice (interval overlap check)."""
    intervals = {}
    for plan in plans.values():
        for sp in plan.streams.values():
            need = sp.num_batches * sp.batch_size
            for seg in sp.segments:
                take = min(need, seg.count)
                if take:
                    intervals.setdefault(seg.path, []).append((seg.start, seg.start + take))
                need -= take
            assert need == 0
    covered = 0
    for path, spans in intervals.items():
        spans.sort()
        for (_, prev_end), (start, _) in zip(spans, spans[1:]):
            assert start >= prev_end, f"{path}: sample {start} planned twice"
        covered += sum(end - start for start, end in spans)
    return covered


@pytest.mark.slow
def test_96_ranks_x_4_workers_same_bucket_exactly_once_no_rank_runs_dry():
    shards = _shards(2000, sizes=(5000, 15000))  # ~20M samples, shards of ~10k as a real run's
    batch_sizes = {b: 1152 // 96 for b in range(9)}  # the paper's fine-tuning batch, per rank
    R, W = 96, 4
    plans = {(r, w): build_slot_plan(shards, batch_sizes, r, R, w, W, seed=3, epoch=0)
             for r in range(R) for w in range(W)}
    for w in range(W):
        # Same stream (hence bucket) at every step on every rank, and the same number of steps.
        assert len({plans[(r, w)].schedule for r in range(R)}) == 1
    covered = _coverage(plans)
    total = sum(s.num_samples for s in shards)
    left = sum(p.num_left_over for p in plans.values())
    assert covered + left == total
    # Bounded remainder: under one batch + one sample per slot and stream.
    num_streams = len({(s.source, s.bucket) for s in shards})
    assert left < R * W * num_streams * (max(batch_sizes.values()) + 1)
    assert left / total < 0.005


def test_plan_changes_by_epoch_and_seed_but_not_by_process():
    shards = _shards(50)
    a = build_slot_plan(shards, {b: 4 for b in range(9)}, 1, 4, 0, 2, seed=0, epoch=0)
    b = build_slot_plan(shards, {b: 4 for b in range(9)}, 1, 4, 0, 2, seed=0, epoch=0)
    c = build_slot_plan(shards, {b: 4 for b in range(9)}, 1, 4, 0, 2, seed=0, epoch=1)
    assert a == b and a.schedule != c.schedule


def test_mixed_sources_and_weights():
    shards = _shards(40)
    mixed = build_slot_plan(shards, {b: 2 for b in range(9)}, 0, 2, 0, 1, seed=0, epoch=0, mix_sources=True)
    assert all(key[0] == "*" for key in mixed.streams)
    full = build_slot_plan(shards, {b: 2 for b in range(9)}, 0, 2, 0, 1, seed=0, epoch=0)
    half = build_slot_plan(shards, {b: 2 for b in range(9)}, 0, 2, 0, 1, seed=0, epoch=0,
                           source_weights={"src0": 0.5})
    count = lambda plan, src: sum(1 for k in plan.schedule if k[0] == src)  # noqa: E731
    assert count(half, "src0") == pytest.approx(count(full, "src0") / 2, abs=9)
    assert count(half, "src1") == count(full, "src1")


def test_slot_bounds_are_balanced():
    sizes = [np.subtract(*slot_bounds(1003, j, 384)[::-1]) for j in range(384)]
    assert sum(sizes) == 1003 and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_sizes={0: 4}), "no batch size for length bucket"),
    (dict(batch_sizes={b: 0 for b in range(9)}), "batch sizes must be >= 1"),
    (dict(source_weights={"src0": 2.0}), r"source weights must be in \(0, 1\]"),
    (dict(source_weights={"src0": 0.5}, mix_sources=True), "need same-source batches"),
    (dict(rank=5), "out of range"),
])
def test_bad_plan_arguments(kwargs, message):
    args = dict(shards=_shards(10), batch_sizes={b: 2 for b in range(9)}, rank=0, world_size=2, worker=0,
                num_workers=1, seed=0, epoch=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        build_slot_plan(**args)
