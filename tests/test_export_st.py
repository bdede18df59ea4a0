"""Exports load as sentence-transformers models with our dense vectors, and carry a model card.

The card is checked twice: written from a saved run config, a real manifest and a real evaluation file
(fast), and as the trainer writes it at the stage ends of a real one-process training run (distributed:
it launches the run in a subprocess, through tests/train_scenarios.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from framework.config import to_dict
from framework.data.manifest import load_manifest
from framework.evaluate import BenchmarkConfig, EvalConfig, evaluate
from framework.evaluate.report import write_results
from framework.inference import M3Embedder
from framework.model import load_m3, save_m3
from framework.model.st_layout import read_st_layout
from framework.train.config import load_run_config
from framework.train.export import write_model_card
from framework.train.model_card import ModelCard
from tests.train_scenarios import REPO_ROOT, run_config

DDTP = REPO_ROOT / "data" / "ddtp" / "train"
# The last text is longer than the tiny model's 512 positions: both sides must truncate alike.
TEXTS = ["A quick brown fox jumps over the lazy dog.", "Ein schneller brauner Fuchs.", "素早い茶色の狐",
         "Быстрая коричневая лиса перепрыгивает через ленивую собаку.", "fox", " ".join(["Debian"] * 700)]
EVAL = EvalConfig(modes=("dense", "sparse"), k=10, candidates=10, progress=False,
                  benchmark=BenchmarkConfig(tasks=("de", "de-en"), max_queries=6, max_corpus=15))


@pytest.fixture(autouse=True)
def _quiet_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # local directories only: nothing may reach for the Hub
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, tmp_path_factory) -> Path:
    torch.manual_seed(1)
    model, tokenizer = load_m3(tiny_model_dir)  # no head files: fresh heads
    return save_m3(model, tokenizer, tmp_path_factory.mktemp("export"))


def assert_same_dense(model_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu")
    ours = M3Embedder.from_pretrained(model_dir).encode(TEXTS, dense=True, sparse=False, batch_size=2)["dense_vecs"]
    theirs = st.encode(TEXTS, batch_size=2, convert_to_numpy=True)
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    assert st.max_seq_length == read_st_layout(model_dir).max_seq_length
    assert st[0].auto_model.pooler is None  # built as load_m3 builds it: no random pooler to report


def test_export_loads_in_sentence_transformers_with_our_dense_vectors(exported: Path) -> None:
    assert_same_dense(exported)
    modules = json.loads((exported / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((exported / "1_Pooling" / "config.json").read_text())
    # text-embeddings-inference requires these four keys (its PoolConfig) and config.json's architectures.
    assert {k: pooling[k] for k in ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                                    "pooling_mode_mean_sqrt_len_tokens")} == {
        "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}
    assert json.loads((exported / "config.json").read_text())["architectures"] == ["XLMRobertaModel"]
    model, _ = load_m3(exported)
    assert read_st_layout(exported).embedding_dim == pooling["word_embedding_dimension"] == 32
    assert read_st_layout(exported).max_seq_length == model.max_positions == 512


def test_export_stays_a_plain_hf_directory(exported: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    encoder, tokenizer = AutoModel.from_pretrained(exported), AutoTokenizer.from_pretrained(exported)
    batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        cls = torch.nn.functional.normalize(encoder(**batch).last_hidden_state[:, 0], dim=-1)
    ours = M3Embedder.from_pretrained(exported).encode(TEXTS[:3], sparse=False)["dense_vecs"]
    np.testing.assert_allclose(cls.numpy(), ours, atol=1e-5)


def test_malformed_layout_is_named(exported: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(exported, tmp_path / "m")
    (tmp_path / "m" / "sentence_bert_config.json").write_text("{}")
    with pytest.raises(ValueError, match="malformed sentence-transformers files"):
        read_st_layout(tmp_path / "m")
    assert read_st_layout(tmp_path) is None  # no layout at all: not an error


# ---- the model card ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_shards(tmp_path_factory) -> Path:
    """Shards of two DDTP directions without a tokenizer (the card reads only the manifest's counts)."""
    from tools.make_shards import main as make_shards

    out = tmp_path_factory.mktemp("plain_shards")
    make_shards([str(DDTP / "de.jsonl.gz"), str(DDTP / "de-en.jsonl.gz"), "--out", str(out),
                 "--progress-seconds", "1000"])
    return out / "manifest.json"


def _saved_config(tmp_path: Path, model_dir: Path, manifest: Path) -> Path:
    """A two-stage run config as the trainer saves it (<output_dir>/config.yaml)."""
    first = {"name": "warmup", "steps": 5, "data": {"manifest": str(manifest), "sources": ["de"],
                                                    "source_weights": {"de": 0.5}, "group_size": 2},
             "optim": {"lr": 2e-4}}
    second = {"name": "unified", "samples": 640, "data": {"manifest": str(manifest), "group_size": 4},
              "loss": {"preset": "reference", "temperature": 0.05}, "optim": {"lr": 1e-4}}
    cfg = load_run_config(None, data={"name": "card-test", "output_dir": str(tmp_path / "run"),
                                      "model": {"path": str(model_dir)}, "stages": [first, second]})
    path = tmp_path / "run" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    return path


def test_model_card_lists_base_data_stages_evaluation_and_loaders(tmp_path, tiny_model_dir, exported,
                                                                  plain_shards) -> None:
    cfg = load_run_config(_saved_config(tmp_path, tiny_model_dir, plain_shards))
    torch.manual_seed(3)
    results = evaluate(M3Embedder.from_pretrained(exported), "ddtp", EVAL)
    write_results(results, tmp_path / "run" / "evaluations" / "unified.json")
    (tmp_path / "run" / "evaluations" / "warmup.json").write_text("{broken")
    export = Path(save_m3(*load_m3(exported), tmp_path / "run" / "exports" / "unified"))
    card = ModelCard.for_stage(cfg, 1)
    text = write_model_card(export, card).read_text(encoding="utf-8")
    metadata = yaml.safe_load(text.split("---")[1])
    assert metadata["library_name"] == "sentence-transformers"
    assert f"- Base model: `{tiny_model_dir}`" in text and "stage `unified` (2 of 2)" in text
    assert "| 1 | `warmup` | contrastive | 5 steps | 0.0002 | 2 |" in text
    assert "| 2 | `unified` | contrastive | 640 samples | 0.0001 | 4 |" in text and "loss.temperature=0.05" in text
    counts = load_manifest(plain_shards).samples_by_source()
    assert counts == {"de": 80, "de-en": 80}
    assert "| `warmup` | de | 80 | 0.5 |" in text and "| `warmup` | de-en |" not in text  # sources: [de]
    assert "| `unified` | de | 80 | 1 |" in text and "| `unified` | de-en | 80 | 1 |" in text
    assert "### After stage `unified`: ddtp (test), 2 task(s)" in text
    dense = results["overall"]["dense"]["ndcg_at_10"]
    assert any(line.startswith("| Dense ") and f"{100 * dense:.1f}" in line for line in text.splitlines())
    assert "warmup.json unreadable" in text  # a broken file is named, not dropped or fatal
    for loader in ("BGEM3FlagModel(", "SentenceTransformer(", "--pooling cls", "M3Embedder.from_pretrained("):
        assert loader in text, loader
    assert str(export.resolve()) in text


def test_card_of_an_unevaluated_encoder_export(tmp_path, tiny_model_dir, plain_shards) -> None:
    cfg = load_run_config(_saved_config(tmp_path, tiny_model_dir, plain_shards))
    text = ModelCard.for_stage(cfg, 0).render(Path(tiny_model_dir))  # a plain HF encoder: no heads, no layout
    assert "No stage of this run has been evaluated so far" in text and "`unified`" not in text
    assert "Heads: none" in text and "AutoModel.from_pretrained" in text and "SentenceTransformer(" not in text


# ---- a real training run -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tokenizer_dir: Path, tmp_path_factory) -> Path:
    from tools.make_shards import main as make_shards

    out = tmp_path_factory.mktemp("shards")
    make_shards([str(DDTP / "de.jsonl.gz"), str(DDTP / "de-en.jsonl.gz"), "--out", str(out), "--tokenizer",
                 str(tokenizer_dir), "--pretokenize", "--max-length", "128", "--progress-seconds", "1000"])
    return out / "manifest.json"


@pytest.mark.distributed
def test_training_run_writes_cards_and_sentence_transformers_exports(tmp_path, tiny_model_dir, shards) -> None:
    """A two-stage one-process run (real DeepSpeed engine, shards, evaluation at the second stage's end)."""
    first = run_config(tmp_path, tiny_model_dir, shards)["stages"][0]
    first["steps"] = 2
    second = dict(first, name="unified", evaluate={"benchmark": "ddtp-dev", "tasks": ["de", "de-en"],
                                                   "max_queries": 8})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([run_config(tmp_path / "run", tiny_model_dir, shards, stages=[first, second],
                                           name="card-run")]))
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "train_scenarios.py"), str(spec)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and not (tmp_path / "run" / "error.txt").exists(), done.stderr[-4000:]
    exports = tmp_path / "run" / "exports"
    warmup, unified = ((exports / s / "README.md").read_text(encoding="utf-8") for s in ("warmup", "unified"))
    assert "stage `warmup` (1 of 2)" in warmup and "| 2 | `unified`" not in warmup
    assert "No stage of this run has been evaluated so far" in warmup
    for row in ("| 1 | `warmup` | contrastive | 2 steps |", "| 2 | `unified` | contrastive | 2 steps |"):
        assert row in unified, row
    results = json.loads((tmp_path / "run" / "evaluations" / "unified.json").read_text())
    assert f"### After stage `unified`: {results['benchmark']} ({results['split']}), 2 task(s)" in unified
    assert_same_dense(exports / "unified")
