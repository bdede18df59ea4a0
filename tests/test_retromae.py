"""The RetroMAE stage: masking, enhanced decoding, training on real text, encoder hand-over, and the
document pipeline (text shards -> TextStream -> batches)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, XLMRobertaForMaskedLM

from framework.data.collate import pad_to_multiple
from framework.data.format import sample_key
from framework.data.manifest import load_manifest
from framework.data.plan import ShardRef
from framework.data.stream import StreamConfig, StreamState, loader
from framework.data.text_stream import TextStream
from framework.model.bge_format import load_m3
from framework.pretrain import RetroMAEConfig, RetroMAEObjective, special_tokens
from framework.pretrain.decoder import decoder_streams
from framework.pretrain.masking import (IGNORE_INDEX, choose_encoder_tokens, corrupt, decoder_visibility,
                                        mask_generator, ordinary_tokens)
from framework.data.prepare import ShardConfig, make_shards

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_LINES = (REPO_ROOT / "data" / "multilingual_sample.txt").read_text(encoding="utf-8").splitlines()
CFG = RetroMAEConfig(max_length=512, seed=3)


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def text_batch(tok, lines: list[str], max_length: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_to_multiple(tok(lines, truncation=True, max_length=max_length)["input_ids"], tok.pad_token_id)


# ---------------------------------------------------------------- masking


def test_encoder_masking_spares_specials_and_padding_and_hits_the_ratio(tok) -> None:
    tokens = special_tokens(tok)
    ids_BL, mask_BL = text_batch(tok, SAMPLE_LINES[:64])
    ordinary_BL = ordinary_tokens(ids_BL, mask_BL, torch.tensor(tokens.special_ids))
    assert mask_BL.sum() > ordinary_BL.sum() + 2 * 64 - 1, "padding and <s> </s> are not ordinary"

    def draw(step: int, rank: int = 0):
        generator = mask_generator(CFG.seed, step, rank, ids_BL.device)
        chosen_BL = choose_encoder_tokens(ordinary_BL, 0.3, generator)
        return (chosen_BL, *corrupt(ids_BL, chosen_BL, tokens, len(tok), 0.8, 0.1, generator))

    chosen_BL, corrupted_BL, labels_BL = draw(step=7)
    assert not (chosen_BL & ~ordinary_BL).any()
    wanted_B = (ordinary_BL.sum(1) * 0.3).round().clamp(min=1)
    assert torch.equal(chosen_BL.sum(1), wanted_B.long())
    assert torch.equal(corrupted_BL[~chosen_BL], ids_BL[~chosen_BL])  # specials, padding, unchosen intact
    assert torch.equal(labels_BL[chosen_BL], ids_BL[chosen_BL]) and (labels_BL[~chosen_BL] == IGNORE_INDEX).all()
    num = chosen_BL.sum().item()
    as_mask = (corrupted_BL[chosen_BL] == tokens.mask_id).sum().item() / num
    unchanged = (corrupted_BL[chosen_BL] == ids_BL[chosen_BL]).sum().item() / num
    assert num > 500 and abs(as_mask - 0.8) < 0.05 and abs(unchanged - 0.1) < 0.05
    replaced = corrupted_BL[chosen_BL & (corrupted_BL != tokens.mask_id) & (corrupted_BL != ids_BL)]
    assert not torch.isin(replaced, torch.tensor(tokens.special_ids)).any()

    again = draw(step=7)
    assert all(torch.equal(a, b) for a, b in zip(again, draw(step=7)))
    assert torch.equal(again[0], chosen_BL)
    assert not torch.equal(draw(step=8)[0], chosen_BL) and not torch.equal(draw(step=7, rank=1)[0], chosen_BL)


def test_decoder_attention_excludes_itself_and_padding(tok) -> None:
    ids_BL, mask_BL = text_batch(tok, SAMPLE_LINES[100:116])
    visible_BLK = decoder_visibility(mask_BL, 0.5, mask_generator(0, 1, 0, ids_BL.device))
    length = ids_BL.shape[1]
    assert not visible_BLK[:, torch.arange(1, length), torch.arange(1, length)].any(), "a token never sees itself"
    assert visible_BLK[:, :, 0].all(), "every position reads the sentence embedding"
    assert not (visible_BLK & ~mask_BL.bool()[:, None, :]).any(), "padding is never read"
    eligible_BLK = mask_BL.bool()[:, :, None] & mask_BL.bool()[:, None, :] & ~torch.eye(length, dtype=torch.bool)
    eligible_BLK[:, :, 0] = False
    kept = (visible_BLK & eligible_BLK).sum().item() / eligible_BLK.sum().item()
    assert abs(kept - 0.5) < 0.03
    assert torch.equal(visible_BLK, decoder_visibility(mask_BL, 0.5, mask_generator(0, 1, 0, ids_BL.device)))


def test_a_decoded_token_does_not_depend_on_its_own_id(tok, tiny_model_dir: Path) -> None:
    objective = RetroMAEObjective(AutoModel.from_pretrained(tiny_model_dir, add_pooling_layer=False), tok, CFG).eval()
    ids_BL, mask_BL = text_batch(tok, SAMPLE_LINES[200:202])
    visible_BLK = decoder_visibility(mask_BL, 0.5, mask_generator(0, 0, 0, ids_BL.device))
    sentence_BH = torch.randn(2, objective.encoder.config.hidden_size)

    def decode(input_ids_BL):
        streams = decoder_streams(objective.encoder.embeddings, objective.offset, sentence_BH, input_ids_BL)
        with torch.no_grad():
            return objective.decoder(*streams, visible_BLK)

    changed_BL = ids_BL.clone()
    changed_BL[:, 5] = 100
    before_BLH, after_BLH = decode(ids_BL), decode(changed_BL)
    assert torch.allclose(before_BLH[:, 5], after_BLH[:, 5], atol=1e-6)
    differs_BL = (before_BLH - after_BLH).abs().amax(-1) > 1e-6
    assert torch.equal(differs_BL, visible_BLK[:, :, 5]), "exactly the positions that read key 5 change"


# ---------------------------------------------------------------- objective


@pytest.fixture(scope="module")
def trained(tok, tiny_model_dir: Path) -> tuple[RetroMAEObjective, list[dict[str, float]]]:
    """40 AdamW steps of the objective on real text, 16 documents of up to 48 tokens per step."""
    # One thread: a hidden size of 32 gains nothing from two, and loses several times over when the
    # machine's cores are shared with other jobs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(tiny_model_dir, add_pooling_layer=False)
    objective = RetroMAEObjective(encoder, tok, CFG)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=3e-3)
    history = []
    try:
        for step in range(40):
            ids_BL, mask_BL = text_batch(tok, SAMPLE_LINES[16 * step:16 * step + 16])
            terms = objective(ids_BL, mask_BL, step)
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()
            history.append({k: v.item() for k, v in terms.items()})
    finally:
        torch.set_num_threads(threads)
    return objective, history


def test_objective_trains_with_falling_loss(trained) -> None:
    _, history = trained
    first, last = history[:5], history[-5:]
    for name in ("encoder_mlm_loss", "decoder_loss", "loss"):
        start, end = (sum(h[name] for h in part) / 5 for part in (first, last))
        assert end < 0.85 * start, f"{name}: {start:.2f} -> {end:.2f}"
    assert history[0]["loss"] == pytest.approx(history[0]["encoder_mlm_loss"] + history[0]["decoder_loss"])


def test_encoder_extraction_is_exactly_the_trained_encoder(trained, tok, tiny_model_dir: Path, tmp_path: Path) -> None:
    objective, _ = trained
    extracted = objective.encoder_state_dict()
    full = objective.state_dict()
    assert set(extracted) == set(objective.encoder.state_dict())
    assert all(torch.equal(value, full[f"encoder.{key}"]) for key, value in extracted.items())
    assert not any("decoder" in key or "lm_head" in key for key in extracted)
    words = objective.encoder.embeddings.word_embeddings.weight
    pairs = objective.external_parameters()  # what a ZeRO-3 trainer registers: the tied heads' table
    assert [(m, p is words) for m, p in pairs] == [(objective.encoder_mlm_head, True),
                                                   (objective.decoder_lm_head, True)]
    start = AutoModel.from_pretrained(tiny_model_dir, add_pooling_layer=False).state_dict()
    assert not torch.equal(start["embeddings.word_embeddings.weight"], extracted["embeddings.word_embeddings.weight"])

    model, _ = load_m3(objective.save_encoder(tmp_path / "adapted", tok))  # how the next stage starts
    reloaded = model.encoder.state_dict()
    assert all(torch.equal(reloaded[key], value) for key, value in extracted.items())


def test_pretrained_mlm_head_starts_the_encoder_head(tok, tiny_model_dir: Path, tmp_path: Path) -> None:
    mlm = XLMRobertaForMaskedLM(AutoModel.from_pretrained(tiny_model_dir).config)
    mlm.save_pretrained(tmp_path / "mlm")
    tok.save_pretrained(tmp_path / "mlm")
    objective, _ = RetroMAEObjective.from_pretrained(tmp_path / "mlm", CFG)
    assert torch.equal(objective.encoder_mlm_head.dense.weight, mlm.lm_head.dense.weight)
    assert torch.equal(objective.encoder.encoder.layer[0].output.dense.weight,
                       mlm.roberta.encoder.layer[0].output.dense.weight)


def test_config_errors_name_the_fix(tok, tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="encoder_mask_ratio=1.2"):
        RetroMAEConfig(encoder_mask_ratio=1.2)
    with pytest.raises(ValueError, match="sum to at most 1"):
        RetroMAEConfig(replace_with_mask=0.9, replace_with_random=0.2)
    with pytest.raises(ValueError, match="extend_positions.py"):
        RetroMAEObjective(AutoModel.from_pretrained(tiny_model_dir), tok, RetroMAEConfig(max_length=8192))


# ---------------------------------------------------------------- documents: shards -> stream -> batches


@pytest.fixture(scope="module")
def text_manifest(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text")
    (root / "web.txt").write_text("\n".join(SAMPLE_LINES[:90]) + "\n\n", encoding="utf-8")
    rows = [{"text": line, "lang": "xx"} for line in SAMPLE_LINES[90:130]]
    (root / "wiki.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    make_shards([root / "web.txt", root / "wiki.jsonl"],
                ShardConfig(out_dir=root / "shards", tokenizer=str(tokenizer_dir), pretokenize=True, max_length=64,
                            length_edges=(24, 40, 64), shard_size=16, progress_seconds=1e9))
    return root / "shards" / "manifest.json"


STREAM = StreamConfig.of({0: 3, 1: 4, 2: 4}, seed=1, num_workers=2, shuffle_window=8,
                      passage_max_length=48)


def test_text_stream_batches_every_document_once_in_lockstep(text_manifest: Path, tok) -> None:
    assert load_manifest(text_manifest).num_samples == 130
    runs = [list(loader(TextStream.from_manifest(text_manifest, STREAM, tok, rank, 2))) for rank in range(2)]
    assert [b.stream for b in runs[0]] == [b.stream for b in runs[1]] and len(runs[0]) >= 6
    keys = [k for run in runs for b in run for k in b.keys]
    assert len(keys) == len(set(keys))
    left = sum(TextStream.from_manifest(text_manifest, STREAM, tok, r, 2).plan(w).num_left_over
               for r in range(2) for w in range(2))
    assert len(keys) + left == 130
    texts = {sample_key("web", 0, i): line for i, line in enumerate(SAMPLE_LINES[:90])}
    texts |= {sample_key("wiki", 0, i): line for i, line in enumerate(SAMPLE_LINES[90:130])}
    for batch in runs[0]:
        assert batch.ids_BL.shape == batch.mask_BL.shape and batch.ids_BL.shape[1] % 8 == 0
        assert batch.ids_BL.shape[0] == STREAM.batch_sizes[batch.stream[1]]
        for row, key in enumerate(batch.keys):
            expected = tok(texts[key], truncation=True, max_length=64)["input_ids"]
            expected = expected if len(expected) <= 48 else expected[:47] + expected[-1:]
            assert batch.ids_BL[row][batch.mask_BL[row].bool()].tolist() == expected


def test_text_stream_resumes_exactly(text_manifest: Path, tok) -> None:
    full = list(loader(TextStream.from_manifest(text_manifest, STREAM, tok, 0, 2)))
    resumed = list(loader(TextStream.from_manifest(text_manifest, STREAM, tok, 0, 2, StreamState(0, 3))))
    assert [b.keys for b in resumed] == [b.keys for b in full[3:]]
    assert all(torch.equal(a.ids_BL, b.ids_BL) for a, b in zip(resumed, full[3:]))


def test_text_stream_counts_bad_records_and_refuses_pair_shards(tmp_path: Path, tok) -> None:
    path = tmp_path / "docs.tar"
    members = [{"text": line} for line in SAMPLE_LINES[:6]]
    members[2], members[4] = {"title": "no text"}, "{broken"
    with tarfile.open(path, "w") as tar:
        for i, member in enumerate(members):
            data = (member if isinstance(member, str) else json.dumps(member)).encode()
            info = tarfile.TarInfo(f"{sample_key('docs', 0, i)}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cfg = StreamConfig.of({0: 6}, num_workers=0, max_bad_fraction=0.5, bad_budget_after=1)
    (batch,) = TextStream([ShardRef(str(path), 6, "docs", 0)], cfg, tok, 0, 1)
    assert len(batch.keys) == 4 and batch.stats == {"missing_field": 1, "malformed_json": 1, "short_batches": 1}

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"query": "q", "pos": ["p"]}) + "\n")
    make_shards([pairs], ShardConfig(out_dir=tmp_path / "pairs", progress_seconds=1e9))
    with pytest.raises(ValueError, match="--kind text"):
        TextStream.from_manifest(tmp_path / "pairs" / "manifest.json", cfg, tok, 0, 1)
