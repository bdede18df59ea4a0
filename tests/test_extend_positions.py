"""tools/extend_positions.py on the tiny XLM-R, a bge-m3 directory and a tiny BERT: same outputs within the
old length, longer inputs accepted, head files carried over, clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from framework.model.bge_format import HEAD_FILES, load_m3, save_m3
from tools.extend_positions import extend_positions, main

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_LINES = (REPO_ROOT / "data" / "multilingual_sample.txt").read_text(encoding="utf-8").splitlines()
TABLE = "embeddings.position_embeddings.weight"


@pytest.fixture(scope="module")
def extended_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extend_positions(tiny_model_dir, tmp_path_factory.mktemp("extended") / "model", max_positions=1024)


def hidden(model, ids_BL: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids_BL, attention_mask=mask_BL).last_hidden_state


def test_outputs_within_the_old_length_are_unchanged(tiny_model_dir: Path, extended_dir: Path) -> None:
    old = AutoModel.from_pretrained(tiny_model_dir).eval()
    new = AutoModel.from_pretrained(extended_dir).eval()
    assert (old.config.max_position_embeddings, new.config.max_position_embeddings) == (514, 1026)
    tokenizer = AutoTokenizer.from_pretrained(extended_dir)
    assert tokenizer.model_max_length == 1024
    # A padded batch of real text up to the full old length (512 tokens, all 512 old positions in use).
    texts = SAMPLE_LINES[:6] + [" ".join(SAMPLE_LINES[:200])]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    assert batch["input_ids"].shape[1] == 512
    assert torch.equal(hidden(old, batch["input_ids"], batch["attention_mask"]),
                       hidden(new, batch["input_ids"], batch["attention_mask"]))


def test_new_positions_are_the_old_rows_tiled_and_longer_inputs_run(tiny_model_dir: Path,
                                                                     extended_dir: Path) -> None:
    old_PH = load_file(tiny_model_dir / "model.safetensors")[TABLE]
    new_PH = load_file(extended_dir / "model.safetensors")[TABLE]
    assert new_PH.shape == (1026, old_PH.shape[1])
    assert torch.equal(new_PH[:514], old_PH)  # the 2 offset rows and the old block stay
    assert torch.equal(new_PH[514:], old_PH[2:])  # then the 512 real rows again
    tokenizer = AutoTokenizer.from_pretrained(extended_dir)
    ids = tokenizer(" ".join(SAMPLE_LINES[:300]), truncation=True, max_length=600, return_tensors="pt")
    assert ids["input_ids"].shape[1] == 600
    out = hidden(AutoModel.from_pretrained(extended_dir).eval(), ids["input_ids"], ids["attention_mask"])
    assert out.shape[1] == 600 and torch.isfinite(out).all()
    with pytest.raises((IndexError, RuntimeError)):  # what the extension is for
        hidden(AutoModel.from_pretrained(tiny_model_dir).eval(), ids["input_ids"], ids["attention_mask"])


def test_bge_m3_directory_keeps_its_head_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load_m3(tiny_model_dir)
    save_m3(model, tokenizer, tmp_path / "bge")
    # BAAI/bge-m3 ships pytorch_model.bin rather than safetensors.
    weights = tmp_path / "bge" / "model.safetensors"
    torch.save(load_file(weights), tmp_path / "bge" / "pytorch_model.bin")
    weights.unlink()
    (tmp_path / "bge" / "onnx").mkdir()  # a sub-directory holds the old length: left behind
    out = extend_positions(tmp_path / "bge", tmp_path / "bge8k", max_positions=700, verify=False)
    for name in HEAD_FILES.values():
        assert (out / name).read_bytes() == (tmp_path / "bge" / name).read_bytes()
    assert not (out / "onnx").exists() and (out / "pytorch_model.bin").is_file()
    extended, _ = load_m3(out)
    assert extended.max_positions == 700
    batch = tokenizer(SAMPLE_LINES[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        before, after = model.eval()(**batch), extended.eval()(**batch)
    assert torch.equal(before.dense_BD, after.dense_BD) and torch.equal(before.colbert_BLC, after.colbert_BLC)


def test_bert_positions_have_no_offset(tmp_path: Path) -> None:
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path / "bert")
    out = extend_positions(tmp_path / "bert", tmp_path / "bert100", max_positions=100)  # verifies outputs
    old_PH, new_PH = (load_file(d / "model.safetensors")[TABLE] for d in (tmp_path / "bert", out))
    assert new_PH.shape[0] == 100 and torch.equal(new_PH[:40], old_PH) and torch.equal(new_PH[80:], old_PH[:20])
    ids = torch.randint(1, 64, (1, 100))
    assert hidden(AutoModel.from_pretrained(out), ids, torch.ones_like(ids)).shape == (1, 100, 16)


def test_errors_say_what_to_do(tiny_model_dir: Path, extended_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="already reads 512 tokens"):
        extend_positions(tiny_model_dir, tmp_path / "a", max_positions=256)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        extend_positions(tmp_path, tmp_path / "b", max_positions=1024)
    with pytest.raises(ValueError, match="not empty"):
        extend_positions(tiny_model_dir, extended_dir, max_positions=2048)
    (tmp_path / "rotary").mkdir()
    (tmp_path / "rotary" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="no known learned position table"):
        extend_positions(tmp_path / "rotary", tmp_path / "c")
    with pytest.raises(SystemExit, match="extend_positions: .*already reads 512"):
        main([str(tiny_model_dir), str(tmp_path / "d"), "--max-positions", "512"])
