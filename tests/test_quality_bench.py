"""The quality bench's data, grouping and seed statistics (bench/quality_lib), on the shipped DDTP sample."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from bench.quality_lib.arms import ARM_CHAINS, STAGE_INDEX, TrainSettings, stage_config
from bench.quality_lib.data import HELD_OUT, Prefixes, write_subset
from bench.quality_lib.evaluation import group_means, task_group
from bench.quality_lib.stats import estimate, paired

DDTP = Path(__file__).resolve().parents[1] / "data" / "ddtp"


def rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_train_subset_drops_held_out_languages_and_prefixes_every_text(tmp_path: Path) -> None:
    counts = write_subset(DDTP / "train", tmp_path / "train", 10, HELD_OUT, Prefixes.me5())
    assert set(counts) == {p.name[:-9] for p in (DDTP / "train").glob("*.jsonl.gz")
                           if p.name.split("-")[0].split(".")[0] not in HELD_OUT}
    assert not any(d.split("-")[0] in HELD_OUT for d in counts)
    assert all(n == 10 for n in counts.values())
    for row in rows(tmp_path / "train" / "de-en.jsonl.gz"):
        assert row["query"].startswith("query: ") and not row["query"].startswith("query: query: ")
        assert all(t.startswith("passage: ") for t in row["pos"] + row["neg"]) and len(row["neg"]) == 7
    # Both directions of a language take the same packages.
    assert {r["md5"] for r in rows(tmp_path / "train" / "de.jsonl.gz")} == \
        {r["md5"] for r in rows(tmp_path / "train" / "de-en.jsonl.gz")}


def test_test_subset_is_a_prefix_of_the_sample_order(tmp_path: Path) -> None:
    small = write_subset(DDTP / "test", tmp_path / "small", 20)
    large = write_subset(DDTP / "test", tmp_path / "large", 60)
    assert len(small) == 29 and all(n <= 20 for n in small.values())
    for direction in ("en", "ja-en", "zh_CN"):
        a = {r["md5"] for r in rows(tmp_path / "small" / f"{direction}.jsonl.gz")}
        b = {r["md5"] for r in rows(tmp_path / "large" / f"{direction}.jsonl.gz")}
        assert a < b
    # A finished subset is reused, not rewritten.
    assert write_subset(DDTP / "test", tmp_path / "small", 999) == small


def test_groups_keep_held_out_languages_apart() -> None:
    assert [task_group(d) for d in ("de", "de-en", "ja", "zh_CN-en")] == \
        ["mono-seen", "cross-seen", "mono-held", "cross-held"]
    per_task = {"de": {"dense": {"ndcg_at_10": 0.8}}, "fr": {"dense": {"ndcg_at_10": 0.6}},
                "ja-en": {"dense": {"ndcg_at_10": 0.3}}}
    means = group_means(per_task)["dense"]
    assert means["mono-seen"] == pytest.approx(0.7)
    assert means["cross-held"] == pytest.approx(0.3)
    assert means["all"] == pytest.approx((0.8 + 0.6 + 0.3) / 3)
    assert "cross-seen" not in means


def test_paired_differences_and_standard_errors() -> None:
    diff = paired([0.5, 0.7, 0.6], [0.4, 0.5, 0.6])
    assert diff.values == pytest.approx((0.1, 0.2, 0.0))
    assert diff.mean == pytest.approx(0.1)
    assert diff.se == pytest.approx(0.1 / math.sqrt(3))
    assert paired([0.5, 0.7], 0.5).values == pytest.approx((0.0, 0.2))
    assert estimate([0.3]).se is None and estimate([0.3]).t is None
    with pytest.raises(ValueError, match="same seeds"):
        paired([0.1, 0.2], [0.1])


def test_stage_runs_of_all_arms_read_the_same_data_per_seed(tmp_path: Path) -> None:
    """Equal stage names get equal run seeds in every arm, so their streams match (the pairing of arms)."""
    settings = TrainSettings(manifest=tmp_path / "manifest.json", steps={"heads": 8, "warmup": 16, "unified": 32})
    seen: dict[str, set] = {}
    for arm, chain in ARM_CHAINS.items():
        for key, recipe_arm, stage in chain:
            config = stage_config(recipe_arm, stage, tmp_path / "start", tmp_path / key, 3, settings)
            assert [s["name"] for s in config["stages"]] == [stage]
            assert config["stages"][0]["steps"] == settings.steps[stage]
            assert config["stages"][0]["data"]["manifest"] == str(settings.manifest)
            seen.setdefault(stage, set()).add((config["seed"], json.dumps(config["stages"][0]["data"], sort_keys=True)))
    assert {stage: len(v) for stage, v in seen.items()} == {"heads": 1, "warmup": 1, "unified": 1}
    assert {stage: next(iter(v))[0] for stage, v in seen.items()} == {s: 3 + 1000 * i for s, i in STAGE_INDEX.items()}


def test_pooled_encoder_matches_the_m3_reading_and_an_unpadded_mean(tiny_model_dir: Path) -> None:
    """The bench's mE5-recipe encoder: CLS equals M3's dense head; mean pooling ignores padding and batch order."""
    import numpy as np
    import torch

    from bench.quality_lib.me5 import PooledEncoder
    from framework.inference import M3Embedder

    texts = ["kurz", "ein etwas längerer Satz mit mehr Wörtern darin", "日本語のテキスト", "a b c d e f g h"]
    encoder = PooledEncoder(str(tiny_model_dir))
    pooled = encoder.encode(texts, batch_size=3)
    dense = M3Embedder.from_pretrained(tiny_model_dir).encode(texts, dense=True, sparse=False)["dense_vecs"]
    np.testing.assert_allclose(pooled["cls"], dense, atol=1e-5)
    with torch.no_grad():
        for text, row in zip(texts, pooled["mean"]):
            ids = encoder.tokenizer(text, return_tensors="pt")
            mean = encoder.model(**ids).last_hidden_state[0].mean(0)
            np.testing.assert_allclose(row, torch.nn.functional.normalize(mean, dim=-1).numpy(), atol=1e-5)


def test_e5_demo_trains_with_the_recipe_settings() -> None:
    """`demo --start e5-small` runs configs/demo-e5-small.yaml: the recipe's curriculum, rates, freezes and
    losses (configs/recipes/e5-small-m3.yaml), shorter; the tiny model's rates are not used."""
    from framework.config import read_yaml
    from framework.demo import CONFIG, E5_CONFIG
    from framework.resources import demo_config
    from framework.train.config import load_run_config

    assert demo_config("e5-small") == E5_CONFIG != CONFIG == demo_config("tiny")
    demo, recipe = read_yaml(E5_CONFIG), read_yaml(Path(__file__).resolve().parents[1] / "configs" / "recipes"
                                                   / "e5-small-m3.yaml")
    assert [s["name"] for s in demo["stages"]] == [s["name"] for s in recipe["stages"]]
    for ours, theirs in zip(demo["stages"], recipe["stages"]):
        assert ours["optim"] == theirs["optim"] and ours["freeze"] == theirs["freeze"]
        assert ours["loss"] == theirs["loss"]
        for key in ("group_size", "query_max_length", "passage_max_length", "buckets"):
            assert ours["data"][key] == theirs["data"][key], key
    tiny_rates = {s["optim"]["lr"] for s in read_yaml(CONFIG)["stages"]}
    assert not tiny_rates & {s["optim"]["lr"] for s in demo["stages"] if s["name"] != "heads"}
    config = load_run_config(E5_CONFIG, ["model.path=/x", *(f"stages.{s['name']}.data.manifest=/m.json"
                                                             for s in demo["stages"])])
    assert [s.name for s in config.stages] == ["heads", "warmup", "unified"]


def test_e5_demo_final_table_compares_the_trained_model_with_its_start(capsys: pytest.CaptureFixture) -> None:
    from framework.demo import compare_with_start

    def results(dense: float, modes: tuple[str, ...]) -> dict:
        table = {m: {"ndcg_at_10": dense if m == "dense" else 0.5} for m in modes}
        return {"modes": list(modes), "overall": table, "groups": {"monolingual": table, "cross-lingual": table}}

    compare_with_start(results(0.90, ("dense", "sparse", "all")), results(0.85, ("dense",)))
    out = capsys.readouterr().out
    assert "| start (untouched), dense | 85.0 | 85.0 | 85.0 |" in out
    assert "| trained, dense | 90.0 | 90.0 | 90.0 |" in out and "| trained, sparse | 50.0 |" in out
    assert "+5.0 nDCG@10 against its start" in out


def test_targets_name_what_reproduced_and_refuse_a_noise_verdict_at_one_seed() -> None:
    from bench.quality_lib.targets import checks

    groups = ("all", "mono-seen", "cross-seen", "mono-held", "cross-held")

    def row(value: float) -> dict:
        return {g: value for g in groups}

    zero = {"dense": row(0.80), "mean_prefix": row(0.85), "all": row(0.88), "bm25": row(0.70)}
    m3 = {"dense": row(0.90), "sparse": row(0.60), "dense_sparse": row(0.89), "all": row(0.93)}
    summary = {"zero_shot": zero, "arms": {"m3": {0: m3}, "no_kd": {0: dict(m3, sparse=row(0.55))}},
               "zero_shot_per_task": {"de": {"bm25": 0.95}, "de-en": {"bm25": 0.5}},
               "arms_per_task": {"m3": {0: {"de": {"all": 0.93}, "de-en": {"all": 0.9}}}}}
    lines = checks(summary)
    assert lines[0].endswith("**reproduced**") and "+10.0 [+10.0]" in lines[0]
    assert "dense+sparse - dense -1.0 [-1.0] -> **not reproduced**" in lines[2]
    assert "**not decidable with one seed**" in lines[3] and "+5.0 [+5.0]" in lines[3]
    assert lines[5] == "monolingual directions where BM25 still beats (d) all: de by 2.0"
    assert lines[6].endswith("**reproduced**")
    summary["arms"]["no_kd"] = {0: dict(m3, sparse=row(0.55)), 1: dict(m3, sparse=row(0.57))}
    summary["arms"]["m3"] = {0: m3, 1: dict(m3, sparse=row(0.61))}
    assert checks(summary)[3].endswith("**reproduced**")  # +5 and +4: mean 4.5 > 2 x SE 0.5


def test_sweep_variants_name_their_stage_chain_and_refuse_unknown_names() -> None:
    from bench.recipe_sweep import Variant

    dense = Variant.parse("lr1e-4-noprefix")
    assert (dense.lr, dense.prefixes, dense.chain()) == (1e-4, False, [("lr1e-4-noprefix", "dense", "warmup")])
    adapted = Variant.parse("m3-lr2e-5-adapt")
    assert adapted.prefixes and [stage for _, _, stage in adapted.chain()] == ["warmup", "heads", "unified"]
    assert [arm for _, arm, _ in adapted.chain()] == ["dense", "m3", "m3"]
    assert adapted.sparse_init == "random" and Variant.parse("m3-lr2e-5-lexinit").sparse_init == "lexical"
    assert (adapted.head_lr, adapted.self_distill) == (None, True)
    heads_fast = Variant.parse("m3-lr2e-5-lexinit-headlr1e-3-nosd")
    assert (heads_fast.lr, heads_fast.head_lr, heads_fast.self_distill) == (2e-5, 1e-3, False)
    # Only the unified stage depends on -headlr/-nosd: the heads stage is the plain variant's (cached once).
    assert heads_fast.chain() == [("m3-lr2e-5-lexinit-heads", "m3", "heads"),
                                  ("m3-lr2e-5-lexinit-headlr1e-3-nosd", "m3", "unified")]
    for bad in ("lr-fast", "lr2e-5-adapt", "lr2e-5-lexinit", "lr2e-5-nosd", "m3-lr2e-5-nosd-headlr1e-3"):
        with pytest.raises(SystemExit, match="--variants"):
            Variant.parse(bad)


def test_compare_reports_pairs_seeds_of_two_reports_and_names_the_unshared_ones(tmp_path, capsys) -> None:
    from bench.compare_reports import main as compare

    def report(sparse_by_seed: dict[str, float]) -> dict:
        groups = ("all", "mono-seen", "cross-seen", "mono-held", "cross-held")
        return {"arms": {"m3": {s: {"sparse": dict.fromkeys(groups, v)} for s, v in sparse_by_seed.items()}}}

    base, new = report({"0": 0.50, "1": 0.60, "2": 0.40}), report({"0": 0.60, "1": 0.62, "3": 0.90})
    paths = [tmp_path / "base.json", tmp_path / "new.json"]
    for path, summary in zip(paths, (base, new)):
        path.write_text(json.dumps(summary))
    rows = compare([str(paths[0]), str(paths[1]), "--arms", "m3", "--modes", "sparse"])
    assert "seeds ['2', '3'] are in one report only" in capsys.readouterr().out
    assert rows[0][3:] == ["55.0", "61.0", "+6.0 ± 4.0", "+10.0 +2.0"]  # seeds 0 and 1 paired


def test_a_written_summary_loads_back_with_integer_seeds(tmp_path) -> None:
    from bench.quality_lib.report import load_summary

    summary = {"meta": {"mode": "quick"}, "arms": {"m3": {0: {"dense": {"all": 0.9}}, 2: {"dense": {"all": 0.8}}}},
               "exports": {"m3": {0: "runs/seed0/m3-unified/exports/unified"}}}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))  # JSON turns the seed keys into strings
    assert load_summary(path) == summary
