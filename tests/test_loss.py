"""framework.loss.m3_loss against hand-written formulas and against FlagEmbedding's M3 model.

Shape legend: Q queries, P passages = Q*G, G group size, R/S all ranks' queries/passages.
"""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from framework.loss import (GlobalDense, HeadScores, LossConfig, colbert_scores, dense_scores, m3_loss,
                            sparse_scores)

TAU = 0.5  # a mild temperature keeps the hand-computed softmaxes away from 0/1
# Q=2, G=2: passages 0,1 belong to query 0 (positive 0), passages 2,3 to query 1 (positive 2).
DENSE = torch.tensor([[0.9, 0.1, 0.3, -0.2], [0.2, 0.0, 0.8, 0.5]], dtype=torch.float64)
SPARSE = torch.tensor([[0.5, 0.0, 0.1, 0.2], [0.0, 0.3, 0.6, 0.1]], dtype=torch.float64)
COLBERT = torch.tensor([[0.7, 0.4, 0.2, 0.3], [0.1, 0.2, 0.9, 0.6]], dtype=torch.float64)
TEACHER = torch.tensor([[2.0, 1.0], [0.5, 1.5]], dtype=torch.float64)


def _log_softmax(row):
    return row - torch.logsumexp(row, dim=0)


def _ce(scaled_QP, group_size):
    """-(1/Q) sum_i log softmax(row i)[i*G], written row by row."""
    rows = [-_log_softmax(scaled_QP[i])[i * group_size] for i in range(scaled_QP.shape[0])]
    return sum(rows) / len(rows)


def _kd(teacher_QP, scaled_QP):
    """-(1/Q) sum_i sum_p softmax(teacher)[i,p] * log softmax(s)[i,p]."""
    rows = [-(torch.exp(_log_softmax(teacher_QP[i])) * _log_softmax(scaled_QP[i])).sum()
            for i in range(scaled_QP.shape[0])]
    return sum(rows) / len(rows)


def _scaled(tau, *mats):
    return [m / tau for m in mats]


def _all_heads(**kwargs):
    return HeadScores(dense=DENSE, sparse=SPARSE, colbert=COLBERT, **kwargs)


def test_reference_preset_matches_hand_computation():
    cfg = LossConfig.preset("reference", temperature=TAU)
    d, s, m = _scaled(TAU, DENSE, SPARSE, COLBERT)
    e = 1.0 * d + 0.3 * s + 1.0 * m
    big_l = (_ce(d, 2) + _ce(e, 2) + 0.1 * _ce(s, 2) + _ce(m, 2)) / 4
    kd = (_kd(e, d) + 0.1 * _kd(e, s) + _kd(e, m)) / 3
    out = m3_loss(_all_heads(), group_size=2, step=0, cfg=cfg)
    assert set(out) == {"dense_loss", "sparse_loss", "colbert_loss", "ensemble_loss", "kd_dense_loss",
                        "kd_sparse_loss", "kd_colbert_loss", "kd_loss", "loss"}
    torch.testing.assert_close(out["ensemble_loss"], _ce(e, 2))
    torch.testing.assert_close(out["kd_sparse_loss"], _kd(e, s))
    torch.testing.assert_close(out["loss"], (big_l + kd) / 2)


def test_reference_preset_default_temperature():
    cfg = LossConfig.preset()
    assert cfg.temperature == 0.02 and cfg.detach_teacher and cfg.kd_loss_type == "kl_div"
    d, s, m = _scaled(0.02, DENSE, SPARSE, COLBERT)
    e = d + 0.3 * s + m
    want = ((_ce(d, 2) + _ce(e, 2) + 0.1 * _ce(s, 2) + _ce(m, 2)) / 4
            + (_kd(e, d) + 0.1 * _kd(e, s) + _kd(e, m)) / 3) / 2
    torch.testing.assert_close(m3_loss(_all_heads(), 2, 0, cfg)["loss"], want)


def _leaf_heads():
    leaves = [t.clone().requires_grad_(True) for t in (DENSE, SPARSE, COLBERT)]
    return leaves, HeadScores(*leaves)


def test_paper_preset_sums_and_distils_through_the_teacher():
    cfg = LossConfig.preset("paper", temperature=TAU)
    leaves, heads = _leaf_heads()
    d, s, m = _scaled(TAU, *leaves)
    e = d + 0.3 * s + m
    want = (_ce(d, 2) + 0.1 * _ce(s, 2) + _ce(m, 2) + _ce(e, 2)) + (_kd(e, d) + 0.1 * _kd(e, s) + _kd(e, m))
    got = m3_loss(heads, 2, 0, cfg)["loss"]
    torch.testing.assert_close(got, want)
    for g_got, g_want in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves)):
        torch.testing.assert_close(g_got, g_want)


def test_reference_preset_detaches_the_teacher():
    cfg = LossConfig.preset("reference", temperature=TAU, use_sparse=False)
    leaves, _ = _leaf_heads()
    heads = HeadScores(dense=leaves[0], colbert=leaves[2])
    d, m = _scaled(TAU, leaves[0], leaves[2])
    e = d + m
    kd = lambda teacher: (_kd(teacher, d) + _kd(teacher, m)) / 2  # noqa: E731
    base = (_ce(d, 2) + _ce(m, 2) + _ce(e, 2)) / 3
    got = m3_loss(heads, 2, 0, cfg)["loss"]
    want_detached, want_attached = (base + kd(e.detach())) / 2, (base + kd(e)) / 2
    grads = torch.autograd.grad(got, leaves[0], retain_graph=True)[0]
    torch.testing.assert_close(grads, torch.autograd.grad(want_detached, leaves[0], retain_graph=True)[0])
    assert not torch.allclose(grads, torch.autograd.grad(want_attached, leaves[0])[0])


def test_paper_printed_divisors_are_one_override_away():
    cfg = LossConfig.preset("paper", temperature=TAU, loss_divisor=4, kd_divisor=3, final_divisor=2)
    reference = LossConfig.preset("reference", temperature=TAU)
    torch.testing.assert_close(m3_loss(_all_heads(), 2, 0, cfg)["loss"],
                               m3_loss(_all_heads(), 2, 0, reference)["loss"])


def test_self_distillation_starts_after_the_start_step():
    cfg = LossConfig.preset(temperature=TAU, self_distill_start_step=5)
    d, s, m = _scaled(TAU, DENSE, SPARSE, COLBERT)
    e = d + 0.3 * s + m
    big_l = (_ce(d, 2) + _ce(e, 2) + 0.1 * _ce(s, 2) + _ce(m, 2)) / 4
    before = m3_loss(_all_heads(), 2, 5, cfg)
    assert "kd_loss" not in before
    torch.testing.assert_close(before["loss"], big_l)
    after = m3_loss(_all_heads(), 2, 6, cfg)
    torch.testing.assert_close(after["loss"], (big_l + after["kd_loss"]) / 2)
    off = m3_loss(_all_heads(), 2, 100, LossConfig.preset(temperature=TAU, use_self_distill=False))
    torch.testing.assert_close(off["loss"], big_l)


def test_dense_only_is_plain_infonce():
    cfg = LossConfig.preset(temperature=TAU, use_sparse=False, use_colbert=False)
    out = m3_loss({"dense": DENSE}, 2, 10, cfg)
    assert set(out) == {"dense_loss", "loss"}
    torch.testing.assert_close(out["loss"], _ce(DENSE / TAU, 2))


def test_sparse_head_off_averages_the_remaining_terms():
    cfg = LossConfig.preset(temperature=TAU, use_sparse=False)
    d, m = _scaled(TAU, DENSE, COLBERT)
    e = d + m
    want = ((_ce(d, 2) + _ce(m, 2) + _ce(e, 2)) / 3 + (_kd(e, d) + _kd(e, m)) / 2) / 2
    out = m3_loss(HeadScores(dense=DENSE, colbert=COLBERT), 2, 0, cfg)
    assert "sparse_loss" not in out and "kd_sparse_loss" not in out
    torch.testing.assert_close(out["loss"], want)


def _teacher_targets():
    return [torch.exp(_log_softmax(TEACHER[i])) for i in range(2)]


def _kl_div_head(scaled_QP):
    """Soft CE of the own-group scores against softmax(teacher), plus the in-batch InfoNCE."""
    t = _teacher_targets()
    rows = [-(t[i] * _log_softmax(scaled_QP[i, 2 * i:2 * i + 2])).sum() for i in range(2)]
    return sum(rows) / 2 + _ce(scaled_QP, 2)


def _m3_kd_head(scaled_QP):
    """sum_g mean_i t[i,g] * CE over the row with the earlier own-group passages removed."""
    t, total = _teacher_targets(), 0.0
    for g in range(2):
        per_row = []
        for i in range(2):
            keep = [c for c in range(4) if not 2 * i <= c < 2 * i + g]
            row = scaled_QP[i, keep]
            per_row.append(t[i][g] * -_log_softmax(row)[keep.index(2 * i + g)])
        total = total + sum(per_row) / 2
    return total


@pytest.mark.parametrize("kd_loss_type,head_loss", [("kl_div", _kl_div_head), ("m3_kd_loss", _m3_kd_head)])
def test_teacher_scores_apply_to_every_head(kd_loss_type, head_loss):
    cfg = LossConfig.preset(temperature=TAU, kd_loss_type=kd_loss_type, use_self_distill=False)
    d, s, m = _scaled(TAU, DENSE, SPARSE, COLBERT)
    e = d + 0.3 * s + m
    out = m3_loss(_all_heads(), 2, 0, cfg, teacher_scores_QG=TEACHER)
    for name, scaled in (("dense", d), ("sparse", s), ("colbert", m), ("ensemble", e)):
        torch.testing.assert_close(out[f"{name}_loss"], head_loss(scaled))
    want = (head_loss(d) + head_loss(e) + 0.1 * head_loss(s) + head_loss(m)) / 4
    torch.testing.assert_close(out["loss"], want)


def test_group_size_one_uses_the_other_queries_as_negatives():
    scores_QP = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.5], [0.4, 0.6, 0.1]], dtype=torch.float64)
    cfg = LossConfig.preset(temperature=TAU, use_sparse=False, use_colbert=False)
    rows = [-_log_softmax(scores_QP[i] / TAU)[i] for i in range(3)]
    torch.testing.assert_close(m3_loss({"dense": scores_QP}, 1, 0, cfg)["loss"], sum(rows) / 3)
    full = m3_loss(HeadScores(scores_QP, scores_QP.flip(0), scores_QP.T), 1, 0, LossConfig.preset())
    assert torch.isfinite(full["loss"]) and "kd_loss" in full


def test_half_precision_scores_give_a_float32_loss():
    heads = HeadScores(DENSE.bfloat16(), SPARSE.bfloat16(), COLBERT.bfloat16())
    out = m3_loss(heads, 2, 0, LossConfig.preset())
    assert out["loss"].dtype == torch.float32
    torch.testing.assert_close(out["loss"], m3_loss(_all_heads(), 2, 0, LossConfig.preset())["loss"].float(),
                               rtol=0.05, atol=0.05)


def _global_case():
    """Rank 1 of 2: rank 0's rows/columns come first; rank 1's block is the fixed example."""
    gen = torch.Generator().manual_seed(0)
    scores_RS = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    scores_RS[2:, 4:] = DENSE
    teacher_RG = torch.cat([torch.randn(2, 2, generator=gen, dtype=torch.float64), TEACHER])
    return GlobalDense(scores_RS=scores_RS, row_offset=2, teacher_scores_RG=teacher_RG)


def test_global_dense_uses_all_rows_but_the_local_block_for_the_ensemble():
    glob = _global_case()
    cfg = LossConfig.preset(temperature=TAU)
    out = m3_loss(HeadScores(sparse=SPARSE, colbert=COLBERT), 2, 0, cfg, dense_global=glob)
    torch.testing.assert_close(out["dense_loss"], _ce(glob.scores_RS / TAU, 2))
    local = m3_loss(_all_heads(), 2, 0, cfg)
    for name in ("sparse_loss", "colbert_loss", "ensemble_loss", "kd_loss"):
        torch.testing.assert_close(out[name], local[name])
    with_local = m3_loss(_all_heads(), 2, 0, cfg, dense_global=glob)
    torch.testing.assert_close(with_local["loss"], out["loss"])


def test_global_dense_with_teacher_kl_div_uses_local_rows():
    glob = _global_case()
    cfg = LossConfig.preset(temperature=TAU, use_sparse=False, use_colbert=False)
    out = m3_loss(HeadScores(), 2, 0, cfg, teacher_scores_QG=TEACHER, dense_global=glob)
    t, scaled = _teacher_targets(), glob.scores_RS / TAU
    soft = sum(-(t[i] * _log_softmax(scaled[2 + i, 4 + 2 * i:6 + 2 * i])).sum() for i in range(2)) / 2
    torch.testing.assert_close(out["dense_loss"], soft + _ce(scaled, 2))


def _config_errors():
    return [
        (dict(temperature=0.0), "temperature"),
        (dict(sparse_lambda=-0.1), "sparse_lambda"),
        (dict(ensemble_sparse_weight=-1.0), "ensemble_sparse_weight"),
        (dict(use_dense=False, use_sparse=False, use_colbert=False), "at least one head"),
        (dict(kd_loss_type="mse"), "kd_loss_type"),
        (dict(loss_divisor=0.0), "loss_divisor"),
        (dict(temprature=0.1), "unknown field"),
    ]


@pytest.mark.parametrize("overrides,message", _config_errors())
def test_bad_config_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        LossConfig.preset("reference", **overrides)


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="unknown preset 'papper'"):
        LossConfig.preset("papper")


def _input_errors():
    cfg = LossConfig.preset()
    dense_only = LossConfig.preset(use_sparse=False, use_colbert=False)
    empty = torch.zeros(0, 0)
    return [
        (lambda: m3_loss(HeadScores(empty, empty, empty), 2, 0, cfg), "Q >= 1"),
        (lambda: m3_loss(HeadScores(DENSE, SPARSE, COLBERT), 3, 0, cfg), "needs 6 columns"),
        (lambda: m3_loss(HeadScores(DENSE, SPARSE, COLBERT[:1, :2]), 2, 0, cfg), "another head has 2"),
        (lambda: m3_loss(HeadScores(DENSE, None, COLBERT), 2, 0, cfg), "use_sparse is True"),
        (lambda: m3_loss(HeadScores(DENSE, SPARSE), 2, 0, dense_only), "use_sparse is False"),
        (lambda: m3_loss({"dense": DENSE, "lexical": SPARSE}, 2, 0, dense_only), "unknown score key"),
        (lambda: m3_loss(_all_heads(), 0, 0, cfg), "group_size"),
        (lambda: m3_loss(_all_heads(), 2, 0, cfg, teacher_scores_QG=TEACHER[:, :1]), "teacher_scores_QG"),
        (lambda: m3_loss(HeadScores(sparse=SPARSE, colbert=COLBERT), 2, 0, cfg,
                         dense_global=GlobalDense(_global_case().scores_RS, row_offset=3)), "row_offset"),
        (lambda: m3_loss(HeadScores(), 2, 0, LossConfig.preset(kd_loss_type="m3_kd_loss", use_sparse=False,
                                                               use_colbert=False),
                         teacher_scores_QG=TEACHER,
                         dense_global=GlobalDense(_global_case().scores_RS, row_offset=2)), "teacher_scores_RG"),
    ]


@pytest.mark.parametrize("call,message", _input_errors())
def test_bad_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---- end to end against FlagEmbedding's EncoderOnlyEmbedderM3Model (the reference implementation) ----

VOCAB, HIDDEN, CLS_ID, PAD_ID, EOS_ID, UNK_ID = 23, 6, 0, 1, 2, 3


class _TinyEncoder(torch.nn.Module):
    """Stands in for XLM-R: non-negative hidden states that depend on the token and its position."""

    def __init__(self, gen):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=VOCAB)
        self.tok = torch.nn.Parameter(torch.randn(VOCAB, HIDDEN, generator=gen, dtype=torch.float64))
        self.pos = torch.nn.Parameter(torch.randn(16, HIDDEN, generator=gen, dtype=torch.float64))

    def forward(self, input_ids, attention_mask, return_dict=True):
        hidden_BLH = F.softplus(self.tok[input_ids] + self.pos[: input_ids.shape[1]])
        return SimpleNamespace(last_hidden_state=hidden_BLH)


def _tiny_heads(gen):
    sparse = torch.nn.Linear(HIDDEN, 1).double()
    colbert = torch.nn.Linear(HIDDEN, HIDDEN).double()
    with torch.no_grad():
        sparse.weight.copy_(torch.randn(1, HIDDEN, generator=gen))
        # Non-negative projection of non-negative states: every ColBERT similarity is > 0, so the
        # reference's zero padding vectors never win a max and both implementations agree exactly.
        colbert.weight.copy_(torch.rand(HIDDEN, HIDDEN, generator=gen))
        colbert.bias.copy_(torch.rand(HIDDEN, generator=gen))
    return sparse, colbert


def _texts(gen, num_texts, max_len):
    lengths = torch.randint(3, max_len + 1, (num_texts,), generator=gen)
    ids_BL = torch.randint(4, VOCAB, (num_texts, max_len), generator=gen)
    ids_BL[ids_BL % 5 == 0] = 4  # a frequent token, repeated within texts
    mask_BL = (torch.arange(max_len)[None] < lengths[:, None]).long()
    ids_BL[:, 0] = CLS_ID
    ids_BL[torch.arange(num_texts), lengths - 1] = EOS_ID
    ids_BL[mask_BL == 0] = PAD_ID
    ids_BL[0, 1] = UNK_ID
    return {"input_ids": ids_BL, "attention_mask": mask_BL}


def _reference_model(encoder, sparse, colbert, temperature, **kwargs):
    modeling = pytest.importorskip("FlagEmbedding.finetune.embedder.encoder_only.m3.modeling")
    tokenizer = SimpleNamespace(cls_token_id=CLS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                                unk_token_id=UNK_ID, padding_side="right")
    base = {"model": encoder, "colbert_linear": colbert, "sparse_linear": sparse}
    return modeling.EncoderOnlyEmbedderM3Model(base, tokenizer=tokenizer, temperature=temperature,
                                               normalize_embeddings=True, **kwargs)


def _our_scores(encoder, sparse, colbert, queries, passages):
    """The model side as the framework hands it to the loss: plain per-head tensors."""
    def heads(batch):
        ids_BL, mask_BL = batch["input_ids"], batch["attention_mask"]
        hidden_BLH = encoder(ids_BL, mask_BL).last_hidden_state
        special_BL = torch.isin(ids_BL, torch.tensor([CLS_ID, EOS_ID, PAD_ID, UNK_ID]))
        weights_BL = torch.relu(sparse(hidden_BLH)).squeeze(-1) * (mask_BL.bool() & ~special_BL)
        colbert_BLD = F.normalize(colbert(hidden_BLH[:, 1:]) * mask_BL[:, 1:, None], dim=-1)
        dense_BD = F.normalize(hidden_BLH[:, 0], dim=-1)
        return dense_BD, weights_BL, ids_BL, colbert_BLD, mask_BL[:, 1:]

    q, p = heads(queries), heads(passages)
    return (dense_scores(q[0], p[0]), sparse_scores(q[1], q[2], p[1], p[2]),
            colbert_scores(q[3], q[4], p[3], p[4], max_block_elements=256))


def _grads(modules):
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for m in modules for p in m.parameters()]


def _zero(modules):
    for m in modules:
        m.zero_grad(set_to_none=True)


@pytest.mark.parametrize("teacher,kd_loss_type,unified", [
    (False, "kl_div", True), (True, "kl_div", True), (True, "m3_kd_loss", True), (False, "kl_div", False)])
def test_end_to_end_equals_flagembedding(teacher, kd_loss_type, unified):
    gen = torch.Generator().manual_seed(11)
    encoder, (sparse, colbert) = _TinyEncoder(gen), _tiny_heads(gen)
    modules = (encoder, sparse, colbert)
    queries, passages = _texts(gen, 3, 6), _texts(gen, 9, 9)
    teacher_QG = torch.randn(3, 3, generator=gen, dtype=torch.float64) if teacher else None
    teacher_list = None if teacher_QG is None else teacher_QG.flatten().tolist()  # the reference's input
    ref = _reference_model(encoder, sparse, colbert, 0.02, kd_loss_type=kd_loss_type,
                           unified_finetuning=unified, use_self_distill=True, self_distill_start_step=0)
    cfg = LossConfig.preset("reference", kd_loss_type=kd_loss_type, self_distill_start_step=0,
                            use_sparse=unified, use_colbert=unified)
    for step in (0, 1):  # the reference's own counter: no distillation at step 0, distillation at step 1
        _zero(modules)
        ref_loss = ref(queries, passages, teacher_scores=teacher_list).loss
        ref_loss.backward()
        ref_grads = _grads(modules)
        _zero(modules)
        dense, sparse_s, colbert_s = _our_scores(encoder, sparse, colbert, queries, passages)
        heads = HeadScores(dense, sparse_s, colbert_s) if unified else HeadScores(dense=dense)
        ours = m3_loss(heads, 3, step, cfg, teacher_scores_QG=teacher_QG)["loss"]
        ours.backward()
        torch.testing.assert_close(ours, ref_loss)
        for got, want in zip(_grads(modules), ref_grads):
            torch.testing.assert_close(got, want)
    assert ref.step == 2


@pytest.mark.parametrize("kd_loss_type", [None, "kl_div", "m3_kd_loss"])
def test_end_to_end_cross_device_equals_flagembedding(kd_loss_type):
    """Rank 1 of 2 simulated in one process: the reference's gather returns rank 0's tensors without
    gradient followed by this rank's own tensors with gradient; ours gets the same global scores."""
    gen = torch.Generator().manual_seed(12)
    encoder, (sparse, colbert) = _TinyEncoder(gen), _tiny_heads(gen)
    modules = (encoder, sparse, colbert)
    queries, passages = _texts(gen, 2, 6), _texts(gen, 6, 8)
    other_q, other_p = (F.normalize(torch.randn(n, HIDDEN, generator=gen, dtype=torch.float64), dim=-1)
                        for n in (2, 6))
    teacher_QG, other_teacher = (torch.randn(2, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    ref = _reference_model(encoder, sparse, colbert, 0.02, kd_loss_type=kd_loss_type or "kl_div",
                           use_self_distill=True, self_distill_start_step=-1)
    ref.negatives_cross_device, ref.process_rank, ref.world_size = True, 1, 2
    others = {(2, HIDDEN): other_q, (6, HIDDEN): other_p, (2, 3): torch.softmax(other_teacher, -1)}
    ref._dist_gather_tensor = lambda t: torch.cat([others[tuple(t.shape)], t])
    teacher_list = None if kd_loss_type is None else teacher_QG.flatten().tolist()
    ref_loss = ref(queries, passages, teacher_scores=teacher_list).loss
    ref_loss.backward()
    ref_grads = _grads(modules)
    _zero(modules)

    dense, sparse_s, colbert_s = _our_scores(encoder, sparse, colbert, queries, passages)
    hidden_q = encoder(queries["input_ids"], queries["attention_mask"]).last_hidden_state
    hidden_p = encoder(passages["input_ids"], passages["attention_mask"]).last_hidden_state
    q_RD = torch.cat([other_q, F.normalize(hidden_q[:, 0], dim=-1)])
    p_SD = torch.cat([other_p, F.normalize(hidden_p[:, 0], dim=-1)])
    glob = GlobalDense(dense_scores(q_RD, p_SD), row_offset=2,
                       teacher_scores_RG=torch.cat([other_teacher, teacher_QG]))
    cfg = LossConfig.preset("reference", kd_loss_type=kd_loss_type or "kl_div")
    ours = m3_loss(HeadScores(sparse=sparse_s, colbert=colbert_s), 3, 0, cfg,
                   teacher_scores_QG=None if kd_loss_type is None else teacher_QG, dense_global=glob)["loss"]
    ours.backward()
    torch.testing.assert_close(ours, ref_loss)
    for got, want in zip(_grads(modules), ref_grads):
        torch.testing.assert_close(got, want)
    assert torch.allclose(dense, glob.scores_RS[2:, 6:])  # the block m3_loss sliced for the ensemble


def test_global_dense_takes_exactly_one_row_layout() -> None:
    scores = torch.zeros(2, 4)
    assert GlobalDense(scores_QS=scores, row_offset=0).local_rows
    assert not GlobalDense(scores_RS=scores, row_offset=0).local_rows
    for rows in ({}, {"scores_RS": scores, "scores_QS": scores}):
        with pytest.raises(ValueError, match="exactly one of scores_RS"):
            GlobalDense(**rows, row_offset=0)
