"""False-negative control in mining on DDTP: what each rule removes per source, and whether training on the
filtered negatives changes dev nDCG@10 (same trainer settings, paired seeds).

    python -m bench.mining_filter [--seeds 0 1 2] [--steps 30] [--relative-margin 0.05] [--absolute-margin M]
                                  [--corpus-dir /work/data/ddtp-full/train] [--max-pool 10000] [--mine-only]
                                  [--out DIR]

Shared by every seed: a sentencepiece tokenizer (the sample text and the DDTP sample's train documents, as
bench/retromae_ablation.py trains it) and two minings of the shipped DDTP sample's train rows
(data/ddtp/train, one file per source) with tools/mine_hard_negatives.py, BM25 over the tokenizer's ids,
per source against that source's pool: the first --max-pool distinct positives of
--corpus-dir/<source>.jsonl.gz (the full build's train split by default, so the pools are real per-language
ones, capped to keep BM25 indexing in minutes on 2 cores; the sample's own positives without it):

    A  rank window:  7 negatives drawn from ranks [3, 50) (DDTP's own build), positives excluded
    B  filtered:     the same, then --max-score / --min-score / --absolute-margin / --relative-margin on the
                     BM25 score relative to the row's positive (candidates the rules remove are not drawn)

Per seed s, one tiny random XLM-R initialised with seed s is fine-tuned twice with configs/demo.yaml's warmup
and unified stages (--steps each, run seed s): on A's shards and on B's; only the negatives differ. Both
exports are evaluated on the DDTP sample's dev split (ddtp-dev, all its queries).

Printed: per source, B's mining counts (rows, candidates, removed by each rule, eligible, chosen); then
nDCG@10 (x100) of dense, sparse, multi-vector and all, A and B means +- std over seeds, the paired
differences B - A (mean +- std, per seed) and |mean| / standard error. Everything goes under --out (default
a new temp folder); rerunning with the same --out and options skips the minings, runs and evaluations done.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import tempfile
from pathlib import Path

from bench.retromae_ablation import (MAX_LENGTH, MODE_LABELS, check_out_dir, finetune_config, mean_std, markdown,
                                     say, train, train_documents)
from framework.resources import ddtp_dir
from framework.starting import build_model, train_tokenizer, write_tokenizer_text

DDTP_TRAIN = ddtp_dir() / "train"
FULL_TRAIN = Path("/work/data/ddtp-full/train")
MODES = ("dense", "sparse", "colbert", "all")
RANK_RANGE = (3, 50)  # DDTP's own build (tools/ddtp): 7 negatives from BM25 ranks [3, 50)
NUM_NEG = 7


def sources() -> list[str]:
    return sorted(path.name.removesuffix(".jsonl.gz") for path in DDTP_TRAIN.glob("*.jsonl.gz"))


def prepare_tokenizer(data_dir: Path) -> Path:
    tokenizer = data_dir / "tokenizer"
    if not (tokenizer / "tokenizer_config.json").is_file():
        data_dir.mkdir(parents=True, exist_ok=True)
        text = write_tokenizer_text(data_dir / "tokenizer-text.txt", train_documents())
        train_tokenizer([text], tokenizer, vocab_size=8000, seed=0)
    return tokenizer


def prepare_corpora(data_dir: Path, corpus_dir: Path | None, max_pool: int) -> dict[str, Path]:
    """Source -> JSONL pool file: the first max_pool distinct positives of corpus_dir/<source>.jsonl.gz."""
    out = {}
    for source in sources():
        path = data_dir / "corpus" / f"{source}.jsonl"
        out[source] = path
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        seen: dict[str, None] = {}
        with gzip.open((corpus_dir or DDTP_TRAIN) / f"{source}.jsonl.gz", "rt", encoding="utf-8") as rows:
            for line in rows:
                for text in json.loads(line)["pos"]:
                    seen.setdefault(text, None)
                if len(seen) >= max_pool:
                    break
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in seen), encoding="utf-8")
        tmp.replace(path)
    return out


def mine_arm(arm_dir: Path, tokenizer: Path, corpora: dict[str, Path], rules: dict) -> tuple[Path, dict]:
    """Mines every source into arm_dir/train/<source>.jsonl, shards them; (manifest, source -> counts)."""
    from tools.make_shards import main as make_shards
    from tools.mining import MiningConfig, MiningReport, ScoreRules, mine, report_path_of

    config = MiningConfig(model=str(tokenizer), method="bm25", num_neg=NUM_NEG, range_start=RANK_RANGE[0],
                          range_end=RANK_RANGE[1], rules=ScoreRules(**rules), chunk_size=4096)
    train_dir = arm_dir / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    total = MiningReport()
    for source, corpus in corpora.items():
        out = train_dir / f"{source}.jsonl"
        if report_path_of(out).is_file():
            report = MiningReport.load(report_path_of(out))
        else:
            report = mine(DDTP_TRAIN / f"{source}.jsonl.gz", out, config, corpus_path=corpus, progress_seconds=600)
        total.add(report)
    manifest = arm_dir / "shards" / "manifest.json"
    if not manifest.is_file():
        inputs = [str(train_dir / f"{source}.jsonl") for source in corpora]
        make_shards([*inputs, "--out", str(manifest.parent), "--tokenizer", str(tokenizer), "--pretokenize",
                     "--max-length", str(MAX_LENGTH)])
    return manifest, total


def evaluate_dev(export: Path, out: Path) -> dict:
    """{mode: nDCG@10} on the DDTP sample's dev split (macro average over directions)."""
    if not out.is_file():
        from framework.evaluate import EvalConfig, evaluate

        evaluate(export, "ddtp-dev", EvalConfig(modes=MODES, progress=False), out=out)
    overall = json.loads(out.read_text(encoding="utf-8"))["overall"]
    return {mode: overall[mode]["ndcg_at_10"] for mode in MODES}


def comparison(a: list[dict], b: list[dict], seeds: list[int]) -> str:
    header = ["nDCG@10 (x100)", "A rank window", "B filtered", "B - A", f"B - A per seed {seeds}", "|B-A|/SE"]
    rows = []
    for mode in MODES:
        va, vb = [100 * r[mode] for r in a], [100 * r[mode] for r in b]
        diffs = [y - x for x, y in zip(va, vb)]
        (ma, sa), (mb, sb), (md, sd) = mean_std(va), mean_std(vb), mean_std(diffs)
        se = sd / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        # One seed has no spread: no ratio (nan), never an infinite one.
        ratio = float("nan") if math.isnan(se) else abs(md) / se if se > 0 else float("inf") if md else 0.0
        rows.append([MODE_LABELS[mode], f"{ma:.2f} ± {sa:.2f}", f"{mb:.2f} ± {sb:.2f}", f"{md:+.2f} ± {sd:.2f} "
                     f"(SE {se:.2f})", " ".join(f"{d:+.2f}" for d in diffs), f"{ratio:.1f}"])
    return markdown(header, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a new temp folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model init and run seeds")
    parser.add_argument("--steps", type=int, default=30, help="steps of each fine-tuning stage")
    parser.add_argument("--nproc", type=int, default=1, choices=(1, 2), help="training processes")
    parser.add_argument("--log-every", type=int, default=10, help="steps per logged window")
    parser.add_argument("--corpus-dir", type=Path, default=FULL_TRAIN if FULL_TRAIN.is_dir() else None,
                        help="DDTP train folder whose positives are each source's pool (default: the full build "
                        "when present, else the sample)")
    parser.add_argument("--max-pool", type=int, default=10_000, help="passages per source pool at most")
    parser.add_argument("--max-score", type=float, help="arm B: drop candidates with a BM25 score above this")
    parser.add_argument("--min-score", type=float, help="arm B: drop candidates with a BM25 score below this")
    parser.add_argument("--absolute-margin", type=float, help="arm B: drop candidates scoring above pos - margin")
    parser.add_argument("--relative-margin", type=float, default=0.05,
                        help="arm B: drop candidates scoring above pos x (1 - margin)")
    parser.add_argument("--mine-only", action="store_true", help="mine both arms and print the counts; no training")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds} repeats a seed")
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="mining-filter-"))).resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Seeds and the mine-only switch may change between calls on one --out: the minings depend on neither.
    check_out_dir(argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ("seeds", "mine_only")}))
    say(f"working in {args.out}; pools from {args.corpus_dir or DDTP_TRAIN}")
    tokenizer = prepare_tokenizer(args.out / "data")
    corpora = prepare_corpora(args.out / "data", args.corpus_dir, args.max_pool)
    rules = {name: getattr(args, name) for name in ("max_score", "min_score", "absolute_margin", "relative_margin")}
    manifest_a, counts_a = mine_arm(args.out / "A", tokenizer, corpora, {})
    manifest_b, counts_b = mine_arm(args.out / "B", tokenizer, corpora, rules)
    from tools.mining.report import rule_table

    table = "\n".join(rule_table(counts_b.sources, counts_b.overall()))
    say(f"arm B's rules {rules}, per source (BM25 ranks [{RANK_RANGE[0]}, {RANK_RANGE[1]}), {NUM_NEG} "
        f"negatives):\n{table}")
    (args.out / "mining.json").write_text(json.dumps({"rules": rules, "A": counts_a.to_json(),
                                                      "B": counts_b.to_json()}, indent=1))
    if args.mine_only:
        return
    a, b = [], []
    for seed in args.seeds:
        root = args.out / f"seed{seed}"
        init = root / "init"
        if not (init / "config.json").is_file():
            build_model(tokenizer, init, size="tiny", seed=seed)
        for arm, manifest, results in (("A", manifest_a, a), ("B", manifest_b, b)):
            say(f"seed {seed}, arm {arm}: warmup + unified, {args.steps} steps each")
            export = train(finetune_config(root / arm, init, manifest, seed, args.steps, args.log_every), args.nproc)
            results.append(evaluate_dev(export, root / arm / "dev.json"))
    (args.out / "summary.json").write_text(json.dumps({"seeds": args.seeds, "A": a, "B": b}, indent=1))
    print(f"\nDDTP sample dev split (all queries), macro average over directions; {len(args.seeds)} seed(s); "
          f"mean ± sample std over seeds; SE = std of the paired differences / sqrt(seeds)\n"
          f"{comparison(a, b, args.seeds)}\n(B - A > 0: the filtered negatives train a better retriever)",
          flush=True)


if __name__ == "__main__":
    main()
