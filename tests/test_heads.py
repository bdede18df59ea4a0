"""Sparse-head health, the FLOPS regulariser and Matryoshka dense, against hand-written formulas.

Shape legend (docs/shapes.md): B texts, L tokens, V vocabulary, Q queries, P passages = Q*G, G group size, D dense width,
d prefix width, R/S all ranks' queries/passages.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from framework.config import from_dict
from framework.data.batch import Batch
from framework.inference import M3Embedder
from framework.loss import (DenseAtDim, HeadScores, LossConfig, all_zero_warnings, flops_lambda, flops_loss,
                            lexical_stats, m3_loss)
from framework.model import load_m3
from framework.train.config import RunConfig
from framework.train.objective import GatheredDense, M3Objective

TAU = 0.5


# ---- sparse-head health ---------------------------------------------------------------------------------
# Three texts (id 1 is padding, weight 0): text 0 has id 5 twice (max 0.9) and id 7; text 1 is all zero;
# text 2 has ids 7 and 9. Lexical vectors: {5: .9, 7: .2}, {}, {7: .4, 9: .3}.
IDS = torch.tensor([[5, 7, 5, 1], [5, 6, 8, 1], [7, 8, 9, 1]])
WEIGHTS = torch.tensor([[0.5, 0.2, 0.9, 0.0], [0.0, 0.0, 0.0, 0.0], [0.4, 0.0, 0.3, 0.0]])


def test_lexical_stats_on_hand_made_weights():
    stats = lexical_stats(WEIGHTS, IDS)
    assert stats.nonzero.item() == pytest.approx(4 / 3)
    assert stats.all_zero.item() == pytest.approx(1 / 3)
    # mean weight per id over 3 texts: 5 -> .3, 7 -> .2, 9 -> .1
    assert stats.flops.item() == pytest.approx(0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2)
    assert stats.weight.item() == pytest.approx((0.9 + 0.2 + 0.4 + 0.3) / 4)
    # Dropping text 1 (a placeholder passage): two texts, none all zero, means over 2.
    kept = lexical_stats(WEIGHTS, IDS, torch.tensor([True, False, True]))
    assert kept.nonzero.item() == pytest.approx(2.0) and kept.all_zero.item() == 0.0
    assert kept.flops.item() == pytest.approx(0.45 ** 2 + 0.3 ** 2 + 0.15 ** 2)


def _brute_lexical_BV(weights_BL: torch.Tensor, ids_BL: torch.Tensor, vocab: int) -> torch.Tensor:
    """(B, V) lexical vectors, text by text and id by id (differentiable through max)."""
    rows = []
    for b in range(weights_BL.shape[0]):
        row = []
        for v in range(vocab):
            hits = weights_BL[b][ids_BL[b] == v]
            row.append(hits.max() if hits.numel() else weights_BL.new_zeros(()))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def test_lexical_stats_equal_brute_force_over_the_vocabulary():
    gen = torch.Generator().manual_seed(0)
    vocab = 12
    ids_BL = torch.randint(0, vocab, (5, 9), generator=gen)
    weights_BL = torch.relu(torch.randn(5, 9, generator=gen, dtype=torch.float64))
    weights_BL[3] = 0                                          # one all-zero text
    lexical_BV = _brute_lexical_BV(weights_BL, ids_BL, vocab)
    stats = lexical_stats(weights_BL, ids_BL)
    nonzero_B = (lexical_BV > 0).sum(1).double()
    torch.testing.assert_close(stats.nonzero.double(), nonzero_B.mean())
    torch.testing.assert_close(stats.all_zero.double(), (nonzero_B == 0).double().mean())
    torch.testing.assert_close(stats.flops.double(), (lexical_BV.mean(0) ** 2).sum(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(stats.weight.double(), lexical_BV.sum() / (lexical_BV > 0).sum(), rtol=1e-6,
                               atol=1e-7)


def test_flops_regulariser_value_and_gradient_match_the_formula():
    """lambda_t = lambda * min(1, t/T)^2 times sum_j (mean_i w_ij)^2, per side; autograd through both."""
    gen = torch.Generator().manual_seed(1)
    vocab = 10
    q_ids, p_ids = torch.randint(0, vocab, (3, 6), generator=gen), torch.randint(0, vocab, (4, 8), generator=gen)
    q_w = torch.rand(3, 6, generator=gen, dtype=torch.float64).requires_grad_()
    p_w = torch.rand(4, 8, generator=gen, dtype=torch.float64).requires_grad_()
    cfg = LossConfig(flops_query_weight=0.3, flops_passage_weight=0.2, flops_warmup_steps=4)
    for step, factor in ((0, 0.0), (2, 0.25), (4, 1.0), (9, 1.0)):
        assert flops_lambda(0.3, step, 4) == pytest.approx(0.3 * factor)
        got = flops_loss(lexical_stats(q_w, q_ids), lexical_stats(p_w, p_ids), cfg, step)
        expected = (0.3 * factor * (_brute_lexical_BV(q_w, q_ids, vocab).mean(0) ** 2).sum()
                    + 0.2 * factor * (_brute_lexical_BV(p_w, p_ids, vocab).mean(0) ** 2).sum())
        torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-9)
        if step == 0:
            continue
        grads = torch.autograd.grad(got, (q_w, p_w))
        want = torch.autograd.grad(expected, (q_w, p_w))
        for g, w in zip(grads, want):
            torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-9)
    # d/dw of lambda * (mean_j)^2 at the max of id j in text i is 2 lambda mean_j / B; elsewhere 0.
    stats_grad = torch.autograd.grad(lexical_stats(q_w, q_ids).flops, q_w)[0]
    lexical_BV = _brute_lexical_BV(q_w.detach(), q_ids, vocab)
    b, l = 0, 0
    is_max = q_w[b, l] == lexical_BV[b, q_ids[b, l]]
    expected_grad = 2 * lexical_BV[:, q_ids[b, l]].mean() / 3 if is_max else 0.0
    assert stats_grad[b, l].item() == pytest.approx(float(expected_grad))


def test_all_zero_warning_crosses_the_threshold():
    metrics = {"sparse_query_all_zero": 0.05, "sparse_passage_all_zero": 0.4, "sparse_passage_nonzero": 3.2}
    lines = all_zero_warnings(metrics, 0.1)
    assert len(lines) == 1 and "40% of passage texts" in lines[0] and "threshold 10%" in lines[0]
    assert all_zero_warnings(metrics, 0.5) == [] and all_zero_warnings(metrics, None) == []
    assert "collapsing" in lines[0]


def test_all_zero_share_that_started_high_is_a_head_not_yet_learned_not_a_collapse():
    first = {"sparse_query_all_zero": 0.6, "sparse_passage_all_zero": 0.2}
    later = {"sparse_query_all_zero": 0.5, "sparse_passage_all_zero": 0.3}
    query, passage = all_zero_warnings(later, 0.1, first)
    assert "60% in the stage's first window" in query and "not learned" in query and "collapsing" not in query
    assert "collapsing" in passage  # 20% -> 30%: it rose


def _batch(tokenizer, num_q: int, group: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(5, len(tokenizer), (num_q, 10), generator=g)
    p = torch.randint(5, len(tokenizer), (num_q * group, 16), generator=g)
    q[:, 0] = p[:, 0] = tokenizer.cls_token_id
    p_mask = torch.ones_like(p)
    p_mask[::2, 12:] = 0
    return Batch.of(q, torch.ones_like(q), p, p_mask, group)


def test_objective_reports_health_and_adds_the_flops_term(tiny_model_dir):
    torch.manual_seed(0)
    model, tok = load_m3(tiny_model_dir)
    model.eval()
    batch = _batch(tok, 3, 2)
    plain = M3Objective(model, LossConfig.preset("reference"))(batch=batch, step=5)
    cfg = LossConfig.preset("reference", flops_query_weight=0.5, flops_passage_weight=0.25, flops_warmup_steps=10)
    regularised = M3Objective(model, cfg)(batch=batch, step=5)
    with torch.no_grad():
        q, p = model(batch.q_ids_QL, batch.q_mask_QL), model(batch.p_ids_PL, batch.p_mask_PL)
    query, passage = lexical_stats(q.sparse_BL, q.token_ids_BL), lexical_stats(p.sparse_BL, p.token_ids_BL)
    report = plain.report.metrics
    assert set(report) == {f"sparse_{side}_{name}" for side in ("query", "passage")
                           for name in ("nonzero", "all_zero", "flops", "weight")}
    assert all(not v.requires_grad and v.dim() == 0 for v in report.values())
    torch.testing.assert_close(report["sparse_passage_flops"], passage.flops)
    torch.testing.assert_close(report["sparse_query_nonzero"], query.nonzero)
    assert "flops_loss" not in plain.terms
    expected = 0.25 * (0.5 * query.flops + 0.25 * passage.flops)            # (5/10)^2 of the warm-up
    torch.testing.assert_close(regularised.terms["flops_loss"].detach(), expected)
    torch.testing.assert_close(regularised.terms["loss"].detach(), plain.terms["loss"].detach() + expected)


# ---- Matryoshka dense ------------------------------------------------------------------------------------
def _unit(gen, rows, width):
    return F.normalize(torch.randn(rows, width, generator=gen, dtype=torch.float64), dim=-1)


def _ce(scaled_QP, group_size):
    return F.cross_entropy(scaled_QP, torch.arange(scaled_QP.shape[0]) * group_size)


def _prefix_scores(q_QD, p_PD, dim):
    return F.normalize(q_QD[:, :dim], dim=-1) @ F.normalize(p_PD[:, :dim], dim=-1).T


def test_matryoshka_loss_at_dims_equals_the_hand_formula():
    """L_dense = sum_d w_d CE(prefix_d scores / tau); ensemble and KD keep the full-width dense scores."""
    gen = torch.Generator().manual_seed(2)
    q_QD, p_PD = _unit(gen, 3, 8), _unit(gen, 6, 8)
    sparse_QP, colbert_QP = torch.rand(3, 6, generator=gen, dtype=torch.float64), \
        torch.rand(3, 6, generator=gen, dtype=torch.float64)
    dims, weights = (8, 4, 2), (1.0, 0.5, 0.25)
    cfg = LossConfig.preset("reference", temperature=TAU, matryoshka_dims=dims, matryoshka_weights=weights)
    full_QP = q_QD @ p_PD.T
    views = {d: DenseAtDim(_prefix_scores(q_QD, p_PD, d)) for d in dims}
    out = m3_loss(HeadScores(full_QP, sparse_QP, colbert_QP), 2, 0, cfg, dense_dims=views)
    per_dim = {d: _ce(_prefix_scores(q_QD, p_PD, d) / TAU, 2) for d in dims}
    for d in dims:
        torch.testing.assert_close(out[f"dense_{d}_loss"], per_dim[d])
    dense = sum(w * per_dim[d] for d, w in zip(dims, weights))
    torch.testing.assert_close(out["dense_loss"], dense)
    plain = m3_loss(HeadScores(full_QP, sparse_QP, colbert_QP), 2, 0, LossConfig.preset("reference", temperature=TAU))
    for name in ("ensemble_loss", "kd_dense_loss", "kd_loss", "sparse_loss"):
        torch.testing.assert_close(out[name], plain[name])
    big_l = (dense + out["ensemble_loss"] + 0.1 * out["sparse_loss"] + out["colbert_loss"]) / 4
    torch.testing.assert_close(out["loss"], (big_l + out["kd_loss"]) / 2)


def test_matryoshka_over_ranks_equals_the_concatenated_batch():
    """Both gather layouts at a prefix width, two ranks simulated in one process: all rows (every rank
    scores R x S) and local rows (rank r scores its Q rows x S, weighted); the mean over ranks equals the
    single-process loss on the concatenated batch, at every width."""
    gen = torch.Generator().manual_seed(3)
    group, num_q, world = 2, 2, 2
    q_RD, p_SD = _unit(gen, num_q * world, 8), _unit(gen, num_q * world * group, 8)
    dims = (8, 4)
    cfg = LossConfig.preset("reference", temperature=TAU, use_sparse=False, use_colbert=False, matryoshka_dims=dims)
    single = {d: _ce(_prefix_scores(q_RD, p_SD, d) / TAU, group) for d in dims}
    for local_rows in (False, True):
        per_rank = []
        for rank in range(world):
            rows = slice(rank * num_q, (rank + 1) * num_q)
            q_part = q_RD[rows] if local_rows else q_RD
            # row_weight Q x W / R is 1 when every rank holds Q queries.
            vectors = GatheredDense(p_SD, rank * num_q, **({"q_QD": q_part} if local_rows else {"q_RD": q_part}))
            views = {d: DenseAtDim(dense_global=vectors.scores(d)) for d in dims}
            local = HeadScores(dense=q_RD[rows] @ p_SD[rank * num_q * group:(rank + 1) * num_q * group].T)
            per_rank.append(m3_loss(local, group, 0, cfg, dense_global=vectors.scores(), dense_dims=views))
        for d in dims:
            mean = sum(out[f"dense_{d}_loss"] for out in per_rank) / world
            torch.testing.assert_close(mean, single[d], msg=f"local_rows={local_rows} dim={d}")


def test_matryoshka_objective_matches_prefix_formula(tiny_model_dir):
    """The objective truncates and renormalises the model's dense vectors at each width (hidden 32)."""
    torch.manual_seed(0)
    model, tok = load_m3(tiny_model_dir)
    model.eval()
    batch = _batch(tok, 3, 2)
    cfg = LossConfig.preset("reference", use_sparse=False, use_colbert=False, matryoshka_dims=(32, 16, 4))
    terms = M3Objective(model, cfg)(batch=batch, step=0).terms
    with torch.no_grad():
        q, p = model(batch.q_ids_QL, batch.q_mask_QL).dense_BD, model(batch.p_ids_PL, batch.p_mask_PL).dense_BD
    for d in (32, 16, 4):
        torch.testing.assert_close(terms[f"dense_{d}_loss"].detach(), _ce(_prefix_scores(q, p, d) / 0.02, 2))
    torch.testing.assert_close(terms["loss"].detach(), sum(terms[f"dense_{d}_loss"].detach() for d in (32, 16, 4)))


@pytest.mark.parametrize("dims", [(32, 12), (64, 32)], ids=["not-a-divisor", "too-wide"])
def test_matryoshka_dims_that_do_not_fit_the_model_are_refused(tiny_model_dir, tmp_path, dims):
    model, _ = load_m3(tiny_model_dir)
    with pytest.raises(ValueError, match=r"loss\.matryoshka_dims=.*dense width 32"):
        M3Objective(model, LossConfig(matryoshka_dims=dims))
    raw = {"output_dir": str(tmp_path), "model": {"path": str(tiny_model_dir)},
           "stages": [{"name": "s", "steps": 3, "data": {"manifest": "m.json", "buckets": {"total_batch": {8192: 8}}},
                       "loss": {"matryoshka_dims": list(dims)}}]}
    with pytest.raises(ValueError, match=r"stages\.s\.loss\.matryoshka_dims=.*dense width 32"):
        from_dict(RunConfig, raw)


@pytest.mark.parametrize("fields, message", [
    (dict(matryoshka_dims=(8, 4), matryoshka_weights=(1.0,)), "one weight per dim"),
    (dict(matryoshka_dims=(8, 8)), "distinct positive widths"),
    (dict(matryoshka_weights=(1.0,)), "matryoshka_dims is empty"),
    (dict(matryoshka_dims=(8,), use_dense=False), "use_dense is False"),
    (dict(flops_query_weight=-1.0), "flops_query_weight"),
    (dict(flops_passage_weight=0.1, use_sparse=False), "use_sparse is False"),
    (dict(flops_warmup_steps=-1), "flops_warmup_steps"),
    (dict(sparse_all_zero_warning=1.5), "sparse_all_zero_warning"),
])
def test_bad_head_options_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**fields)


def test_encode_dense_dim_is_the_renormalised_prefix(tiny_model_dir):
    torch.manual_seed(0)
    model, tok = load_m3(tiny_model_dir)
    embedder = M3Embedder(model, tok)
    texts = ["ein kurzer Satz", "une phrase un peu plus longue que l'autre", "short"]
    full = embedder.encode(texts, sparse=False)["dense_vecs"]
    cut = embedder.encode(texts, sparse=False, dense_dim=8)["dense_vecs"]
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    assert cut.shape == (3, 8)
    np.testing.assert_allclose(cut, expected, rtol=1e-5, atol=1e-6)
    mcls = embedder.encode(texts, sparse=False, mcls=True, dense_dim=8)["dense_vecs"]
    assert mcls.shape == (3, 8) and np.allclose(np.linalg.norm(mcls, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match=r"dense_dim=64: the dense vectors have 32 dims"):
        embedder.encode(texts, dense_dim=64)


def test_evaluate_dense_dim_option(tiny_model_dir):
    from framework.evaluate import Benchmark, EvalConfig, Task, evaluate
    from framework.evaluate import cli

    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--benchmark", "ddtp-dev", "--dense-dim", "8"])
    assert cli.config_from_args(args).dense_dim == 8
    with pytest.raises(ValueError, match="dense_dim=0"):
        EvalConfig(dense_dim=0)
    # Each query is its answer's text: identical prefixes still score 1, so the truncated dense mode stays
    # perfect, and the run records the width it used.
    docs = ["erster Text über Katzen", "second text about dogs", "troisième texte sur les oiseaux", "vierde tekst"]
    task = Task("t", [f"d{i}" for i in range(4)], docs, ["q0", "q2"], [docs[0], docs[2]],
                {"q0": {"d0": 1}, "q2": {"d2": 1}})
    torch.manual_seed(0)
    model, tok = load_m3(tiny_model_dir)
    results = evaluate(M3Embedder(model, tok), Benchmark("known", "test", [task]),
                       EvalConfig(modes=("dense",), k=4, candidates=4, rerank_depth=4, progress=False, dense_dim=4))
    assert results["overall"]["dense"]["ndcg_at_10"] == pytest.approx(1.0)
    assert results["config"]["dense_dim"] == 4
