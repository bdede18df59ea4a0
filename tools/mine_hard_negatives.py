"""Mine hard negatives for JSONL training rows, ANCE-style, keeping likely false negatives out.

    python tools/mine_hard_negatives.py train.jsonl --out train.hn.jsonl --model bge-m3/
    python tools/mine_hard_negatives.py train.jsonl --out train.hn.jsonl --model bge-m3/ --method bm25 \\
        --corpus passages.jsonl --range-start 10 --range-end 210
    python tools/mine_hard_negatives.py train.jsonl --out train.hn.jsonl --model bge-m3/ --range-start 0 \\
        --relative-margin 0.05 --rescore-with bge-reranker-v2-m3/ --output-scores
    python tools/mine_hard_negatives.py train.jsonl --out train.hn.jsonl --model bge-m3/ --part 3 --num-parts 16
    python tools/mine_hard_negatives.py merge --out train.hn.jsonl --num-parts 16

Rows are in the reference format ({"query": str, "pos": [str, ...], "neg": [...], ...}). Each valid row is
written back with its other fields as they were and `neg` replaced by up to `--num-neg` passages drawn
(seeded by --seed and the line number) from the candidates the choosing rules leave, in rank order.
The rules, in this order (a removed candidate is counted under the first that drops it):

  positive          a positive of the row, or the query itself (compared after stripping whitespace)
  rank window       ranks [range-start, range-end) of the query's ranking over the pool are candidates:
                    0-based, end excluded, positives included in the count (FlagEmbedding's
                    --range_for_sampling); the top ranks are often unlabelled positives
  score window      --max-score / --min-score on the retriever's score (cosine for dense, BM25's score)
  margins           --absolute-margin M: drop a candidate scoring above pos - M; --relative-margin R: above
                    pos - R x |pos| (= pos x (1 - R) for a positive score: 0.05 keeps negatives at most 95 %
                    as similar as the positive, NV-Retriever's TopK-PercPos); pos is the row's weakest
                    positive, on the choosing score

The choosing score is the retriever's, or with --rescore-with DIR a teacher's: a Hugging Face cross-encoder
(one logit, e.g. bge-reranker-v2-m3) or an M3 model's hybrid score (framework/teacher), which scores
every candidate the first three rules left and the row's positives, a chunk at a time. --output-scores
writes pos_scores / neg_scores of that same score (x --scale), ready for distillation; without it stale
neg_scores are dropped. A row whose rules leave fewer candidates gets fewer negatives (counted). The
summary and OUT.report.json give, per source (the row's `source`, else the input's file name, as
make_shards names it) and overall, the candidates retrieved, removed by each rule, eligible and chosen.

Pool: every distinct `pos` text of the input (plus the old `neg` texts with --pool-with-neg), or
--corpus FILE: JSONL (a string or an object with "text" per line) when it ends in .jsonl[.gz], else one
passage per line. --method dense encodes with an M3 model directory (M3Embedder + DenseIndex);
--method bm25 uses only its tokenizer (BM25Index, as the paper's BM25 rows).

Prompts: --source-rules FILE (the file tools/make_shards.py --source-rules reads) puts each row's source
prefixes before its query and passages, and a row's own "prompt" replaces the query prefix, so the dense
retriever ranks and the --rescore-with teacher scores the texts the student will train on; rows are
written back as they were. A row's source is --source, else its own "source", else the input file's name;
--corpus passages take their object's "source", else --source, else the file's. BM25 ranks the raw texts.

Bad rows (invalid UTF-8, blank, malformed JSON, no query or pos, wrong types) are copied through
unchanged, so output line N is always input line N; they are counted by reason and listed with line
numbers. Output is written --chunk-size rows at a time (framework/jobs); rerunning the same command
resumes after the last complete chunk once the input and every option match OUT.state.json and every
kept line is re-checked: the resumed file equals an uninterrupted one byte for byte (OUT.counts
keeps each chunk's counts, so the report covers kept lines too). --part I --num-parts N mines the I-th
run of chunks into OUT.partIIIII-of-NNNNN (a SLURM array); `merge` joins the parts into exactly the
file one run writes. --overwrite starts again.
"""
from __future__ import annotations

import argparse
import sys

from framework.data.sources import load_source_rules
from framework.retrieval import DenseIndexConfig
from framework.retrieval.dense import DEVICES, INDEX_KINDS

if __package__:  # imported as tools.mine_hard_negatives (tests, python -m)
    from tools.mining import METHODS, MiningConfig, MiningReport, ScoreRules, merge_mined, mine
else:  # run as `python tools/mine_hard_negatives.py`: tools/ is the script's directory, first on the path
    from mining import METHODS, MiningConfig, MiningReport, ScoreRules, merge_mined, mine


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="JSONL rows (plain or .gz) with query, pos and optional neg")
    parser.add_argument("--out", required=True, help="output JSONL; an existing one is resumed")
    parser.add_argument("--model", required=True, help="M3 model directory (bm25 reads only its tokenizer)")
    parser.add_argument("--method", default="dense", choices=METHODS, help="retriever that ranks the pool")
    parser.add_argument("--corpus", default=None, help="candidate pool file (default: the input's positives)")
    parser.add_argument("--pool-with-neg", action="store_true", help="add the input's old negatives to the pool")
    parser.add_argument("--num-neg", type=int, default=7, help="negatives per row")
    parser.add_argument("--range-start", type=int, default=2, help="first candidate rank (0-based)")
    parser.add_argument("--range-end", type=int, default=100, help="candidate ranks stop before this one")
    rules = parser.add_argument_group("score rules (false-negative control)")
    rules.add_argument("--max-score", type=float, help="drop candidates whose retriever score is above this")
    rules.add_argument("--min-score", type=float, help="drop candidates whose retriever score is below this")
    rules.add_argument("--absolute-margin", type=float, help="drop candidates scoring above pos - margin")
    rules.add_argument("--relative-margin", type=float, help="drop candidates scoring above pos - margin x |pos|")
    rules.add_argument("--rescore-with", help="teacher directory (cross-encoder or M3 model) whose scores the "
                       "margins and --output-scores use")
    rules.add_argument("--rescore-max-length", type=int, default=512, help="cross-encoder: query + passage tokens")
    rules.add_argument("--rescore-batch-tokens", type=int, default=16384, help="teacher: padded tokens per pass")
    rules.add_argument("--output-scores", action="store_true", help="write pos_scores / neg_scores (the teacher's, "
                       "else the retriever's)")
    rules.add_argument("--scale", type=float, default=1.0, help="multiply written scores by this")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-row draws")
    parser.add_argument("--chunk-size", type=int, default=1024, help="rows retrieved and written together")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder pass (dense)")
    parser.add_argument("--max-query-length", type=int, default=512, help="query tokens after truncation")
    parser.add_argument("--max-passage-length", type=int, default=512, help="passage tokens after truncation")
    parser.add_argument("--device", default="auto", help="encoder and teacher device: auto, cpu, cuda, cuda:N")
    parser.add_argument("--index", default="flat", choices=INDEX_KINDS, help="faiss index kind (dense)")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF cells")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF cells searched per query")
    parser.add_argument("--faiss-device", default="auto", choices=DEVICES, help="where the faiss index lives")
    parser.add_argument("--part", type=int, default=0, help="which part to mine (0-based)")
    parser.add_argument("--num-parts", type=int, default=1, help="how many parts the input is split into")
    parser.add_argument("--progress-seconds", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--source-rules", help="YAML file of per-source prompts (make_shards' file)")
    parser.add_argument("--source", help="source of every row (default: the row's own, else the file name)")
    parser.add_argument("--overwrite", action="store_true", help="start again instead of resuming --out")
    return parser


def config_of(args: argparse.Namespace) -> MiningConfig:
    index = DenseIndexConfig(kind=args.index, nlist=args.nlist, nprobe=args.nprobe, device=args.faiss_device)
    rules = ScoreRules(max_score=args.max_score, min_score=args.min_score, absolute_margin=args.absolute_margin,
                       relative_margin=args.relative_margin)
    return MiningConfig(model=args.model, method=args.method, num_neg=args.num_neg, range_start=args.range_start,
                        range_end=args.range_end, seed=args.seed, pool_with_neg=args.pool_with_neg, rules=rules,
                        rescore_with=args.rescore_with, rescore_max_length=args.rescore_max_length,
                        rescore_batch_tokens=args.rescore_batch_tokens, output_scores=args.output_scores,
                        scale=args.scale, chunk_size=args.chunk_size, batch_size=args.batch_size,
                        max_query_length=args.max_query_length, max_passage_length=args.max_passage_length,
                        device=args.device, index=index, source=args.source,
                        source_rules={} if args.source_rules is None else load_source_rules(args.source_rules))


def merge_main(argv: list[str]) -> MiningReport:
    parser = argparse.ArgumentParser(prog="mine_hard_negatives.py merge", description="join the parts of a split run")
    parser.add_argument("--out", required=True, help="the output file the parts were written for")
    parser.add_argument("--num-parts", type=int, required=True, help="the --num-parts of the run")
    args = parser.parse_args(argv)
    try:
        report = merge_mined(args.out, args.num_parts)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"merged {args.num_parts} parts -> {args.out}\n{report.summary()}", flush=True)
    return report


def main(argv: list[str] | None = None) -> MiningReport:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return mine(args.input, args.out, config_of(args), args.corpus, args.overwrite, args.part, args.num_parts,
                    args.progress_seconds)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
