"""Prompts per source (framework/data/sources.py): one rules file gives the texts' prefixes to shards (hence
training), mining, teacher scoring and evaluation; the export saves them and inference adds them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import webdataset as wds

from framework.data.format import decode_token_ids
from framework.data.manifest import merge_manifests
from framework.data.prepare import ShardConfig, make_shards
from framework.data.sources import (Prompts, RowPrompter, SourceRules, export_prompts, load_source_rules,
                                    prompts_for, stage_prompts)
from framework.data.stream import PairStream, StreamConfig
from framework.inference import M3Embedder
from framework.model import load_m3, save_m3
from framework.model.st_layout import read_prompts

REPO_ROOT = Path(__file__).resolve().parents[1]
LINES = [line.strip() for line in (REPO_ROOT / "data" / "multilingual_sample.txt").read_text(encoding="utf-8")
         .splitlines() if line.strip()]
E5 = {"query_prefix": "query: ", "passage_prefix": "passage: "}
RULES_YAML = ('"*": {query_prefix: "query: ", passage_prefix: "passage: "}\n'
              'nli: {query_prefix: "Retrieve a sentence that entails this one: ", record_prompt: false}\n')


def rows(source: str, n: int = 4, offset: int = 0, prompt: str | None = None) -> list[dict]:
    out = [{"query": LINES[offset + i].split(", ")[0], "pos": [LINES[offset + i]],
            "neg": [LINES[offset + i + 60], LINES[offset + i + 61]], "source": source} for i in range(n)]
    if prompt is not None:
        out[0]["prompt"] = prompt
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_prompts_resolve_per_source() -> None:
    rules = {"*": SourceRules(**E5), "nli": SourceRules(query_prefix="Q: ", record_prompt=False)}
    web, nli = prompts_for(rules, "web"), prompts_for(rules, "nli")
    assert web == Prompts("query: ", "passage: ", True) and nli == Prompts("Q: ", "passage: ", False)
    assert web.query("x", prompt="Find: ") == "Find: x" and nli.query("x", prompt="Find: ") == "Q: x"
    assert web.texts("q", ["a", "b"]) == ["query: q", "passage: a", "passage: b"]
    assert prompts_for({}, "web") == Prompts()   # no rules: nothing but records' own prompts
    assert prompts_for({}, "web", fallback=Prompts("s: ")) == Prompts("s: ")  # training: the shards' prompts
    assert export_prompts({"web": web}) == {"query": "query: ", "document": "passage: ", "passage": "passage: "}
    assert export_prompts({"web": Prompts()}) == {}
    assert export_prompts({"web": web, "nli": nli}) == {"nli/query": "Q: ", "nli/document": "passage: ",
                                                        "web/query": "query: ", "web/document": "passage: "}
    with pytest.raises(ValueError, match="query_prefix=1: use a str"):
        SourceRules(query_prefix=1)


@pytest.fixture(scope="module")
def prompted_shards(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """web and nli rows made into shards twice with the rules file: pretokenized and `.json` only."""
    tmp = tmp_path_factory.mktemp("prompted")
    rules = tmp / "rules.yaml"
    rules.write_text(RULES_YAML, encoding="utf-8")
    inputs = [write_jsonl(tmp / "web.jsonl", rows("web", prompt="Find the passage: ")),
              write_jsonl(tmp / "nli.jsonl", rows("nli", offset=10, prompt="ignored: "))]
    for name, pretokenize in (("tok", True), ("json", False)):
        make_shards(inputs, ShardConfig(out_dir=tmp / name, tokenizer=str(tokenizer_dir), pretokenize=pretokenize,
                                        max_length=128, length_edges=(128,), source_rules=load_source_rules(rules)))
    return tmp, rules


def test_shards_are_tokenized_with_the_prompts_and_record_them(prompted_shards, tokenizer_dir: Path) -> None:
    tmp, rules = prompted_shards
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    manifest = json.loads((tmp / "tok" / "manifest.json").read_text())
    assert manifest["prompts"] == {
        "nli": {"query_prefix": "Retrieve a sentence that entails this one: ", "passage_prefix": "passage: ",
                "record_prompt": False},
        "web": {"query_prefix": "query: ", "passage_prefix": "passage: ", "record_prompt": True}}
    urls = [str(tmp / "tok" / shard["path"]) for shard in manifest["shards"]]
    seen = 0
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        record = json.loads(sample["json"])
        prompts = prompts_for(load_source_rules(rules), record["source"])
        ids = [a.tolist() for a in decode_token_ids(sample["tok"])]
        texts = prompts.texts(record["query"], record["pos"] + record["neg"], record.get("prompt"))
        assert ids == [tokenizer(t, truncation=True, max_length=128)["input_ids"] for t in texts]
        assert "query" in record and not record["query"].startswith("query: ")  # the .json keeps the record
        seen += record.get("prompt") == "Find the passage: "
    assert seen == 1


def test_training_reads_the_shards_prompts_and_refuses_others(prompted_shards, tokenizer_dir: Path) -> None:
    """`.json`-only shards are prefixed at decoding as `.tok` shards were when made: the same batches. A stage
    that asks for other prompts than the shards' is refused, naming both; one that names none takes theirs."""
    tmp, rules = prompted_shards
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    batches = {}
    for name in ("tok", "json"):
        cfg = StreamConfig.of({0: 4}, group_size=3, seed=2, query_max_length=64, passage_max_length=64)
        batches[name] = sorted(PairStream.from_manifest(tmp / name / "manifest.json", cfg, tokenizer, 0, 1),
                               key=lambda b: b.source)
    assert [b.source for b in batches["tok"]] == ["nli", "web"]
    for a, b in zip(batches["tok"], batches["json"]):
        assert torch.equal(a.q_ids_QL, b.q_ids_QL) and torch.equal(a.p_ids_PL, b.p_ids_PL)
    prefix = tokenizer("query: ", add_special_tokens=False)["input_ids"]
    web = batches["tok"][1]
    assert sum(row[1:1 + len(prefix)].tolist() == prefix for row in web.q_ids_QL) == 3  # one has its own prompt
    assert stage_prompts({}, tmp / "tok" / "manifest.json")["web"] == prompts_for(load_source_rules(rules), "web")
    assert export_prompts(stage_prompts({}, tmp / "tok" / "manifest.json", ["web"])) == \
        {"query": "query: ", "document": "passage: ", "passage": "passage: "}
    with pytest.raises(ValueError, match=r"data\.source_rules\.\* gives source 'nli' query_prefix='', .*but its "
                                         r"shards in .*manifest\.json were made with query_prefix='Retrieve"):
        stage_prompts({"*": SourceRules(query_prefix="")}, tmp / "tok" / "manifest.json")
    with pytest.raises(ValueError, match="gives source 'nli'"):
        cfg = StreamConfig.of({0: 4}, group_size=3, source_rules={"nli": SourceRules(passage_prefix="")})
        PairStream.from_manifest(tmp / "json" / "manifest.json", cfg, tokenizer, 0, 1)


def test_merging_parts_made_with_other_prompts_is_refused(tokenizer_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "web.jsonl", rows("web", n=8))
    for part, rules in ((0, {"*": SourceRules(**E5)}), (1, {})):
        make_shards([data], ShardConfig(out_dir=tmp_path / "out", tokenizer=str(tokenizer_dir), part=part,
                                        num_parts=2, source_rules=rules))
    parts = sorted((tmp_path / "out").glob("manifest-part*.json"))
    with pytest.raises(ValueError, match="source 'web' was prefixed with"):
        merge_manifests(parts, tmp_path / "out" / "manifest.json")


@pytest.fixture(scope="module")
def prompted_export(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model, tokenizer = load_m3(tiny_model_dir)
    prompts = export_prompts({"web": Prompts(**E5)})
    return save_m3(model, tokenizer, tmp_path_factory.mktemp("export"), prompts=prompts)


def test_the_export_saves_the_prompts_and_inference_adds_them(prompted_export: Path) -> None:
    from sentence_transformers import SentenceTransformer

    assert read_prompts(prompted_export) == {"query": "query: ", "document": "passage: ", "passage": "passage: "}
    embedder = M3Embedder.from_pretrained(prompted_export)
    texts = LINES[:3]
    plain = embedder.encode(["query: " + t for t in texts], sparse=False)["dense_vecs"]
    np.testing.assert_allclose(embedder.encode(texts, sparse=False, is_query=True)["dense_vecs"], plain, atol=1e-6)
    np.testing.assert_allclose(embedder.encode(texts, sparse=False, prompt_name="passage")["dense_vecs"],
                               embedder.encode(["passage: " + t for t in texts], sparse=False)["dense_vecs"], atol=1e-6)
    assert not np.allclose(embedder.encode(texts, sparse=False)["dense_vecs"], plain, atol=1e-4)  # none without
    st = SentenceTransformer(str(prompted_export), device="cpu")
    np.testing.assert_allclose(st.encode(texts, prompt_name="query"), plain, atol=1e-5)
    np.testing.assert_allclose(st.encode_query(texts), plain, atol=1e-5)
    np.testing.assert_allclose(st.encode_document(texts), embedder.encode(texts, sparse=False, is_query=False)
                               ["dense_vecs"], atol=1e-5)
    with pytest.raises(ValueError, match=r"prompt_name='doc' is not among this model's prompts"):
        embedder.encode(texts, prompt_name="doc")


@pytest.fixture(scope="module")
def m3_teacher_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its heads saved and no prompts (a BGE-M3 export)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, tokenizer = load_m3(tiny_model_dir)
    return save_m3(model, tokenizer, tmp_path_factory.mktemp("m3_teacher"))


def test_scoring_and_mining_see_the_texts_as_training_does(m3_teacher_dir: Path, tmp_path: Path) -> None:
    """With the rules file, the teacher scores and the dense retriever ranks exactly what they would on rows
    prefixed by hand; the rows written keep their own texts."""
    from framework.teacher import M3TeacherConfig, ScoreFileConfig, load_teacher, score_file
    from tools.mining import MiningConfig, mine

    rules = {"*": SourceRules(**E5)}
    records = rows("web", n=6, prompt="Find the passage: ")
    by_hand = [{**r, "query": r.get("prompt", "query: ") + r["query"], "pos": ["passage: " + p for p in r["pos"]],
                "neg": ["passage: " + p for p in r["neg"]]} for r in records]
    for r in by_hand:
        r.pop("prompt", None)
    plain, prefixed = write_jsonl(tmp_path / "web.jsonl", records), write_jsonl(tmp_path / "hand.jsonl", by_hand)
    teacher = load_teacher(M3TeacherConfig(str(m3_teacher_dir)))
    score_file(plain, tmp_path / "scored.jsonl", teacher, ScoreFileConfig(source_rules=rules))
    score_file(prefixed, tmp_path / "scored_hand.jsonl", teacher)
    score_file(plain, tmp_path / "scored_none.jsonl", teacher)
    read = lambda name: [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]  # noqa: E731
    scored, hand, none = read("scored.jsonl"), read("scored_hand.jsonl"), read("scored_none.jsonl")
    assert [r["pos_scores"] + r["neg_scores"] for r in scored] == [r["pos_scores"] + r["neg_scores"] for r in hand]
    assert [r["pos_scores"] for r in scored] != [r["pos_scores"] for r in none]
    assert [r["query"] for r in scored] == [r["query"] for r in records]
    options = dict(model=str(m3_teacher_dir), method="dense", num_neg=2, range_start=0, range_end=4)
    mine(plain, tmp_path / "mined.jsonl", MiningConfig(**options, source_rules=rules))
    mine(prefixed, tmp_path / "mined_hand.jsonl", MiningConfig(**options))
    mined, mined_hand = read("mined.jsonl"), read("mined_hand.jsonl")
    assert [["passage: " + n for n in r["neg"]] for r in mined] == [r["neg"] for r in mined_hand]
    assert [r["query"] for r in mined] == [r["query"] for r in records]


def test_evaluation_uses_the_saved_prompts(prompted_export: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The export's prompts, the same prompts given to an export without them, and the live weights
    evaluated during training with the task's prompts: one result."""
    from framework.evaluate import evaluate
    from framework.evaluate.config import BenchmarkConfig, EvalConfig
    from framework.train.config import DataConfig, StageConfig
    from framework.train.evaluation import LiveEvaluation

    cfg = EvalConfig(benchmark_name="ddtp-dev", modes=("dense", "sparse"), progress=False,
                     benchmark=BenchmarkConfig(tasks=("de",), max_queries=8))
    saved = evaluate(prompted_export, "ddtp-dev", cfg)
    assert saved["prompts"] == {"query": "query: ", "passage": "passage: "}
    model, tokenizer = load_m3(prompted_export)
    bare = save_m3(model, tokenizer, tmp_path / "bare")
    given = evaluate(bare, "ddtp-dev", EvalConfig(**{**cfg.__dict__, "query_prompt": "query: ",
                                                     "passage_prompt": "passage: "}))
    stage = StageConfig(name="s", steps=2, data=DataConfig(manifest="m.json"),
                        evaluate=EvalConfig(**{**cfg.__dict__, "every_steps": 1}))
    live = LiveEvaluation(stage, model, tokenizer, torch.device("cpu"), read_prompts(prompted_export))()
    none = evaluate(bare, "ddtp-dev", cfg)
    assert none["prompts"] == {"query": "", "passage": ""}
    for results in (given, live):
        assert results["overall"] == saved["overall"]
    assert saved["per_task"] != none["per_task"]


def test_row_prompter_resolves_sources_as_make_shards() -> None:
    rules = {"*": SourceRules(**E5), "nli": SourceRules(query_prefix="Q: ")}
    prompter = RowPrompter(rules, default_source="nli")
    assert prompter.query({"query": "x"}, "x") == "Q: x"                        # the file's source
    assert prompter.query({"source": "web"}, "x") == "query: x"                  # the row's own
    assert prompter.query({"source": "web", "prompt": "P: "}, "x") == "P: x"      # the record's prompt
    assert RowPrompter(rules, "nli", forced_source="web").passage({"source": "nli"}, "y") == "passage: y"


def test_the_model_card_says_which_prompts_to_add(prompted_export: Path) -> None:
    from framework.train.model_card import usage

    text = usage(prompted_export)
    assert '`document`: "passage: ", `passage`: "passage: ", `query`: "query: "' in text and "encode_query" in text
    assert text.index("Prompts:") < text.index("BGEM3FlagModel(")


def _stage_config(tmp_path: Path, model_dir: Path, manifest: Path, source_rules: dict) -> dict:
    from tests.train_scenarios import run_config

    cfg = run_config(tmp_path / "run", model_dir, manifest, tracking_uri=None)
    data = cfg["stages"][0]["data"]
    data.update(group_size=3, source_rules=source_rules)
    return cfg


def test_a_stage_asking_for_other_prompts_is_refused_before_any_step(prompted_shards, tiny_model_dir: Path,
                                                                     tmp_path: Path) -> None:
    from framework.config import from_dict
    from framework.train.config import RunConfig
    from framework.train.preflight import PreflightError, check_run

    tmp, _ = prompted_shards
    manifest = tmp / "tok" / "manifest.json"
    wrong = from_dict(RunConfig, _stage_config(tmp_path, tiny_model_dir, manifest, {"web": {"passage_prefix": ""}}))
    with pytest.raises(PreflightError, match=r"stages\.warmup: data\.source_rules\.web gives source 'web' "
                                             r"query_prefix='query: ', passage_prefix=''"):
        check_run(wrong, done={}, point=None, world=1)
    right = _stage_config(tmp_path, tiny_model_dir, manifest, {"nli": {"in_batch_negatives": False}})
    check_run(from_dict(RunConfig, right), done={}, point=None, world=1)


@pytest.mark.slow
def test_training_saves_the_shards_prompts_with_the_export(prompted_shards, tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    """A real stage (DeepSpeed, one process) over both sources mixed in its batches, nli without in-batch
    negatives: the export names each source's prompts (they differ) and the duplicates masked are logged."""
    from tests.test_train import _drive

    tmp, rules = prompted_shards
    cfg = _stage_config(tmp_path, tiny_model_dir, tmp / "tok" / "manifest.json", {"nli": {"in_batch_negatives": False}})
    _drive([cfg], tmp_path)
    nli, web = (prompts_for(load_source_rules(rules), s) for s in ("nli", "web"))
    assert read_prompts(tmp_path / "run" / "exports" / "warmup") == {
        "nli/query": nli.query_prefix, "nli/document": "passage: ", "web/query": "query: ", "web/document": "passage: "}
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("masked_duplicates" in row for row in logged)
