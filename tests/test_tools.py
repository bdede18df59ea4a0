"""Tests of the tokenizer and tiny-model builders (framework/starting/) and their command lines (tools/), on the
shipped sample and real transformers classes."""
from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import AutoModel, AutoTokenizer

from framework.starting import SIZES, build_config, build_model, pair_texts, train_tokenizer, write_tokenizer_text
from tools.train_tokenizer import main as train_tokenizer_main

MULTILINGUAL = {
    "latin": "République fédérale d'Allemagne",
    "cyrillic": "Республика Беларусь",
    "greek": "Ελλάδα",
    "arabic": "جمهورية مصر العربية",
    "chinese": "中华人民共和国",
    "japanese": "ドイツ語",
    "korean": "대한민국",
}


def test_sample_covers_many_scripts(sample_text_file: Path) -> None:
    text = sample_text_file.read_text(encoding="utf-8")
    scripts = {unicodedata.name(ch).split()[0] for ch in set(text) if ch.isalpha()}
    for script in ("LATIN", "CYRILLIC", "GREEK", "ARABIC", "CJK", "HIRAGANA", "KATAKANA", "HANGUL", "HEBREW"):
        assert script in scripts, f"sample lacks {script}"
    assert sample_text_file.stat().st_size < 500_000


def test_special_ids_follow_xlmr(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert type(tokenizer).__name__ == "XLMRobertaTokenizer"
    assert (tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        0, 1, 2, 3)
    assert tokenizer.bos_token_id == 0 and tokenizer.sep_token_id == 2
    assert len(tokenizer) == 3002
    assert tokenizer.mask_token_id == len(tokenizer) - 1
    assert tokenizer("abc").input_ids[0] == 0 and tokenizer("abc").input_ids[-1] == 2


def test_bge_m3_layout(tokenizer_dir: Path) -> None:
    for name in ("sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tokenizer_dir / name).is_file(), name
    special = json.loads((tokenizer_dir / "special_tokens_map.json").read_text())
    assert special["cls_token"] == "<s>" and special["pad_token"] == "<pad>" and special["mask_token"] == "<mask>"


def test_ids_are_spm_ids_shifted_by_fairseq_offset(tokenizer_dir: Path) -> None:
    processor = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "sentencepiece.bpe.model"))
    assert [processor.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    for text in MULTILINGUAL.values():
        hf_ids = tokenizer(text, add_special_tokens=False).input_ids
        assert hf_ids == [i + 1 for i in processor.encode(text)], text


@pytest.mark.parametrize("script", sorted(MULTILINGUAL))
def test_round_trip_without_unknowns(tokenizer_dir: Path, script: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    text = MULTILINGUAL[script]
    ids = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_vocab_has_multi_character_pieces_in_each_script(tokenizer_dir: Path) -> None:
    num_pieces_by_script: Counter[str] = Counter()
    for piece in AutoTokenizer.from_pretrained(str(tokenizer_dir)).get_vocab():
        letters = piece.replace("\u2581", "")
        scripts = {unicodedata.name(ch).split()[0] for ch in letters if ch.isalpha()}
        if len(letters) >= 2 and len(scripts) == 1:
            num_pieces_by_script[scripts.pop()] += 1
    # Learnt subwords, not one id per character, in every major script of the sample.
    for script in ("LATIN", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "CJK", "HANGUL", "KATAKANA"):
        assert num_pieces_by_script[script] >= 3, (script, num_pieces_by_script)


def test_unseen_characters_become_unk(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert tokenizer.unk_token_id in tokenizer("🦜", add_special_tokens=False).input_ids


def test_cli_retraining_gives_identical_files(tokenizer_dir: Path, sample_text_file: Path,
                                              tmp_path: Path) -> None:
    train_tokenizer_main([str(sample_text_file), "--out-dir", str(tmp_path), "--vocab-size", "3000"])
    for name in ("sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (tokenizer_dir / name).read_bytes(), name


def test_tiny_model_loads_and_runs(tiny_model_dir: Path) -> None:
    model = AutoModel.from_pretrained(str(tiny_model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert type(model).__name__ == "XLMRobertaModel"
    config = model.config
    assert (config.vocab_size, config.pad_token_id, config.bos_token_id, config.eos_token_id) == (
        len(tokenizer), 1, 0, 2)
    assert config.max_position_embeddings == 514 and config.type_vocab_size == 1
    assert tokenizer.model_max_length == 512
    batch = tokenizer(list(MULTILINGUAL.values()), padding=True, return_tensors="pt")
    assert (batch["input_ids"] == 1).any(), "padding should use <pad>=1"
    with torch.no_grad():
        hidden_BLH = model(**batch).last_hidden_state
    assert hidden_BLH.shape == (len(MULTILINGUAL), batch["input_ids"].shape[1], 32)
    assert torch.isfinite(hidden_BLH).all()
    # Random init, not zeros: embeddings carry the config's initializer_range.
    assert 0.01 < model.embeddings.word_embeddings.weight.std().item() < 0.04


def test_build_model_is_deterministic_by_seed(tokenizer_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    same = build_model(tokenizer_dir, tmp_path / "same", size="tiny", seed=0)
    other = build_model(tokenizer_dir, tmp_path / "other", size="tiny", seed=1)
    reference = (tiny_model_dir / "model.safetensors").read_bytes()
    assert (same / "model.safetensors").read_bytes() == reference
    assert (other / "model.safetensors").read_bytes() != reference


def test_max_positions_override(tokenizer_dir: Path, tmp_path: Path) -> None:
    out_dir = build_model(tokenizer_dir, tmp_path, size="tiny", max_positions=64)
    assert AutoModel.from_pretrained(str(out_dir)).config.max_position_embeddings == 66
    assert AutoTokenizer.from_pretrained(str(out_dir)).model_max_length == 64


def test_large_config_has_bge_m3_shape() -> None:
    config = build_config("large", 250002, 8192)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1024, 24, 16)
    assert config.intermediate_size == 4096 and config.max_position_embeddings == 8194
    assert config.vocab_size == 250002 and config.model_type == "xlm-roberta"
    assert build_config("large", 250002).max_position_embeddings == 8194


def test_base_config_has_xlmr_base_shape() -> None:
    config = build_config("base", 250002)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert config.intermediate_size == 3072 and config.max_position_embeddings == 514
    assert set(SIZES) == {"tiny", "base", "large"}


def test_missing_text_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_tokenizer([tmp_path / "nope.txt"], tmp_path / "out")


def test_empty_text_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="hold no text"):
        train_tokenizer([empty], tmp_path / "out")


def test_vocab_too_large_for_text_names_the_fix(tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("a tiny text\nwith two lines\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lower vocab_size"):
        train_tokenizer([small], tmp_path / "out", vocab_size=3000)


def test_unknown_size_lists_valid_ones(tokenizer_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiny"):
        build_config("huge", 1000)
    with pytest.raises(ValueError, match="unknown model size"):
        build_model(tokenizer_dir, tmp_path, size="huge")


def test_missing_tokenizer_dir_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train_tokenizer.py"):
        build_model(tmp_path / "absent", tmp_path / "out")


def test_tokenizer_text_is_the_sample_then_each_rows_query_and_positives(tmp_path: Path,
                                                                         sample_text_file: Path) -> None:
    import gzip

    pairs = tmp_path / "pairs"
    pairs.mkdir()
    rows = {"b.jsonl.gz": [{"query": "q2", "pos": ["p shared"]}],
            "a.jsonl.gz": [{"query": " q1 ", "pos": ["p shared", "p1"], "neg": ["never"]},
                           {"query": "q1", "pos": ["  "]}]}
    for name, records in rows.items():
        with gzip.open(pairs / name, "wt", encoding="utf-8") as out:
            out.writelines(json.dumps(r) + "\n" for r in records)
    assert pair_texts(pairs) == [" q1 ", "p shared", "p1", "q1", "  ", "q2", "p shared"]
    assert pair_texts(pairs, distinct=True) == ["q1", "p shared", "p1", "q2"]
    written = write_tokenizer_text(tmp_path / "text.txt", ["q1", "p1"])
    assert written.read_text(encoding="utf-8") == sample_text_file.read_text(encoding="utf-8") + "q1\np1\n"
