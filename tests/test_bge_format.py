"""BGE-M3 directories: our export loads in FlagEmbedding with equal outputs; real layouts load in ours."""
import json
import shutil

import numpy as np
import pytest
import torch

from framework.inference import M3Embedder
from framework.model import load_m3, save_m3

TEXTS = ["A quick brown fox jumps over the lazy dog.", "Ein schneller brauner Fuchs.",
         "素早い茶色の狐", "Быстрая коричневая лиса перепрыгивает через ленивую собаку, снова и снова.",
         "fox"]


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    torch.manual_seed(1)
    model, tok = load_m3(tiny_model_dir)  # no head files: fresh heads
    out = tmp_path_factory.mktemp("export")
    save_m3(model, tok, out)
    return out


def test_export_has_the_bge_m3_files(exported):
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "colbert_linear.pt",
                 "sparse_linear.pt"):
        assert (exported / name).is_file(), name
    assert json.loads((exported / "config.json").read_text())["model_type"] == "xlm-roberta"
    for name, rows in (("colbert_linear.pt", 32), ("sparse_linear.pt", 1)):
        state = torch.load(exported / name, weights_only=True)
        assert set(state) == {"weight", "bias"} and state["weight"].shape == (rows, 32)


def test_flagembedding_loads_our_export_with_equal_outputs(exported):
    from FlagEmbedding import BGEM3FlagModel

    ours = M3Embedder.from_pretrained(exported).encode(TEXTS, dense=True, sparse=True, colbert=True,
                                                       batch_size=2)
    ref = BGEM3FlagModel(str(exported), use_fp16=False, devices="cpu").encode(
        TEXTS, batch_size=2, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    np.testing.assert_allclose(ours["dense_vecs"], ref["dense_vecs"], atol=1e-5)
    assert any(ours["lexical_weights"])  # a random head may give a short text no positive weight
    for a, b in zip(ours["lexical_weights"], ref["lexical_weights"]):
        assert set(a) == set(b)
        assert all(abs(a[k] - b[k]) <= 1e-5 for k in a)
    for a, b in zip(ours["colbert_vecs"], ref["colbert_vecs"]):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_compute_score_matches_flagembedding(exported):
    from FlagEmbedding import BGEM3FlagModel

    pairs = [(TEXTS[0], TEXTS[1]), (TEXTS[4], TEXTS[3])]
    ours = M3Embedder.from_pretrained(exported).compute_score(pairs, weights=(0.4, 0.2, 0.4))
    ref = BGEM3FlagModel(str(exported), use_fp16=False, devices="cpu").compute_score(
        pairs, weights_for_different_modes=[0.4, 0.2, 0.4])
    for key in ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense"):
        np.testing.assert_allclose(ours[key], ref[key], atol=1e-5, err_msg=key)


def test_round_trip_keeps_outputs(exported, tmp_path):
    first = M3Embedder.from_pretrained(exported).encode(TEXTS, colbert=True)
    model, tok = load_m3(exported)
    save_m3(model, tok, tmp_path)
    second = M3Embedder.from_pretrained(tmp_path).encode(TEXTS, colbert=True)
    np.testing.assert_array_equal(first["dense_vecs"], second["dense_vecs"])
    assert first["lexical_weights"] == second["lexical_weights"]


def test_one_head_file_alone_is_refused(exported, tmp_path):
    shutil.copytree(exported, tmp_path / "m", dirs_exist_ok=True)
    (tmp_path / "m" / "sparse_linear.pt").unlink()
    with pytest.raises(ValueError, match="sparse_linear.pt"):
        load_m3(tmp_path / "m")


def test_malformed_head_file_is_refused(exported, tmp_path):
    shutil.copytree(exported, tmp_path / "m", dirs_exist_ok=True)
    torch.save({"w": torch.zeros(1, 32)}, tmp_path / "m" / "sparse_linear.pt")
    with pytest.raises(ValueError, match="'weight' and 'bias'"):
        load_m3(tmp_path / "m")


def test_missing_directory_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_model.py"):
        load_m3(tmp_path / "nothing")


def test_zero3_shards_are_not_saved_as_empty_weights(exported, tmp_path):
    model, tok = load_m3(exported)
    state = model.state_dict()
    state["sparse_linear.weight"] = torch.empty(0)  # what a ZeRO-3 rank holds before gathering
    with pytest.raises(ValueError, match="gather ZeRO-3"):
        save_m3(model, tok, tmp_path, state_dict=state)


def test_real_bge_m3_layout_loads(exported, tmp_path):
    """BAAI/bge-m3 ships pytorch_model.bin (with pooler weights) and sentence-transformers files."""
    model, tok = load_m3(exported)
    real = tmp_path / "bge-m3"
    real.mkdir()
    state = {k[len("encoder."):]: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    state["pooler.dense.weight"] = torch.zeros(32, 32)
    state["pooler.dense.bias"] = torch.zeros(32)
    torch.save(state, real / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "colbert_linear.pt",
                 "sparse_linear.pt"):
        shutil.copy(exported / name, real / name)
    (real / "1_Pooling").mkdir()
    (real / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    (real / "modules.json").write_text("[]")
    loaded = M3Embedder.from_pretrained(real).encode(TEXTS, colbert=True)
    original = M3Embedder.from_pretrained(exported).encode(TEXTS, colbert=True)
    np.testing.assert_allclose(loaded["dense_vecs"], original["dense_vecs"], atol=1e-6)
    for a, b in zip(loaded["colbert_vecs"], original["colbert_vecs"]):
        np.testing.assert_allclose(a, b, atol=1e-6)
