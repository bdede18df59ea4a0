"""Per-source batch rules (framework/data/sources.py, framework/loss/masks.py): sources without in-batch
negatives and duplicate masking, on crafted batches, in the loss, the objective, the stream and over two
ranks (one gloo launch).

Shape legend (docs/shapes.md): Q queries, P passages, G group size, R all ranks' queries, S all ranks' passages.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from transformers import AutoTokenizer

from framework.config import from_dict
from framework.data.batch import Batch
from framework.data.config import DataConfig, StreamConfig
from framework.data.dedup import NO_HASH, ids_hash
from framework.data.prepare import ShardConfig, make_shards
from framework.data.sources import SourceRules, batch_rules, load_source_rules
from framework.data.stream import PairStream
from framework.loss import ColumnKeys, LossConfig, RowRules, exclusions, m3_loss
from framework.model import load_m3
from framework.parallel import DistEnv, all_gather_object, free_port, init_distributed, shutdown
from framework.train.objective import M3Objective

REPO_ROOT = Path(__file__).resolve().parents[1]
LINES = [line.strip() for line in (REPO_ROOT / "data" / "multilingual_sample.txt").read_text(encoding="utf-8")
         .splitlines() if line.strip()]


# ---------------------------------------------------------------- the rule itself, by hand
def test_exclusions_on_a_crafted_batch() -> None:
    """3 queries, G = 3. Passages by hash: q0 (100 pos, 7, 200), q1 (200 pos, 100, placeholder), q2 (300 pos,
    100, 301). q0's positives are {100, 200} (two in its record), q1's {200}, q2's {300}; q2 has no in-batch
    negatives."""
    hash_P = torch.tensor([100, 7, 200, 200, 100, 5, 300, 100, 301])
    valid_P = torch.tensor([True] * 5 + [False] + [True] * 3)
    rows = RowRules(torch.tensor([True, True, False]), torch.tensor([[100, 200], [200, NO_HASH], [300, NO_HASH]]))
    got = exclusions(rows, ColumnKeys(valid_P, hash_P), group_size=3)
    excluded = {(q, p) for q in range(3) for p in range(9) if got.penalty_QP[q, p] < 0}
    duplicates = {(0, 2), (0, 3), (0, 4), (0, 7), (1, 2)}          # equal to one of the query's positives
    placeholder = {(q, 5) for q in range(3)}
    off_group = {(2, p) for p in range(6)}                         # q2 keeps only its own group 6, 7, 8
    assert excluded == duplicates | placeholder | off_group
    assert {(q, p) for q in range(3) for p in range(9) if got.duplicates_QP[q, p]} == duplicates
    assert torch.all(got.penalty_QP[got.penalty_QP < 0] == -1e4)
    # The same rows as rows 1 and 2 of a larger batch: their own groups move with the offset.
    shifted = exclusions(RowRules(rows.in_batch_Q[1:], rows.positive_hash_QY[1:]), ColumnKeys(valid_P, hash_P),
                         group_size=3, row_offset=1)
    torch.testing.assert_close(shifted.penalty_QP, got.penalty_QP[1:])
    # A query's own positive is never excluded, even when another column holds the same text.
    assert all(got.penalty_QP[q, 3 * q] == 0 for q in range(3))


def _random_heads(num_q: int, group: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {head: torch.randn(num_q, num_q * group, generator=g, dtype=torch.float64) for head in
            ("dense", "sparse", "colbert")}


@pytest.mark.parametrize("kd_loss_type", ["kl_div", "m3_kd_loss"])
def test_excluded_entries_move_no_term_of_any_head(kd_loss_type: str) -> None:
    """All heads, the ensemble, self-distillation and a teacher: changing an excluded entry's score in any
    head changes no loss term; changing a kept one does."""
    num_q, group = 3, 3
    rows = RowRules(torch.tensor([True, True, False]), torch.tensor([[11], [12], [13]]))
    hash_P = torch.arange(100, 109)
    hash_P[4] = 11   # q1's negative has q0's positive text: a duplicate for q0 (in its softmax over all passages)
    hash_P[2] = 11   # q0's own mined negative equals its positive: also out of the teacher's targets
    excluded = exclusions(rows, ColumnKeys(torch.ones(9, dtype=torch.bool), hash_P), group)
    cfg = LossConfig.preset("reference", kd_loss_type=kd_loss_type, temperature=0.5)
    teacher_QG = torch.tensor([[3.0, 0.0, 2.0], [1.0, 0.5, -1.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    scores = _random_heads(num_q, group, 0)

    def terms(changed: dict[str, torch.Tensor]) -> dict[str, float]:
        out = m3_loss(changed, group, 0, cfg, teacher_scores_QG=teacher_QG, penalty_QP=excluded.penalty_QP)
        return {name: value.item() for name, value in out.items()}

    base = terms(scores)
    assert {"dense_loss", "sparse_loss", "colbert_loss", "ensemble_loss", "loss"} <= set(base)
    for head in scores:
        for q, p in ((0, 4), (0, 2), (2, 0), (2, 5)):        # duplicates and q2's other groups
            changed = {**scores, head: scores[head].clone()}
            changed[head][q, p] += 5.0
            assert terms(changed) == pytest.approx(base, rel=1e-12, abs=1e-12), (head, q, p)
        kept = {**scores, head: scores[head].clone()}
        kept[head][0, 5] += 5.0                                # q0 sees q1's other negative
        assert terms(kept)["loss"] != pytest.approx(base["loss"], rel=1e-6), head


def _ce(row: list[float], target: int, dropped: set[int]) -> float:
    kept = [x for j, x in enumerate(row) if j not in dropped]
    return math.log(sum(math.exp(x) for x in kept)) - row[target]


def test_dense_loss_equals_the_formula_with_the_entries_dropped() -> None:
    scores_QP = torch.tensor([[0.9, 0.1, 0.3, -0.2, 0.6, 0.0], [0.0, 0.4, 0.8, 0.5, 0.1, 0.2],
                              [0.3, 0.2, 0.1, 0.7, 0.9, 0.4]], dtype=torch.float64)
    rows = RowRules(torch.tensor([True, True, False]), torch.tensor([[1], [2], [3]]))
    hash_P = torch.tensor([1, 9, 2, 1, 3, 8])  # column 3 (q1's negative) is q0's positive
    penalty = exclusions(rows, ColumnKeys(torch.ones(6, dtype=torch.bool), hash_P), 2).penalty_QP
    cfg = LossConfig.preset(use_sparse=False, use_colbert=False, temperature=0.5)
    loss = m3_loss({"dense": scores_QP}, 2, 0, cfg, penalty_QP=penalty)["loss"].item()
    s = (scores_QP / 0.5).tolist()
    expected = (_ce(s[0], 0, {3}) + _ce(s[1], 2, set()) + _ce(s[2], 4, {0, 1, 2, 3})) / 3
    assert loss == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- the objective on the tiny model
def _ids_batch(tokenizer, texts: list[list[str]], in_batch: list[bool], positives: list[list[str]] | None = None,
               hashes: bool = True) -> Batch:
    """A batch of groups [positive, negatives...] of real tokenized texts, hashed as the stream hashes them."""
    def encode(batch_texts):
        out = tokenizer(batch_texts, padding=True, return_tensors="pt")
        return out["input_ids"], out["attention_mask"]

    queries = [group[0] for group in texts]
    passages = [p for group in texts for p in group[1:]]
    (q_ids, q_mask), (p_ids, p_mask) = encode(queries), encode(passages)
    group = len(texts[0]) - 1
    if not hashes:
        return Batch.of(q_ids, q_mask, p_ids, p_mask, group, in_batch_Q=torch.tensor(in_batch))
    ids = lambda text: tokenizer(text)["input_ids"]  # noqa: E731
    positives = positives or [[g[1]] for g in texts]
    width = max(len(p) for p in positives)
    positive_QY = torch.tensor([[ids_hash(ids(t)) for t in p] + [NO_HASH] * (width - len(p)) for p in positives])
    return Batch.of(q_ids, q_mask, p_ids, p_mask, group, in_batch_Q=torch.tensor(in_batch),
                    passage_hash_P=torch.tensor([ids_hash(ids(t)) for t in passages]), positive_hash_QY=positive_QY)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    torch.manual_seed(0)
    model, tokenizer = load_m3(tiny_model_dir)
    return model.eval(), tokenizer


def test_a_source_without_in_batch_negatives_trains_each_group_alone(tiny) -> None:
    """Every head, the ensemble and self-distillation: a batch whose queries have no in-batch negatives has
    the mean loss of its groups taken one at a time."""
    model, tokenizer = tiny
    groups = [[LINES[i].split(", ")[0], LINES[i], LINES[i + 20], LINES[i + 40]] for i in range(3)]
    objective = M3Objective(model, LossConfig.preset("reference"))
    with torch.no_grad():
        whole = objective(batch=_ids_batch(tokenizer, groups, [False] * 3), step=0).terms
        alone = [objective(batch=_ids_batch(tokenizer, [g], [True]), step=0).terms for g in groups]
        mixed = objective(batch=_ids_batch(tokenizer, groups, [True] * 3), step=0).terms
    for name in ("dense_loss", "sparse_loss", "colbert_loss", "ensemble_loss", "loss"):
        # abs: a float32 loss near 0 (the ensemble's can be 3e-4) carries ~1e-8 absolute rounding.
        assert whole[name].item() == pytest.approx(sum(t[name].item() for t in alone) / 3, rel=1e-5, abs=1e-7), name
    assert mixed["loss"].item() != pytest.approx(whole["loss"].item(), rel=1e-4)


def test_duplicates_of_a_positive_are_masked_by_token_ids(tiny) -> None:
    """q1's negative is q0's positive (the same text, tokenized apart): it is no negative of q0."""
    model, tokenizer = tiny
    groups = [[LINES[0].split(", ")[0], LINES[0], LINES[30]], [LINES[1].split(", ")[0], LINES[1], LINES[0]],
              [LINES[2].split(", ")[0], LINES[2], LINES[31]]]
    cfg = LossConfig.preset(use_sparse=False, use_colbert=False)
    objective = M3Objective(model, cfg)
    batch = _ids_batch(tokenizer, groups, [True] * 3)
    with torch.no_grad():
        out = objective(batch=batch, step=0)
        q, p = model(batch.q_ids_QL, batch.q_mask_QL), model(batch.p_ids_PL, batch.p_mask_PL)
        plain = objective(batch=_ids_batch(tokenizer, groups, [True] * 3, hashes=False), step=0).terms["loss"]
    s = (q.dense_BD @ p.dense_BD.T / cfg.temperature).double().tolist()
    expected = (_ce(s[0], 0, {3}) + _ce(s[1], 2, set()) + _ce(s[2], 4, set())) / 3
    assert out.terms["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert plain.item() == pytest.approx((_ce(s[0], 0, set()) + _ce(s[1], 2, set()) + _ce(s[2], 4, set())) / 3,
                                         rel=1e-5)
    assert out.report.metrics["masked_duplicates"].item() == 1


# ---------------------------------------------------------------- config and stream
def test_rules_resolve_per_source_and_bad_rules_name_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text('"*": {mask_duplicates: false}\nnli: {in_batch_negatives: false, mask_duplicates: true}\n')
    rules = load_source_rules(path)
    assert batch_rules(rules, "nli") == batch_rules({"nli": SourceRules(False, True)}, "nli")
    assert (batch_rules(rules, "nli").in_batch_negatives, batch_rules(rules, "web").mask_duplicates) == (False, False)
    assert batch_rules({}, "web").in_batch_negatives and batch_rules({}, "web").mask_duplicates
    # A run config's data.source_rules: the same file (or the mapping itself).
    assert from_dict(DataConfig, {"manifest": "m.json", "source_rules": str(path)}).source_rules == rules
    assert from_dict(DataConfig, {"manifest": "m.json", "source_rules": {"nli": {"in_batch_negatives": False}}}
                     ).source_rules == {"nli": SourceRules(in_batch_negatives=False)}
    with pytest.raises(ValueError, match="no source name"):
        DataConfig(manifest="m.json", source_rules={"bad name": SourceRules()})
    with pytest.raises(ValueError, match="group_size >= 2"):
        DataConfig(manifest="m.json", group_size=1, source_rules={"nli": SourceRules(in_batch_negatives=False)})
    with pytest.raises(ValueError, match="in_batch_negatives"):
        SourceRules(in_batch_negatives="no")


def test_stream_batches_carry_the_rules_and_the_hashes(tokenizer_dir: Path, tmp_path: Path) -> None:
    """Shards of two sources: nli's queries score their own group only; every passage is hashed, and a
    query's positive hashes are all its record's positives (not only the one drawn)."""
    for source, offset in (("nli", 0), ("web", 100)):
        rows = [{"query": LINES[offset + i].split(", ")[0], "pos": [LINES[offset + i], LINES[offset + i + 50]],
                 "neg": [LINES[offset + i + 1], LINES[offset + 200]]} for i in range(4)]
        (tmp_path / f"{source}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    manifest = make_shards([tmp_path / "nli.jsonl", tmp_path / "web.jsonl"],
                           ShardConfig(out_dir=tmp_path / "shards", tokenizer=str(tokenizer_dir), pretokenize=True,
                                       max_length=64, length_edges=(64,)))
    cfg = StreamConfig.of({s.bucket: 4 for s in manifest.shards}, group_size=3, seed=1,
                          source_rules={"nli": SourceRules(in_batch_negatives=False)})
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    batches = list(PairStream.from_manifest(tmp_path / "shards" / "manifest.json", cfg, tokenizer, 0, 1))
    assert sorted(b.source for b in batches) == ["nli", "web"]
    for batch in batches:
        assert batch.in_batch_Q.tolist() == [batch.source != "nli"] * 4
        assert batch.positive_hash_QY.shape == (4, 2)
        for q in range(4):
            ids = batch.p_ids_PL[q * 3][batch.p_mask_PL[q * 3].bool()].tolist()
            assert ids_hash(ids) == batch.passage_hash_P[q * 3]           # the drawn positive's hash
            assert ids_hash(ids) in batch.positive_hash_QY[q].tolist()
        # Query i's first negative is query i+1's first positive: 4 own positives and 3 duplicates match.
        equal_QP = (batch.passage_hash_P[None, :, None] == batch.positive_hash_QY[:, None, :]).any(-1)
        assert equal_QP.sum() == 7
        rows = RowRules(batch.in_batch_Q, batch.positive_hash_QY)
        masked = exclusions(rows, ColumnKeys(batch.passage_valid_P, batch.passage_hash_P), 3).duplicates_QP
        assert masked.sum() == (3 if batch.source == "web" else 0)  # nli's other groups are off anyway


# ---------------------------------------------------------------- two ranks, the dense gather
WORLD = 2


def _global_groups() -> tuple[list[list[str]], list[list[str]], list[bool]]:
    """4 queries, G = 2, two per rank. q1's record has a second positive X; rank 1 holds q2 whose negative is
    q0's positive and q3 (no in-batch negatives) whose negative is X: both duplicates cross the ranks."""
    text = [LINES[i] for i in range(0, 80, 10)]
    extra = LINES[90]
    groups = [[t.split(", ")[0], t, n] for t, n in ((text[0], text[4]), (text[1], text[5]), (text[2], text[0]),
                                                     (text[3], extra))]
    positives = [[text[0]], [text[1], extra], [text[2]], [text[3]]]
    return groups, positives, [True, True, True, False]


@pytest.mark.distributed
def test_two_ranks_mask_duplicates_and_keep_own_groups_in_the_dense_gather(tiny_model_dir: Path) -> None:
    """Each rank's loss with the gathered dense scores (all rows, local rows) equals the formula over the global
    batch with the duplicates and q3's other groups dropped; the duplicates are counted on q0 and q1's rank."""
    mp.spawn(_rank_worker, args=(free_port(), str(tiny_model_dir)), nprocs=WORLD, join=True)


def _rank_worker(rank_: int, port: int, model_dir: str) -> None:
    torch.set_num_threads(1)
    env = DistEnv(rank=rank_, world_size=WORLD, local_rank=rank_, local_world_size=WORLD,
                  master_addr="127.0.0.1", master_port=port, launcher="env")
    init_distributed(env, backend="gloo", timeout_s=60)
    try:
        torch.manual_seed(0)
        model, tokenizer = load_m3(model_dir)
        model.eval()
        groups, positives, in_batch = _global_groups()
        whole = _ids_batch(tokenizer, groups, in_batch, positives)
        mine = slice(2 * rank_, 2 * rank_ + 2)
        local = _ids_batch(tokenizer, groups[mine], in_batch[mine], positives[mine])
        cfg = LossConfig.preset(use_sparse=False, use_colbert=False)
        with torch.no_grad():
            q, p = model(whole.q_ids_QL, whole.q_mask_QL), model(whole.p_ids_PL, whole.p_mask_PL)
        s_RS = (q.dense_BD @ p.dense_BD.T / cfg.temperature).double().tolist()
        dropped = [{5}, {7}, set(), {0, 1, 2, 3, 4, 5}]
        rows_ce = [_ce(s_RS[r], 2 * r, dropped[r]) for r in range(4)]
        for local_rows in (False, True):
            objective = M3Objective(model, cfg, gather_dense=True, local_rows=local_rows)
            with torch.no_grad():
                out = objective(batch=local, step=0)
            losses = all_gather_object(out.terms["loss"].item())
            if local_rows:  # this rank's rows (weight 1: equal ranks); their mean over ranks is the global loss
                assert losses[rank_] == pytest.approx(sum(rows_ce[mine]) / 2, rel=1e-5)
                assert sum(losses) / WORLD == pytest.approx(sum(rows_ce) / 4, rel=1e-5)
            else:
                assert losses[rank_] == pytest.approx(sum(rows_ce) / 4, rel=1e-5)
            assert out.report.metrics["masked_duplicates"].item() == (2 if rank_ == 0 else 0)
        # Sanity: without the rules the formula differs, so the masks above decided the result.
        assert sum(_ce(s_RS[r], 2 * r, set()) for r in range(4)) / 4 != pytest.approx(sum(rows_ce) / 4, rel=1e-4)
    finally:
        shutdown()
