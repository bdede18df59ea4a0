"""Teacher scores (framework/teacher, framework/jobs, tools/score_pairs.py): a tiny random cross-encoder and the
tiny M3 model score pairs; files are scored resumably and in parts; the scores reach the loss through
make_shards -> PairStream -> M3Objective and change it as the distillation formulas say.

Shape suffixes: Q queries, G passages per query, P = Q * G passages.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from framework.data.stream import PairStream, StreamConfig
from framework.inference import M3Embedder
from framework.jobs import merge_parts, part_lines, part_path, state_path_of
from framework.loss import LossConfig, colbert_scores, m3_loss
from framework.model import load_m3, save_m3
from framework.teacher import (BatchingConfig, CrossEncoderConfig, HybridWeights, M3TeacherConfig, ScoreFileConfig,
                               ScorePair, detect_kind, length_batches, load_teacher, merge_scored, score_file)
from framework.teacher.report import report_path_of
from framework.train.objective import M3Objective
from tools.build_cross_encoder import build_cross_encoder
from tools.make_shards import ShardConfig, make_shards
from tools.score_pairs import main

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = [line.strip() for line in (REPO_ROOT / "data" / "multilingual_sample.txt").read_text(encoding="utf-8")
          .splitlines() if line.strip()]
NUM_ROWS = 60
CHUNK = 8
# 1-based input line -> (raw bytes, reason), placed between the good rows.
BAD_LINES = {
    3: (b'{"query": "broken", "pos": ["x"]', "malformed_json"),
    10: (b'{"query": "no positive"}', "missing_field"),
    18: (b"", "blank_line"),
    27: ('{"query": "caf\u00e9", "pos": ["x"]}'.encode("latin-1"), "non_utf8"),
    33: (b'{"query": "q", "pos": 5}', "wrong_type"),
    41: (b'{"query": "q", "pos": ["  "]}', "no_positive"),
    52: (b"[1, 2]", "not_an_object"),
}


def good_row(i: int) -> dict:
    line = SAMPLE[i % len(SAMPLE)]
    row = {"id": i, "query": line.split(", ")[0], "pos": [line],
           "neg": [SAMPLE[(i + 1 + k) % len(SAMPLE)] for k in range(3)], "source": "web"}
    if i % 7 == 1:
        row["neg_scores"], row["pos_scores"] = [0.0, 0.0, 0.0], [9.0]  # old scores: replaced in place
    if i % 11 == 2:
        row = {"anchor": row["query"], "positive": line, "negative": row["neg"][0]}  # aliases, single strings
    return row


def write_rows(path: Path, num_good: int, bad: dict[int, tuple[bytes, str]]) -> Path:
    good, out = iter(range(num_good)), []
    while len(out) < num_good + len(bad):
        line = len(out) + 1
        out.append(bad[line][0] if line in bad else json.dumps(good_row(next(good)), ensure_ascii=False).encode())
    path.write_bytes(b"\n".join(out))  # no newline after the last line: that must work too
    return path


@pytest.fixture(scope="module")
def cross_encoder_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random XLMRobertaForSequenceClassification (num_labels=1) of the tiny shape; read-only."""
    return build_cross_encoder(tokenizer_dir, tmp_path_factory.mktemp("cross_encoder"), seed=0)


@pytest.fixture(scope="module")
def cross_encoder(cross_encoder_dir: Path):
    return load_teacher(CrossEncoderConfig(str(cross_encoder_dir), max_length=128))


@pytest.fixture(scope="module")
def m3_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its sparse and colbert heads saved (a BGE-M3 export, as a trained run writes)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, tokenizer = load_m3(tiny_model_dir)
    return save_m3(model, tokenizer, tmp_path_factory.mktemp("m3_teacher"))


@pytest.fixture(scope="module")
def input_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rows(tmp_path_factory.mktemp("pairs") / "train.jsonl", NUM_ROWS, BAD_LINES)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


# ---------------------------------------------------------------- scorers


def test_length_batches_cover_every_index_once_within_the_budget() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 700, size=500).tolist()
    config = BatchingConfig(batch_tokens=4096, max_batch_size=64)
    batches = length_batches(lengths, config)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    widths = [max(lengths[i] for i in b) for b in batches]
    assert widths == sorted(widths, reverse=True)  # longest first
    for batch, width in zip(batches, widths):
        padded = -(-width // 8) * 8
        assert len(batch) <= 64 and (len(batch) * padded <= 4096 or len(batch) == 1)
    assert [b.tolist() for b in length_batches([5000, 3], config)] == [[0], [1]]  # an over-long input runs alone


def test_cross_encoder_scores_are_the_one_pair_logits(cross_encoder, cross_encoder_dir: Path) -> None:
    pairs = [ScorePair(SAMPLE[i].split(", ")[0], SAMPLE[(i * 5) % len(SAMPLE)]) for i in range(40)]
    pairs.append(ScorePair("long " * 300, "passage " * 300))  # cut to max_length
    scores = cross_encoder.score(pairs)
    assert scores.dtype == np.float32 and scores.shape == (len(pairs),)
    model = AutoModelForSequenceClassification.from_pretrained(cross_encoder_dir).eval()
    tok = AutoTokenizer.from_pretrained(cross_encoder_dir)
    with torch.no_grad():
        alone = [model(**tok(p.query, p.passage, truncation=True, max_length=128, return_tensors="pt")).logits[0, 0]
                 for p in pairs]
    np.testing.assert_allclose(scores, torch.stack(alone).numpy(), rtol=0, atol=2e-6)
    assert np.ptp(scores) > 0  # the pairs are told apart
    shuffled = np.random.default_rng(1).permutation(len(pairs))
    np.testing.assert_allclose(cross_encoder.score([pairs[i] for i in shuffled]), scores[shuffled], atol=2e-6)
    with pytest.raises(ValueError, match=r"pairs\[1\].passage is empty"):
        cross_encoder.score([pairs[0], ScorePair("q", "  ")])


@pytest.mark.parametrize("weights", [(0.4, 0.2, 0.4), (1.0, 0.0, 0.0), (0.0, 1.0, 2.0)])
def test_m3_teacher_equals_compute_score_hybrid(m3_dir: Path, weights: tuple) -> None:
    teacher = load_teacher(M3TeacherConfig(str(m3_dir), HybridWeights(*weights),
                                           batching=BatchingConfig(batch_tokens=256)))
    pairs = [ScorePair(SAMPLE[i // 3].split(", ")[0], SAMPLE[(i * 7) % len(SAMPLE)]) for i in range(30)]
    embedder = M3Embedder.from_pretrained(m3_dir)
    expected = embedder.compute_score([(p.query, p.passage) for p in pairs], weights=weights)["colbert+sparse+dense"]
    np.testing.assert_allclose(teacher.score(pairs), expected, rtol=1e-5, atol=1e-6)


def test_detect_kind_and_config_errors(cross_encoder_dir: Path, m3_dir: Path, tmp_path: Path) -> None:
    assert detect_kind(cross_encoder_dir) == "cross_encoder"
    assert detect_kind(m3_dir) == "m3"
    with pytest.raises(ValueError, match="no config.json"):
        CrossEncoderConfig(str(tmp_path))
    with pytest.raises(ValueError, match="hybrid weights"):
        HybridWeights(0, 0, 0)
    with pytest.raises(ValueError, match="max_length=4096 exceeds"):
        load_teacher(CrossEncoderConfig(str(cross_encoder_dir), max_length=4096))


# ---------------------------------------------------------------- scoring files


def test_score_file_writes_every_passage_score_and_keeps_the_rest(input_file: Path, cross_encoder,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "scored.jsonl"
    report = score_file(input_file, out, cross_encoder, ScoreFileConfig(chunk_size=CHUNK))
    ins, outs = lines_of(input_file), lines_of(out)
    assert outs[-1] == b"" and len(outs) - 1 == len(ins)  # line N is line N; every line ends with a newline
    checked = 0
    for line, (raw, written) in enumerate(zip(ins, outs), start=1):
        if line in BAD_LINES:
            assert written == raw
            continue
        row, got = json.loads(raw), json.loads(written)
        query = row.get("query", row.get("anchor"))
        for name, alias, field in (("pos", "positive", "pos_scores"), ("neg", "negative", "neg_scores")):
            texts = row.get(name, row.get(alias))
            texts = [texts] if isinstance(texts, str) else texts
            expected = cross_encoder.score([ScorePair(query, t) for t in texts])
            np.testing.assert_allclose(got[field], expected, rtol=0, atol=2e-6)
        assert {k: v for k, v in got.items() if not k.endswith("_scores")} == \
            {k: v for k, v in row.items() if not k.endswith("_scores")}
        assert list(got)[:len(row)] == list(row)  # old score fields replaced in place, new ones appended
        checked += 1
    assert checked == NUM_ROWS
    assert report.num_rows == NUM_ROWS and report.num_lines == len(ins) and report.num_resumed == 0
    assert report.bad == {reason: 1 for _, reason in BAD_LINES.values()}
    assert sorted((e.line, e.reason) for e in report.examples) == sorted((k, v[1]) for k, v in BAD_LINES.items())
    assert {e.file for e in report.examples} == {str(input_file)}
    assert report.num_rescored == sum(1 for i in range(NUM_ROWS) if i % 7 == 1 and i % 11 != 2)
    assert json.loads(report_path_of(out).read_text())["num_pairs"] == report.num_pairs


def test_blank_passages_get_a_placeholder_that_make_shards_drops(cross_encoder, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"query": "q", "pos": ["p", " "], "neg": ["", "n"]}) + "\n")
    report = score_file(src, tmp_path / "out.jsonl", cross_encoder)
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row["pos_scores"][1] == 0.0 and row["neg_scores"][0] == 0.0
    assert row["pos_scores"][0] == pytest.approx(float(cross_encoder.score([ScorePair("q", "p")])[0]))
    assert (report.num_pairs, report.num_blank_passages) == (2, 2)


def cut_points(full: bytes) -> list[int]:
    """Byte offsets where a run could have died: nothing, mid-line, a chunk seam, mid-chunk, almost done."""
    ends = [i + 1 for i, byte in enumerate(full) if byte == ord("\n")]
    return [0, ends[2] + 7, ends[CHUNK - 1], ends[2 * CHUNK + 3] + 1, len(full) - 1, len(full)]


def test_resume_from_any_cut_gives_the_uninterrupted_file(input_file: Path, cross_encoder, tmp_path: Path) -> None:
    complete = tmp_path / "complete.jsonl"
    config = ScoreFileConfig(chunk_size=CHUNK)
    full_report = score_file(input_file, complete, cross_encoder, config)
    full = complete.read_bytes()
    for cut in cut_points(full):
        out = tmp_path / f"resumed-{cut}.jsonl"
        out.write_bytes(full[:cut])
        shutil.copyfile(state_path_of(complete), state_path_of(out))
        report = score_file(input_file, out, cross_encoder, config)
        assert out.read_bytes() == full, cut
        kept = full[:cut].count(b"\n")
        assert report.num_resumed == (kept if kept == len(lines_of(input_file)) else kept - kept % CHUNK)
        # Kept lines are re-checked and counted, so the report covers the whole file either way.
        assert (report.num_rows, report.num_pairs, report.bad) == \
            (full_report.num_rows, full_report.num_pairs, full_report.bad)


def test_resume_refuses_other_settings_or_edited_lines(input_file: Path, cross_encoder, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    score_file(input_file, out, cross_encoder, ScoreFileConfig(chunk_size=CHUNK))
    with pytest.raises(ValueError, match=r"different --scale.*--overwrite"):
        score_file(input_file, out, cross_encoder, ScoreFileConfig(chunk_size=CHUNK, scale=2.0))
    with pytest.raises(ValueError, match="different --chunk-size"):
        score_file(input_file, out, cross_encoder, ScoreFileConfig(chunk_size=CHUNK + 1))
    lines = lines_of(out)
    lines[4] = lines[4].replace(b'"query": "', b'"query": "X')
    out.write_bytes(b"\n".join(lines[:2 * CHUNK + 1]))
    with pytest.raises(ValueError, match="line 5 is not what input line 5 becomes"):
        score_file(input_file, out, cross_encoder, ScoreFileConfig(chunk_size=CHUNK))
    state_path_of(out).unlink()
    with pytest.raises(ValueError, match="missing"):
        score_file(input_file, out, cross_encoder, ScoreFileConfig(chunk_size=CHUNK))
    score_file(input_file, out, cross_encoder, ScoreFileConfig(chunk_size=CHUNK, scale=2.0, overwrite=True))
    first = json.loads(lines_of(out)[0])
    assert first["pos_scores"][0] == pytest.approx(2 * float(cross_encoder.score(
        [ScorePair(first["query"], first["pos"][0])])[0]), rel=1e-6)


@pytest.mark.parametrize("num_parts", [3, 12])
def test_parts_cover_every_line_once_and_merge_into_the_single_run(input_file: Path, cross_encoder,
                                                                   tmp_path: Path, num_parts: int) -> None:
    single = tmp_path / "single.jsonl"
    whole = score_file(input_file, single, cross_encoder, ScoreFileConfig(chunk_size=CHUNK))
    num_lines = len(lines_of(input_file))
    ranges = [part_lines(num_lines, CHUNK, part, num_parts) for part in range(num_parts)]
    covered = [line for first, end in ranges for line in range(first, end)]
    assert covered == list(range(num_lines))  # every line once, in order (12 parts > 9 chunks: some are empty)
    out = tmp_path / "split.jsonl"
    for part in reversed(range(num_parts)):
        score_file(input_file, out, cross_encoder, ScoreFileConfig(chunk_size=CHUNK, part=part, num_parts=num_parts))
        if part == num_parts - 1:
            with pytest.raises(ValueError, match="part 0 of .* has not run"):
                merge_parts(out, num_parts)
    for part, (first, end) in enumerate(ranges):
        assert len(lines_of(part_path(out, part, num_parts))) - 1 == end - first
    total = merge_scored(out, num_parts)
    assert out.read_bytes() == single.read_bytes()
    assert (total.num_lines, total.num_rows, total.num_pairs, total.bad) == \
        (whole.num_lines, whole.num_rows, whole.num_pairs, whole.bad)
    assert sorted(e.line for e in total.examples) == sorted(BAD_LINES)
    assert not part_path(out, 0, num_parts).exists()
    # The merged file carries a finished single run's state: rerunning without parts keeps everything.
    assert score_file(input_file, out, cross_encoder, ScoreFileConfig(chunk_size=CHUNK)).num_resumed == num_lines


def test_merge_refuses_an_unfinished_part(input_file: Path, cross_encoder, tmp_path: Path) -> None:
    out = tmp_path / "split.jsonl"
    for part in range(2):
        score_file(input_file, out, cross_encoder, ScoreFileConfig(chunk_size=CHUNK, part=part, num_parts=2))
    second = part_path(out, 1, 2)
    second.write_bytes(second.read_bytes()[:-30])
    with pytest.raises(ValueError, match=r"part 1 has not finished; rerun it \(--part 1 --num-parts 2\)"):
        merge_parts(out, 2)
    assert part_path(out, 0, 2).exists() and not out.exists()


def test_cli_scores_a_manifest_s_inputs_and_names_misplaced_options(input_file: Path, cross_encoder_dir: Path,
                                                                    tokenizer_dir: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "data"
    work.mkdir()
    shutil.copyfile(input_file, work / "web.jsonl")
    make_shards([work / "web.jsonl"], ShardConfig(out_dir=tmp_path / "shards", max_bad_fraction=0.5))
    report = main(["--manifest", str(tmp_path / "shards" / "manifest.json"), "--out-dir", str(tmp_path / "scored"),
                   "--teacher", str(cross_encoder_dir), "--chunk-size", str(CHUNK), "--max-length", "128",
                   "--progress-seconds", "0"])
    printed = capsys.readouterr().out
    assert "pairs/s" in printed and "bad malformed_json: 1 at" in printed and f"{input_file.name}:3" not in printed
    assert "web.jsonl:3" in printed
    assert report.num_rows == NUM_ROWS
    assert len(lines_of(tmp_path / "scored" / "web.jsonl")) - 1 == len(BAD_LINES) + NUM_ROWS
    with pytest.raises(SystemExit):
        main([str(input_file), "--out", str(tmp_path / "x.jsonl"), "--teacher", str(cross_encoder_dir),
              "--weights", "1,0,0"])
    assert "--weights is an option of m3 teachers" in capsys.readouterr().err


# ---------------------------------------------------------------- kill -9


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_is_byte_identical(cross_encoder_dir: Path, tmp_path: Path) -> None:
    src = write_rows(tmp_path / "big.jsonl", 300, {5: (b"{", "malformed_json")})
    args = [str(src), "--teacher", str(cross_encoder_dir), "--chunk-size", "8", "--max-length", "64"]
    out = tmp_path / "killed.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "tools" / "score_pairs.py"), *args, "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3 * 8 + 1:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = out.read_bytes()
    assert proc.returncode == -signal.SIGKILL and 0 < partial.count(b"\n") < 301, "not killed mid-run"
    report = main([*args, "--out", str(out)])
    assert report.num_resumed > 0 and report.num_lines == 301 and report.bad == {"malformed_json": 1}
    main([*args, "--out", str(tmp_path / "uninterrupted.jsonl")])
    assert out.read_bytes() == (tmp_path / "uninterrupted.jsonl").read_bytes()


# ---------------------------------------------------------------- SLURM


@pytest.mark.slurm
def test_slurm_array_scores_the_parts_and_the_dependent_merge_joins_them(cross_encoder, cross_encoder_dir: Path,
                                                                        input_file: Path, tmp_path: Path) -> None:
    from tests.slurm_cluster import LocalSlurm, ensure_installed

    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    cluster, out = LocalSlurm(tmp_path / "slurm"), tmp_path / "scored.jsonl"
    # One thread in the parts and in the reference below: BLAS splits its sums by thread count, so scores
    # of 1 and 2 threads differ in the last bits (the comparison is byte for byte).
    env = {"M3_REPO": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
           **({"M3_VENV": sys.prefix} if sys.prefix != sys.base_prefix else {})}
    args = [str(input_file), "--out", str(out), "--teacher", str(cross_encoder_dir), "--chunk-size", str(CHUNK),
            "--max-length", "128"]
    try:
        cluster.start()
        # The test node has no GPU: --gpus=0 cancels the script's GPU request.
        array_id = cluster.sbatch(["--array=0-1", "--gpus=0", "--cpus-per-task=1", f"--output={tmp_path}/part-%a.out",
                                   str(REPO_ROOT / "slurm" / "score_pairs.sbatch"), *args], env=env, cwd=tmp_path)
        merge_id = cluster.sbatch([f"--dependency=afterok:{array_id}", f"--output={tmp_path}/merge.out",
                                   str(REPO_ROOT / "slurm" / "merge_scores.sbatch"), "--out", str(out),
                                   "--num-parts", "2"], env=env, cwd=tmp_path)
        states = cluster.wait([array_id, merge_id], timeout=300)
        logs = "".join(log.read_text(errors="replace") for log in sorted(tmp_path.glob("*.out")))
        assert set(states.values()) == {"COMPLETED"}, f"{states}\n{logs}\n{cluster.daemon_logs()}"
    finally:
        cluster.stop()
    assert "part 0/2" in logs and "part 1/2" in logs and f"merged 2 parts -> {out}" in logs
    single, threads = tmp_path / "single.jsonl", torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        score_file(input_file, single, cross_encoder, ScoreFileConfig(chunk_size=CHUNK))
    finally:
        torch.set_num_threads(threads)
    assert out.read_bytes() == single.read_bytes()


# ---------------------------------------------------------------- the scores reach the loss


def logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(x - top) for x in values))


def softmax(values: list[float]) -> list[float]:
    log_z = logsumexp(values)
    return [math.exp(x - log_z) for x in values]


def kl_div_formula(s_QP: torch.Tensor, teacher_QG: torch.Tensor, excluded: set | frozenset = frozenset()) -> float:
    """-mean_i sum_g t_ig log softmax(own group)_g + mean_i CE(row i over all passages, target i*G); the
    (i, j) entries in `excluded` (duplicates of i's positive) are left out of every sum and softmax."""
    num_q, group = teacher_QG.shape
    total = 0.0
    for i in range(num_q):
        own_j = [j for j in range(i * group, (i + 1) * group) if (i, j) not in excluded]
        t = softmax([teacher_QG[i, j - i * group].item() for j in own_j])
        own = [s_QP[i, j].item() for j in own_j]
        row = [x for j, x in enumerate(s_QP[i].tolist()) if (i, j) not in excluded]
        total += -sum(tg * (x - logsumexp(own)) for tg, x in zip(t, own)) + logsumexp(row) - s_QP[i, i * group].item()
    return total / num_q


def m3_kd_formula(s_QP: torch.Tensor, teacher_QG: torch.Tensor, excluded: set | frozenset = frozenset()) -> float:
    """sum_g mean_i t_ig * CE(row i without its own passages g' < g, target i*G+g) (FlagEmbedding's m3_kd_loss);
    the (i, j) entries in `excluded` are left out of the rows and get no teacher weight."""
    num_q, group = teacher_QG.shape
    total = 0.0
    for i in range(num_q):
        own_g = [g for g in range(group) if (i, i * group + g) not in excluded]
        t = dict(zip(own_g, softmax([teacher_QG[i, g].item() for g in own_g])))
        for g in own_g:
            row = s_QP[i].tolist()
            kept = [x for j, x in enumerate(row) if not i * group <= j < i * group + g and (i, j) not in excluded]
            total += t[g] * (logsumexp(kept) - row[i * group + g]) / num_q
    return total


def duplicate_entries(batch) -> set[tuple[int, int]]:
    """(query, passage) entries whose passage has the token ids of the query's positive (not the positive itself):
    found from the ids here, independently of the objective's hashes."""
    group, p_ids = batch.group_size, batch.p_ids_PL.tolist()
    return {(i, j) for i in range(len(batch.keys)) for j in range(len(p_ids))
            if j != i * group and p_ids[j] == p_ids[i * group]}


def test_teacher_losses_equal_the_formulas_on_a_hand_example() -> None:
    scores_QP = torch.tensor([[0.9, 0.1, 0.3, -0.2], [0.0, 0.4, 0.8, 0.5]], dtype=torch.float64)
    teacher_QG = torch.tensor([[2.0, -1.0], [0.5, 0.7]], dtype=torch.float64)
    for kd, formula in (("kl_div", kl_div_formula), ("m3_kd_loss", m3_kd_formula)):
        cfg = LossConfig.preset(use_sparse=False, use_colbert=False, temperature=0.5, kd_loss_type=kd)
        loss = m3_loss({"dense": scores_QP}, 2, 0, cfg, teacher_scores_QG=teacher_QG)["loss"]
        assert loss.item() == pytest.approx(formula(scores_QP / 0.5, teacher_QG), rel=1e-12)
        flat = m3_loss({"dense": scores_QP}, 2, 0, cfg, teacher_scores_QG=torch.zeros(2, 2, dtype=torch.float64))
        assert flat["loss"].item() != pytest.approx(loss.item(), rel=1e-3)


def scored_batches(pairs: Path, teacher, scale: float, tokenizer_dir: Path, out: Path) -> list:
    """pairs -> score_file -> make_shards -> PairStream: the trainer's batches of the scored rows."""
    score_file(pairs, out / "scored.jsonl", teacher, ScoreFileConfig(scale=scale))
    manifest = make_shards([out / "scored.jsonl"], ShardConfig(out_dir=out / "shards", tokenizer=str(tokenizer_dir),
                                                               pretokenize=True, max_length=128,
                                                               length_edges=(128,)))
    cfg = StreamConfig.of({s.bucket: 4 for s in manifest.shards}, group_size=4, seed=3)
    stream = PairStream.from_manifest(out / "shards" / "manifest.json", cfg,
                                      AutoTokenizer.from_pretrained(tokenizer_dir), 0, 1)
    return list(stream)


@pytest.mark.parametrize("kd_loss_type", ["kl_div", "m3_kd_loss"])
def test_training_uses_the_teacher_scores(cross_encoder, m3_dir: Path, tokenizer_dir: Path, tmp_path: Path,
                                          kd_loss_type: str) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": SAMPLE[i].split(", ")[0], "pos": [SAMPLE[i]], "neg": [
        SAMPLE[(i * 13 + k) % len(SAMPLE)] for k in (3, 5, 8)]}, ensure_ascii=False) + "\n" for i in range(8)))
    # Two teachers (the random reranker's logits lie within ~0.01 of each other: scaled up so that its targets
    # are not uniform), the same rows, groups and student: only the targets differ.
    teachers = {"cross_encoder": (cross_encoder, 1000.0), "m3": (load_teacher(M3TeacherConfig(str(m3_dir))), 50.0)}
    model, _ = load_m3(m3_dir)
    # The multi-vector head: the random tiny encoder's CLS vectors are all nearly parallel (a uniform dense
    # softmax, whose loss no target can move), its token vectors are not.
    cfg = LossConfig.preset(use_dense=False, use_sparse=False, kd_loss_type=kd_loss_type)
    objective = M3Objective(model, cfg)
    objective.eval()  # no dropout: the same batch gives the same student scores
    formula = kl_div_formula if kd_loss_type == "kl_div" else m3_kd_formula
    losses: dict[str, list[float]] = {}
    duplicates_seen = 0
    for name, (teacher, scale) in teachers.items():
        batches = scored_batches(pairs, teacher, scale, tokenizer_dir, tmp_path / name)
        assert len(batches) == 2
        rows = [json.loads(line) for line in (tmp_path / name / "scored.jsonl").read_text().splitlines()]
        as_f32 = lambda values: torch.tensor(values, dtype=torch.float32).tolist()  # noqa: E731 -- the batch's dtype
        positive_of = {tuple(sorted(as_f32(r["pos_scores"] + r["neg_scores"]))): as_f32(r["pos_scores"])[0]
                       for r in rows}
        for batch in batches:
            teacher_QG = batch.teacher_scores_QG
            assert teacher_QG is not None and teacher_QG.shape == (len(batch.keys), 4)
            for row_scores in teacher_QG.tolist():  # each query's group: its positive first, then its 3 negatives
                assert positive_of[tuple(sorted(row_scores))] == row_scores[0]
            with torch.no_grad():
                assert batch.group_size == 4
                loss = objective(batch=batch, step=0).terms["loss"].item()
                q, p = model(batch.q_ids_QL, batch.q_mask_QL), model(batch.p_ids_PL, batch.p_mask_PL)
                s_QP = colbert_scores(q.colbert_BLC, q.colbert_mask_BL, p.colbert_BLC, p.colbert_mask_BL)
            # A mined negative here can be another query's positive: that entry is no negative of that query.
            excluded = duplicate_entries(batch)
            duplicates_seen += len(excluded)
            assert loss == pytest.approx(formula(s_QP.double() / cfg.temperature, teacher_QG.double(), excluded),
                                         rel=1e-5)
            losses.setdefault(name, []).append(loss)
    assert duplicates_seen > 0  # query 0's negatives are queries 3 and 5's positives: the masks are exercised
    for a, b in zip(losses["cross_encoder"], losses["m3"]):
        assert abs(a - b) > 0.01 * a, losses
