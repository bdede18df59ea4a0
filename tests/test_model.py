"""The M3 model's heads against their definitions (shared/reference/bge-m3-reference.md)."""
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertConfig, BertModel

from framework.data.collate import pad_to_multiple
from framework.model import ModelConfig, load_m3

TEXTS = ["Der schnelle braune Fuchs springt.", "Le renard brun rapide saute par-dessus le chien paresseux.",
         "東京は日本の首都です", "Привет"]


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    torch.manual_seed(0)
    return load_m3(tiny_model_dir)


def _batch(tok, texts):
    return pad_to_multiple(tok(texts)["input_ids"], tok.pad_token_id)


def test_heads_follow_the_reference_definitions(model_and_tok):
    model, tok = model_and_tok
    ids_BL, mask_BL = _batch(tok, TEXTS)
    with torch.no_grad():
        out = model(ids_BL, mask_BL)
        hidden_BLH = model.encoder(input_ids=ids_BL, attention_mask=mask_BL).last_hidden_state
        raw_BL = torch.relu(model.sparse_linear(hidden_BLH)).squeeze(-1)
    assert torch.allclose(out.dense_BD, F.normalize(hidden_BLH[:, 0], dim=-1), atol=1e-6)

    special = {tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    for b in range(len(TEXTS)):
        for pos in range(ids_BL.shape[1]):
            expected = 0.0 if int(ids_BL[b, pos]) in special else float(raw_BL[b, pos])
            assert float(out.sparse_BL[b, pos]) == pytest.approx(expected, abs=1e-6)

    B, L = ids_BL.shape
    assert out.colbert_BLC.shape == (B, L - 1, model.colbert_linear.out_features)
    assert torch.equal(out.colbert_mask_BL, mask_BL[:, 1:])
    norms_BL = out.colbert_BLC.norm(dim=-1)
    real = mask_BL[:, 1:].bool()
    assert torch.allclose(norms_BL[real], torch.ones_like(norms_BL[real]), atol=1e-5)
    assert torch.all(norms_BL[~real] == 0)


def test_padding_does_not_change_outputs(model_and_tok):
    model, tok = model_and_tok
    ids_BL, mask_BL = _batch(tok, TEXTS)
    with torch.no_grad():
        batch = model(ids_BL, mask_BL)
        alone = model(*_batch(tok, [TEXTS[3]]))
    n = alone.dense_BD.shape
    assert torch.allclose(batch.dense_BD[3:4], alone.dense_BD, atol=1e-5), n
    width = alone.sparse_BL.shape[1]
    assert torch.allclose(batch.sparse_BL[3, :width], alone.sparse_BL[0], atol=1e-5)
    assert torch.all(batch.sparse_BL[3, width:] == 0)


@pytest.mark.parametrize("heads", [(True, False, False), (False, True, False), (False, False, True)])
def test_heads_switch_off(tiny_model_dir, heads):
    dense, sparse, colbert = heads
    model, tok = load_m3(tiny_model_dir, ModelConfig(dense=dense, sparse=sparse, colbert=colbert))
    out = model(*_batch(tok, TEXTS[:2]))
    assert (out.dense_BD is not None) == dense
    assert (out.sparse_BL is not None) == sparse
    assert (out.colbert_BLC is not None) == colbert and (out.colbert_mask_BL is not None) == colbert


def test_all_heads_off_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        ModelConfig(dense=False, sparse=False, colbert=False)


def test_gradient_checkpointing_gives_same_gradients(tiny_model_dir):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, tok = load_m3(tiny_model_dir, ModelConfig(gradient_checkpointing=checkpointing))
        model.train()
        assert model.encoder.is_gradient_checkpointing == checkpointing
        out = model(*_batch(tok, TEXTS))
        (out.dense_BD.sum() + out.sparse_BL.sum() + out.colbert_BLC.sum()).backward()
        grads.append(model.encoder.embeddings.word_embeddings.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bert_family_encoder_works(tmp_path, tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    BertModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok = load_m3(tmp_path)
    assert model.max_positions == 128  # BERT positions start at 0, XLM-R's at padding_idx + 1
    out = model(*_batch(tok, TEXTS[:2]))
    assert out.dense_BD.shape == (2, 32) and torch.isfinite(out.colbert_BLC).all()


def test_lexical_sparse_init_scores_exact_token_overlap_and_still_learns(tiny_model_dir):
    from framework.loss.scores import sparse_scores

    weight = 0.2
    model, tok = load_m3(tiny_model_dir, ModelConfig(path=str(tiny_model_dir), sparse_init="lexical",
                                                     sparse_init_weight=weight))
    ids_BL, mask_BL = _batch(tok, TEXTS)
    out = model(ids_BL, mask_BL)
    special = set(model.unused_ids.tolist())
    for b in range(len(TEXTS)):
        for pos in range(ids_BL.shape[1]):
            real = bool(mask_BL[b, pos]) and int(ids_BL[b, pos]) not in special
            assert float(out.sparse_BL[b, pos].detach()) == pytest.approx(weight if real else 0.0, abs=1e-7)
    scores_QP = sparse_scores(out.sparse_BL, ids_BL, out.sparse_BL, ids_BL)
    for q in range(len(TEXTS)):
        for p in range(len(TEXTS)):
            shared = ({int(i) for i, m in zip(ids_BL[q], mask_BL[q]) if m} - special) & \
                     ({int(i) for i, m in zip(ids_BL[p], mask_BL[p]) if m} - special)
            assert float(scores_QP[q, p]) == pytest.approx(weight ** 2 * len(shared), rel=1e-5)
    scores_QP.diagonal().sum().backward()
    assert model.sparse_linear.weight.grad.abs().sum() > 0  # a zero weight still learns


def test_lexical_sparse_init_leaves_saved_heads_alone_and_refuses_bad_settings(tiny_model_dir, tmp_path):
    from framework.model import save_m3

    torch.manual_seed(0)
    model, tok = load_m3(tiny_model_dir)
    save_m3(model, tok, tmp_path / "m3")
    again, _ = load_m3(tmp_path / "m3", ModelConfig(path=str(tmp_path / "m3"), sparse_init="lexical"))
    assert torch.equal(again.sparse_linear.weight, model.sparse_linear.weight)
    with pytest.raises(ValueError, match="sparse_init='uniform'"):
        ModelConfig(sparse_init="uniform")
    with pytest.raises(ValueError, match="sparse_init_weight=0"):
        ModelConfig(sparse_init="lexical", sparse_init_weight=0)
