"""DDTP corpus builder (tools/build_ddtp.py, tools/ddtp/): parser, join, split, mining, shipped sample.

The Translation excerpts below are verbatim blocks of Debian bookworm's main/i18n/Translation-{en,de,ja,
zh_CN,ko} (fetched 2026-07 with tools/build_ddtp.py). No test touches the network or apt.
"""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tools.ddtp.build import SAMPLE_DIR, load_descriptions, parse_args, prepare
from tools.ddtp.export import beir_from_rows, read_beir, read_jsonl_gz
from tools.ddtp.fetch import (decompress, find_translation_files, read_translation, translation_language,
                              write_apt_config)
from tools.ddtp.mine import build_index, tokenize
from tools.ddtp.negatives import mine_train
from tools.ddtp.pairs import SPLITS, Pair, all_pairs, assign_splits, group_md5s, index_by_md5, split_of
from tools.ddtp.parse import parse_translation
from tools.ddtp.sample import SAMPLE_CAPS, counts_table

REPO_ROOT = Path(__file__).resolve().parents[1]

EN = """\
Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-en: Real-time strategy game of ancient warfare
 0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform
 real-time strategy (RTS) game of ancient warfare. In short, it is a
 historically-based war/economy game that allows players to relive or rewrite
 the history of Western civilizations, focusing on the years between 500 B.C.
 and 500 A.D. The project is highly ambitious, involving state-of-the-art 3D
 graphics, detailed artwork, sound, and a flexible and powerful custom-built
 game engine.

Package: 0ad-data
Description-md5: 26581e685027d5ae84824362a4ba59ee
Description-en: Real-time strategy game of ancient warfare (data files)
 0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform
 real-time strategy (RTS) game of ancient warfare. In short, it is a
 historically-based war/economy game that allows players to relive or rewrite
 the history of Western civilizations, focusing on the years between 500 B.C.
 and 500 A.D. The project is highly ambitious, involving state-of-the-art 3D
 graphics, detailed artwork, sound, and a flexible and powerful custom-built
 game engine.
 .
 This package contains the main data files required by 0 A.D.

Package: gdbmtool
Description-md5: b1f4f9a5e4f9a937cd5719411d673cf6
Description-en: GNU dbm database routines (command line tools) \n\
 GNU dbm ('gdbm') is a library of database functions that use extendible
 hashing and works similarly to the standard UNIX 'dbm' functions.
 .
 The basic use of 'gdbm' is to store key/data pairs in a data file, thus
 providing a persistent version of the 'dictionary' Abstract Data Type
 ('hash' to perl programmers).
 This package includes following command line tools:
 .
  * gdbm_dump -- dump database content into system-independant format
  * gdbm_load -- recreate database from dump, created by gdbm_dump
  * gdbmtool -- view and modify an existing database or to create a new one.
"""

DE = """\
Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-de: Echtzeit-Strategiespiel über antike Kriegsführung
 0 A.D. ist ein freies, quelloffenes, plattformübergreifendes
 Echtzeit-Strategiespiel (RTS) über antike Kriegsführung. In Kürze: es ist
 ein Kriegs-/Wirtschaftsspiel in dem Spieler die Geschichte westlicher
 Zivilisationen zwischen 500 vor Christus und 500 nach Christus nacherleben
 oder neu schreiben können. Das Projekt ist sehr ambitioniert, verfügt über
 aktuelle 3D-Grafiken, detailliertes Artwork, Sound sowie eine flexible und
 leistungsfähige selbst erstellte Spielengine.

Package: 0ad-data
Description-md5: 26581e685027d5ae84824362a4ba59ee
Description-de: Echtzeit-Strategiespiel über antike Kriegsführung (Datendateien)
 0 A.D. ist ein freies, quelloffenes, plattformübergreifendes
 Echtzeit-Strategiespiel (RTS) über antike Kriegsführung. In Kürze: es ist
 ein Kriegs-/Wirtschaftsspiel, in dem Spieler die Geschichte westlicher
 Zivilisationen zwischen 500 vor Christus und 500 nach Christus nacherleben
 oder neu schreiben können. Das Projekt ist sehr ambitioniert, verfügt über
 aktuelle 3D-Grafiken, detailliertes Artwork, Sound sowie eine flexible und
 leistungsfähige selbst erstellte Spielengine.
 .
 Dieses Paket enthält die wichtigsten von 0 A.D. benötigten Datendateien.
"""

JA = """\
Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-ja: 古代戦争のリアルタイム戦略ゲーム
 0 A.D. は自由でオープンソースの、クロスプラットフォームな、古代戦争の
 リアルタイム戦略ゲームです。要約すれば、歴史に基いた戦争・経済ゲームで、
 西洋文明の歴史を再現もしくは改変することができます。500 B.C. から
 500 A.D. の期間に焦点をあてています。このプロジェクトは非常に野心的で、
 最先端の 3D グラフィクスや詳細なアートワーク、サウンド、柔軟で強力な
 カスタムビルトゲームエンジンを含みます。
"""

ZH_CN = """\
Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-zh_CN: 古代战争实时策略游戏
 0 A.D. (发音"zero ey-dee") ，是一个自由、开源、跨平台的
 古代战争实时策略游戏。简而言之，它是一款基于历史的战争/经
 济游戏，允许游戏者再体验或改写西方文明史，时间跨度为公元前
 500年至公元500年。该项目雄心勃勃，包括最先进的3D图像，细致
 的插图，声音，以及灵活强大的可定制游戏引擎。

Package: 0ad-data
Description-md5: 26581e685027d5ae84824362a4ba59ee
Description-zh_CN: 古代战争实时策略游戏（数据文件）
 0 A.D. (发音"zero ey-dee") ，是一个自由、开源、跨平台的
 古代战争实时策略游戏。简而言之，它是一款基于历史的战争/经
 济游戏，允许游戏者再体验或改写西方文明史，时间跨度为公元前
 500年至公元500年。该项目雄心勃勃，包括最先进的3D图像，细致
 的插图，声音，以及灵活强大的可定制游戏引擎。
 .
 本包包含 0 A.D 所需的主要数据文件。
"""

KO = """\
Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-ko: 고대 전쟁 실시간 전략 게임
 0 A.D ("zero ey-dee" 로 발음함)는 free, 오픈 소스, 크로스 플랫폼의 고대 전
 쟁 실시간 전략 (RTS) 게임입니다. 짧게 말하면, 500 B.C 에서 500 A.D 기간에
 초점을 맞춰서 게이머가 서구 문명의 역사를 재현하거나 또는 다시 만들 수 있도
 록 하는 역사 기반에 전쟁/경제 게임입니다. 이 프로젝트는 매우 야심찬 프로젝
 트로 최첨단 3D 그래픽, 상세한 아트웍, 사운드, 유연하고 강력한 맞춤형 게임
 엔진을 다루고 있습니다.
"""

TRANSLATIONS = {"en": EN, "de": DE, "ja": JA, "zh_CN": ZH_CN, "ko": KO}


def parsed(lang: str, text: str | None = None) -> tuple[list, Counter]:
    skipped: Counter = Counter()
    return parse_translation(TRANSLATIONS[lang] if text is None else text, lang, skipped), skipped


def joined() -> tuple[dict, dict[str, Counter]]:
    skipped = {lang: Counter() for lang in TRANSLATIONS}
    descriptions = {lang: parsed(lang)[0] for lang in TRANSLATIONS}
    return index_by_md5(descriptions, skipped), skipped


# --- parser -------------------------------------------------------------------------------------------

def test_parser_multi_paragraph_block_keeps_paragraphs_and_strips_indent():
    descriptions, skipped = parsed("en")
    assert not skipped and [d.package for d in descriptions] == ["0ad", "0ad-data", "gdbmtool"]
    data = descriptions[1]
    assert data.md5 == "26581e685027d5ae84824362a4ba59ee"
    assert data.synopsis == "Real-time strategy game of ancient warfare (data files)"
    first, second = data.text.split("\n")
    assert first.startswith('0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform real-time')
    assert first.endswith("custom-built game engine.")
    assert second == "This package contains the main data files required by 0 A.D."


def test_parser_keeps_list_items_on_their_own_lines():
    gdbm = parsed("en")[0][2]
    assert gdbm.synopsis == "GNU dbm database routines (command line tools)"
    lines = gdbm.text.split("\n")
    assert lines[-3:] == ["* gdbm_dump -- dump database content into system-independant format",
                          "* gdbm_load -- recreate database from dump, created by gdbm_dump",
                          "* gdbmtool -- view and modify an existing database or to create a new one."]
    assert lines[1] == ("The basic use of 'gdbm' is to store key/data pairs in a data file, thus providing a "
                        "persistent version of the 'dictionary' Abstract Data Type ('hash' to perl programmers). "
                        "This package includes following command line tools:")


def test_english_md5_is_checked_including_trailing_blank_of_synopsis():
    # gdbmtool's synopsis ends in a blank that Debian's md5 covers: dropping it must be detected.
    assert len(parsed("en")[0]) == 3
    tampered = EN.replace("(command line tools) \n", "(command line tools)\n")
    descriptions, skipped = parsed("en", tampered)
    assert len(descriptions) == 2 and skipped == Counter(md5_mismatch=1)


def test_parser_reflows_cjk_without_spaces_but_keeps_korean_spaces():
    zh = parsed("zh_CN")[0][0]
    assert zh.synopsis == "古代战争实时策略游戏"
    assert "基于历史的战争/经济游戏" in zh.text  # wrapped as "经\n济" in the file
    assert "\n" not in zh.text and " 古代" not in zh.text
    ja = parsed("ja")[0][0]
    assert "古代戦争のリアルタイム戦略ゲームです" in ja.text
    assert "500 B.C. から 500 A.D. の期間" in ja.text  # Latin at the joint keeps its space
    ko = parsed("ko")[0][0]
    assert ko.synopsis == "고대 전쟁 실시간 전략 게임" and "기간에 초점을" in ko.text


def test_malformed_blocks_are_counted_not_raised():
    bad = "\n\n".join([
        "Package: nodesc\nDescription-md5: d943033bedada21853d2ae54a2578a7b",
        "Package: emptysyn\nDescription-md5: 26581e685027d5ae84824362a4ba59ee\nDescription-de: \n lang text",
        "Package: shortonly\nDescription-md5: 26581e685027d5ae84824362a4ba59ee\nDescription-de: nur kurz",
        "Package: badmd5\nDescription-md5: not-an-md5\nDescription-de: kurz\n lang",
        " continuation line before any field\nPackage: x",
        "Package: undecodable\nDescription-md5: 26581e685027d5ae84824362a4ba59ee\n"
        "Description-de: kaputt\n " + b"\xff\xfe".decode("utf-8", "surrogateescape"),
    ])
    descriptions, skipped = parsed("de", DE + "\n" + bad + "\n")
    assert len(descriptions) == 2
    assert skipped == Counter(no_description_field=1, empty_synopsis=1, no_long_description=1,
                              missing_or_bad_md5=1, malformed_block=1, invalid_utf8=1)


# --- join, directions, split --------------------------------------------------------------------------

def test_md5_join_gives_monolingual_and_crosslingual_pairs():
    by_lang, skipped = joined()
    directions = all_pairs(by_lang, skipped)
    assert sorted(directions) == ["de", "de-en", "en", "ja", "ja-en", "ko", "ko-en", "zh_CN", "zh_CN-en"]
    assert [p.md5 for p in directions["ja-en"]] == ["d943033bedada21853d2ae54a2578a7b"]
    de_en = {p.md5: p for p in directions["de-en"]}["26581e685027d5ae84824362a4ba59ee"]
    assert de_en.query == "Echtzeit-Strategiespiel über antike Kriegsführung (Datendateien)"
    assert de_en.pos == by_lang["en"]["26581e685027d5ae84824362a4ba59ee"].text
    assert de_en.lang == "de-en"
    zh = {p.md5: p for p in directions["zh_CN"]}["d943033bedada21853d2ae54a2578a7b"]
    assert zh.pos.startswith("0 A.D. (发音") and zh.lang == "zh_CN"


def test_translation_without_english_and_verbatim_copies_are_counted():
    skipped = {"en": Counter(), "de": Counter()}
    english = parsed("en")[0]
    copy = EN.split("\n\n")[0].replace("Description-en", "Description-de")  # an "untranslated" de block
    orphan = DE.split("\n\n")[0].replace("d943033bedada21853d2ae54a2578a7b", "0" * 32)
    german = parse_translation(copy + "\n\n" + orphan + "\n", "de", skipped["de"])
    by_lang = index_by_md5({"en": english, "de": german}, skipped)
    directions = all_pairs(by_lang, skipped)
    assert skipped["de"] == Counter(untranslated_copy=1, no_english_description=1)
    assert [p.md5 for p in directions["de"]] == ["0" * 32] and directions["de-en"] == []


def test_group_joins_md5s_sharing_a_synopsis_or_text():
    by_lang, _ = joined()
    groups = group_md5s(by_lang)
    assert groups["b1f4f9a5e4f9a937cd5719411d673cf6"] == "b1f4f9a5e4f9a937cd5719411d673cf6"
    # Give gdbmtool 0ad's German synopsis: both md5s must now share one group, hence one split.
    gdbm = by_lang["en"]["b1f4f9a5e4f9a937cd5719411d673cf6"]
    by_lang["de"][gdbm.md5] = type(gdbm)(gdbm.md5, "de", "gdbmtool", by_lang["de"][
        "d943033bedada21853d2ae54a2578a7b"].synopsis, "Ein anderer Text")
    groups = group_md5s(by_lang)
    assert groups[gdbm.md5] == groups["d943033bedada21853d2ae54a2578a7b"] == "b1f4f9a5e4f9a937cd5719411d673cf6"
    splits = assign_splits(by_lang)
    assert splits[gdbm.md5] == splits["d943033bedada21853d2ae54a2578a7b"]


def test_split_hash_is_fixed_and_fractions_are_checked():
    names = [split_of(f"{i:032x}") for i in range(2000)]
    counts = Counter(names)
    assert 1450 < counts["train"] < 1750 and 120 < counts["dev"] < 280 and 120 < counts["test"] < 280
    assert names == [split_of(f"{i:032x}") for i in range(2000)]
    assert split_of("d943033bedada21853d2ae54a2578a7b", (0.0, 0.0, 1.0)) == "test"
    with pytest.raises(ValueError, match="summing to 1"):
        split_of("d943033bedada21853d2ae54a2578a7b", (0.8, 0.1, 0.2))


def test_shipped_sample_has_no_md5_or_text_in_two_splits():
    md5s: dict[str, set[str]] = {split: set() for split in SPLITS}
    texts: dict[str, set[tuple[str, str]]] = {split: set() for split in SPLITS}
    for split in SPLITS:
        for path in sorted((SAMPLE_DIR / split).glob("*.jsonl.gz")):
            for row in read_jsonl_gz(path):
                md5s[split].add(row["md5"])
                texts[split] |= {(row["lang"], row["query"]), (row["lang"], row["pos"][0])}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not md5s[a] & md5s[b], f"md5 in {a} and {b}"
        assert not texts[a] & texts[b], f"text in {a} and {b}"


# --- mining -------------------------------------------------------------------------------------------

def test_tokenize_uses_words_or_cjk_bigrams():
    assert tokenize("GNU dbm database-routines", "en") == ["gnu", "dbm", "database", "routines"]
    assert tokenize("古代战争 3D", "zh_CN") == ["古代", "代战", "战争", "3d"]
    assert tokenize("고대 전쟁", "ko") == ["고대", "전쟁"]


def sample_train_pairs(direction: str) -> list[Pair]:
    """Real English train pairs from the sample; their negatives join the pool as extra documents."""
    rows = read_jsonl_gz(SAMPLE_DIR / "train" / f"{direction}.jsonl.gz")
    return [Pair(r["query"], r["pos"][0], r["lang"], r["md5"]) for r in rows]


def test_mining_never_returns_a_positive_and_is_deterministic():
    pairs = sample_train_pairs("en")
    # Two extra pairs share a real query: neither positive may be the other's negative.
    twin = Pair(pairs[0].query, pairs[1].pos, "en", "f" * 32)
    pool_pairs = sorted(pairs + [twin], key=lambda p: p.md5)
    negatives = mine_train({"en": pool_pairs}, num_neg=7, rank_range=(3, 50), seed=0)["en"]
    assert len(negatives) == len(pool_pairs)
    positives_of = Counter()
    for p in pool_pairs:
        positives_of[p.query] += 1
        negs = negatives[p.md5]
        assert len(negs) == 7 and len(set(negs)) == 7 and p.pos not in negs
    for p in (pairs[0], twin):
        assert pairs[0].pos not in negatives[p.md5] and pairs[1].pos not in negatives[p.md5]
    again = mine_train({"en": pool_pairs}, num_neg=7, rank_range=(3, 50), seed=0)["en"]
    assert again == negatives
    subset = mine_train({"en": pool_pairs}, {"en": {pairs[5].md5}}, num_neg=7, seed=0)["en"]
    assert subset == {pairs[5].md5: negatives[pairs[5].md5]}
    other_seed = mine_train({"en": pool_pairs}, num_neg=7, rank_range=(3, 50), seed=1)["en"]
    assert other_seed != negatives


def test_crosslingual_negatives_are_english_and_exclude_the_positive():
    en, de_en = sample_train_pairs("en"), sample_train_pairs("de-en")
    # The sample's de-en md5s mostly lack en rows (their English synopses are not shipped), so add them to
    # the English pool with the German synopsis as a stand-in English query.
    known = {p.md5 for p in en}
    english = sorted(en + [Pair(p.query, p.pos, "en", p.md5) for p in de_en if p.md5 not in known],
                     key=lambda p: p.md5)
    negatives = mine_train({"en": english, "de-en": de_en}, seed=0)
    english_texts = {p.pos for p in english}
    for p in de_en:
        negs = negatives["de-en"][p.md5]
        assert len(negs) == 7 and p.pos not in negs and set(negs) <= english_texts


def test_bm25_ranks_the_matching_document_first():
    docs = [p.pos for p in sample_train_pairs("en")[:40]]
    index = build_index(docs, "en")
    scores = index.batch_scores([tokenize(q, "en") for q in ["gdbm database key data pairs", docs[7][:200]]])
    assert scores.shape == (2, 40) and scores[1].argmax() == 7


# --- output and shipped sample ------------------------------------------------------------------------

def load_sample_stats() -> dict:
    return json.loads((SAMPLE_DIR / "stats.json").read_text(encoding="utf-8"))


def test_shipped_sample_loads_with_the_documented_counts():
    stats = load_sample_stats()
    assert stats["source"]["sample"] and stats["source"]["mined"]
    languages = {d for d in stats["pairs"]["test"] if "-" not in d}
    assert len(languages) == 15
    for split in SPLITS:
        for direction, count in stats["pairs"][split].items():
            rows = read_jsonl_gz(SAMPLE_DIR / split / f"{direction}.jsonl.gz")
            assert len(rows) == count
            assert all(r["lang"] == direction and r["type"] == "ddtp" and len(r["pos"]) == 1 for r in rows)
            assert all(len(r["neg"]) == (7 if split == "train" else 0) for r in rows)
        mono = [c for d, c in stats["pairs"][split].items() if "-" not in d]
        assert max(mono) == SAMPLE_CAPS[split]
    assert stats["pairs"]["test"]["de"] == SAMPLE_CAPS["test"]
    readme = (SAMPLE_DIR / "README.md").read_text(encoding="utf-8")
    assert counts_table(stats) in readme, "data/ddtp/README.md's table is stale: paste counts_table(stats)"


def test_beir_folders_from_sample_rows(tmp_path: Path):
    stats = load_sample_stats()
    counts = beir_from_rows(SAMPLE_DIR, tmp_path / "beir", splits=("test",))
    assert counts["test"] == stats["beir"]["test"]
    corpus, queries, qrels = read_beir(tmp_path / "beir" / "test" / "ja-en", "test")
    assert {d["lang"] for d in corpus} == {"en"} and {q["lang"] for q in queries} == {"ja"}
    doc_ids, query_ids = {d["_id"] for d in corpus}, {q["_id"] for q in queries}
    assert {q for q, _, _ in qrels} == query_ids and {d for _, d, _ in qrels} <= doc_ids
    header = (tmp_path / "beir" / "test" / "ja-en" / "qrels" / "test.tsv").read_text().splitlines()[0]
    assert header == "query-id\tcorpus-id\tscore"


def test_build_from_translation_files_in_every_compression(tmp_path: Path):
    lists = tmp_path / "lists"
    lists.mkdir()
    base = "deb.debian.org_debian_dists_bookworm_main_i18n_Translation-"
    (lists / f"{base}en").write_text(EN, encoding="utf-8")
    (lists / f"{base}de.gz").write_bytes(gzip.compress(DE.encode()))
    (lists / f"{base}ja.xz").write_bytes(lzma.compress(JA.encode()))
    (lists / f"{base}ko.bz2").write_bytes(bz2.compress(KO.encode()))
    lz4_frame = pytest.importorskip("lz4.frame")
    (lists / f"{base}zh%5fCN.lz4").write_bytes(lz4_frame.compress(ZH_CN.encode()))
    (lists / f"{base}en.diff").mkdir()  # apt's pdiff folder is not a Translation file
    assert translation_language(lists / f"{base}zh%5fCN.lz4") == "zh_CN"
    assert sorted(find_translation_files(lists)) == ["de", "en", "ja", "ko", "zh_CN"]
    assert read_translation(lists / f"{base}ja.xz") == JA
    descriptions, skipped, files = load_descriptions(lists)
    assert {lang: len(ds) for lang, ds in descriptions.items()} == {"de": 2, "en": 3, "ja": 1, "ko": 1, "zh_CN": 2}
    pairs, num_descriptions = prepare(descriptions, skipped)
    assert sum(len(ps) for split in SPLITS for ps in pairs[split].values()) == 3 + 2 * 2 + 1 * 2 + 1 * 2 + 2 * 2


def test_missing_english_and_missing_folder_raise_clear_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_translation_files(tmp_path / "nope")
    (tmp_path / "x_i18n_Translation-de").write_text(DE, encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="no Translation-en"):
        find_translation_files(tmp_path)
    assert decompress(b"Package: plain\n") == b"Package: plain\n"


def test_apt_config_is_private(tmp_path: Path):
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"")
    config = write_apt_config(tmp_path / "apt", "bookworm", keyring=keyring).read_text()
    assert 'Acquire::Languages {"en";"de";"fr";"it";"da";"ja";"ko";"ru";"zh_CN";"pt_BR";"pl";"uk";"sk";"es";"cs";};' \
        in config
    for key in ("Dir::Etc::Parts", "Dir::Etc::SourceList", "Dir::State::Lists", "Dir::Cache"):
        assert f'{key} "{(tmp_path / "apt").resolve()}' in config
    sources = (tmp_path / "apt" / "sources.list").read_text()
    assert sources == f"deb [signed-by={keyring}] http://deb.debian.org/debian bookworm main\n"
    with pytest.raises(FileNotFoundError, match="debian-archive-keyring"):
        write_apt_config(tmp_path / "apt2", "bookworm", keyring=tmp_path / "missing.gpg")


def test_cli_arguments():
    assert parse_args(["--out", "x", "--split", "80,10,10"]).split == (0.8, 0.1, 0.1)
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--sample"])
    with pytest.raises(SystemExit):
        parse_args(["--beir-from", "data/ddtp"])
    result = subprocess.run([sys.executable, "tools/build_ddtp.py", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True)
    assert "--translations" in result.stdout
