"""Inference API: ordering, MCLS, and clear errors on bad input."""
import numpy as np
import pytest
import torch

from framework.inference import M3Embedder, colbert_score, lexical_match_score
from framework.inference.mcls import insert_cls
from framework.model import ModelConfig, load_m3

TEXTS = ["short", "a somewhat longer sentence with more words in it", "mittellanger deutscher Satz",
         "日本語", "un texte français assez long pour être trié ailleurs que les autres phrases"]


@pytest.fixture(scope="module")
def embedder(tiny_model_dir):
    torch.manual_seed(2)
    model, tok = load_m3(tiny_model_dir)
    return M3Embedder(model, tok)


def test_batches_sorted_by_length_return_input_order(embedder):
    together = embedder.encode(TEXTS, colbert=True, batch_size=2)
    for i, text in enumerate(TEXTS):
        alone = embedder.encode([text], colbert=True)
        np.testing.assert_allclose(together["dense_vecs"][i], alone["dense_vecs"][0], atol=1e-5)
        assert together["lexical_weights"][i].keys() == alone["lexical_weights"][0].keys()
        np.testing.assert_allclose(together["colbert_vecs"][i], alone["colbert_vecs"][0], atol=1e-5)


def test_multi_vector_keyword_names_the_colbert_head(embedder):
    # framework/heads.py: colbert is the head's one name; the older keyword still asks for it.
    alias = embedder.encode(TEXTS[:2], dense=False, sparse=False, multi_vector=True)
    assert set(alias) == {"colbert_vecs"}
    for got, want in zip(alias["colbert_vecs"], embedder.encode(TEXTS[:2], dense=False, sparse=False,
                                                                  colbert=True)["colbert_vecs"]):
        np.testing.assert_array_equal(got, want)


def test_pair_scores_match_their_definitions(embedder):
    out = embedder.encode(TEXTS[:2], colbert=True)
    q, p = out["lexical_weights"]
    expected = sum(q[t] * p[t] for t in q if t in p)
    assert lexical_match_score(q, p) == pytest.approx(expected)
    qv, pv = out["colbert_vecs"]
    brute = np.mean([max(float(a @ b) for b in pv) for a in qv])
    assert colbert_score(qv, pv) == pytest.approx(brute, rel=1e-6)


def test_insert_cls_layout():
    seq = insert_cls(list(range(10, 30)), cls_id=0, eos_id=2, interval=8, max_length=64)
    assert seq[-1] == 2 and len(seq) == 20 + 3 + 1
    assert [i for i, t in enumerate(seq) if t == 0] == [0, 8, 16]  # a CLS opens every 8 positions
    truncated = insert_cls(list(range(10, 500)), cls_id=0, eos_id=2, interval=8, max_length=64)
    assert len(truncated) == 64 and truncated[-1] == 2 and truncated.count(0) == 8


def test_mcls_on_a_long_input(embedder):
    tok, model = embedder.tokenizer, embedder.model
    long_text = " ".join(["Ein langer Text über Füchse und Hunde, der weitergeht."] * 40)
    assert len(tok(long_text)["input_ids"]) > 256
    got = embedder.encode([long_text], sparse=False, mcls=True, mcls_interval=64, max_length=512)["dense_vecs"][0]
    # Brute force: the mean of the hidden states at every inserted CLS, normalised.
    seq = insert_cls(tok(long_text, add_special_tokens=False)["input_ids"], tok.cls_token_id,
                     tok.sep_token_id, 64, 512)
    with torch.no_grad():
        hidden = model.encoder(input_ids=torch.tensor([seq])).last_hidden_state[0]
    cls_rows = hidden[[i for i, t in enumerate(seq) if t == tok.cls_token_id]]
    assert len(cls_rows) == 8
    expected = torch.nn.functional.normalize(cls_rows.mean(0), dim=0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    plain = embedder.encode([long_text], sparse=False, max_length=512)["dense_vecs"][0]
    assert not np.allclose(got, plain, atol=1e-3)


def test_mcls_on_a_short_input_equals_plain_cls(embedder):
    mcls = embedder.encode(TEXTS, sparse=False, mcls=True)["dense_vecs"]
    plain = embedder.encode(TEXTS, sparse=False)["dense_vecs"]
    np.testing.assert_allclose(mcls, plain, atol=1e-5)


@pytest.mark.parametrize("texts, message", [
    (["ok", ""], r"texts\[1\] is empty"),
    (["ok", "   "], r"texts\[1\] is empty"),
    (["ok", 3], r"texts\[1\] is int"),
    ("one string", "wrap it"),
])
def test_bad_texts_are_named(embedder, texts, message):
    with pytest.raises(ValueError, match=message):
        embedder.encode(texts)


def test_lengths_beyond_positions(embedder):
    long_text = "mot " * 2000
    with pytest.raises(ValueError, match="exceeds the model's 512 positions"):
        embedder.encode(["x"], max_length=4096)
    with pytest.raises(ValueError, match=r"text 1 has \d+ tokens > max_length=512"):
        embedder.encode(["x", long_text], truncate=False)
    assert embedder.encode([long_text])["dense_vecs"].shape == (1, 32)  # truncated by default


def test_bad_pairs_and_weights(embedder):
    with pytest.raises(ValueError, match="2-tuples"):
        embedder.compute_score([("q", "p", "extra")])
    with pytest.raises(ValueError, match=r"queries\[0\] is empty"):
        embedder.compute_score([("", "p")])
    with pytest.raises(ValueError, match="3 non-negative weights"):
        embedder.compute_score([("q", "p")], weights=(1.0, 0.3))


def test_asking_for_a_head_that_is_off(tiny_model_dir):
    model, tok = load_m3(tiny_model_dir, ModelConfig(colbert=False))
    with pytest.raises(ValueError, match="colbert head is switched off"):
        M3Embedder(model, tok).encode(["x"], colbert=True)


def test_unpadded_encoding_equals_the_padded_one(tiny_model_dir):
    """Every head and MCLS give the same results with model.unpad on (the default) and off."""
    results = []
    for unpad in (True, False):
        torch.manual_seed(2)
        model, tok = load_m3(tiny_model_dir, ModelConfig(path=str(tiny_model_dir), unpad=unpad))
        embedder = M3Embedder(model, tok)
        assert model.unpadded == unpad
        out = embedder.encode(TEXTS, colbert=True, batch_size=3)
        out["mcls"] = embedder.encode(TEXTS * 8, sparse=False, mcls=True, mcls_interval=4, batch_size=16)["dense_vecs"]
        results.append(out)
    unpadded, padded = results
    np.testing.assert_allclose(unpadded["dense_vecs"], padded["dense_vecs"], atol=1e-5)
    np.testing.assert_allclose(unpadded["mcls"], padded["mcls"], atol=1e-5)
    for a, b in zip(unpadded["colbert_vecs"], padded["colbert_vecs"]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(unpadded["lexical_weights"], padded["lexical_weights"]):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)
