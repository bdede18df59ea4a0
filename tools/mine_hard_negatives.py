"""Mine hard negatives for JSONL training rows, ANCE-style: sample from a band of a retriever's ranking.

    python tools/mine_hard_negatives.py train.jsonl --out train.hn.jsonl --model bge-m3/
    python tools/mine_hard_negatives.py train.jsonl --out train.hn.jsonl --model bge-m3/ --method bm25 \\
        --corpus passages.jsonl --range-start 10 --range-end 210

Rows are in the reference format ({"query": str, "pos": [str, ...], "neg": [...], ...}). Each valid row is
written back with its other fields as they were and `neg` replaced by `--num-neg` passages drawn
(seeded by --seed and the line number) from ranks [range-start, range-end) of the query's ranking over
the candidate pool: 0-based, end excluded, positives included in the count (FlagEmbedding's
--range_for_sampling). The top ranks are skipped because they are often unlabelled positives. A passage
that is a positive of the row, or the query itself, is never drawn (compared after stripping surrounding
whitespace); a row whose band holds fewer candidates gets fewer negatives (counted). `neg_scores` are
dropped: they scored the old negatives.

Pool: every distinct `pos` text of the input (plus the old `neg` texts with --pool-with-neg), or
--corpus FILE: JSONL (a string or an object with "text" per line) when it ends in .jsonl[.gz], else one
passage per line. --method dense encodes with an M3 model directory (M3Embedder + DenseIndex);
--method bm25 uses only its tokenizer (BM25Index, as the paper's BM25 rows).

Prompts (--method dense): --source-rules FILE (the file tools/make_shards.py --source-rules reads) puts
each row's source prefixes before its query and the pool passages, and a row's own "prompt" replaces the
query prefix, so the retriever ranks the texts the student will train on; rows are written back as they
were. A row's source is --source, else its own "source", else the input file's name; --corpus passages
take their object's "source", else --source, else the file's. BM25 ranks the raw texts.

Bad rows (invalid UTF-8, blank, malformed JSON, no query or pos, wrong types) are copied through
unchanged, so output line N is always input line N; they are counted by reason and listed with line
numbers. Output is written a chunk at a time; rerunning with the same --out resumes after the last
complete chunk, once the options and input are checked against OUT.state.json and every kept output
line against its input line (a partly written chunk is redone, so a resumed file equals an
uninterrupted one byte for byte). --overwrite starts again.
"""
from __future__ import annotations

import argparse

from framework.data.sources import load_source_rules
from framework.retrieval import DenseIndexConfig
from framework.retrieval.dense import DEVICES, INDEX_KINDS

if __package__:  # imported as tools.mine_hard_negatives (tests, python -m)
    from tools.mining import METHODS, MiningConfig, MiningReport, mine
else:  # run as `python tools/mine_hard_negatives.py`: tools/ is the script's directory, first on the path
    from mining import METHODS, MiningConfig, MiningReport, mine


def main(argv: list[str] | None = None) -> MiningReport:
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-row draws")
    parser.add_argument("--chunk-size", type=int, default=1024, help="rows retrieved and written together")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder pass (dense)")
    parser.add_argument("--max-query-length", type=int, default=512, help="query tokens after truncation")
    parser.add_argument("--max-passage-length", type=int, default=512, help="passage tokens after truncation")
    parser.add_argument("--device", default="auto", help="encoder device: auto, cpu, cuda, cuda:N")
    parser.add_argument("--index", default="flat", choices=INDEX_KINDS, help="faiss index kind (dense)")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF cells")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF cells searched per query")
    parser.add_argument("--faiss-device", default="auto", choices=DEVICES, help="where the faiss index lives")
    parser.add_argument("--source-rules", help="YAML file of per-source prompts (make_shards' file)")
    parser.add_argument("--source", help="source of every row (default: the row's own, else the file name)")
    parser.add_argument("--overwrite", action="store_true", help="start again instead of resuming --out")
    args = parser.parse_args(argv)
    try:
        index = DenseIndexConfig(kind=args.index, nlist=args.nlist, nprobe=args.nprobe, device=args.faiss_device)
        config = MiningConfig(model=args.model, method=args.method, num_neg=args.num_neg,
                              range_start=args.range_start, range_end=args.range_end, seed=args.seed,
                              pool_with_neg=args.pool_with_neg, chunk_size=args.chunk_size,
                              batch_size=args.batch_size, max_query_length=args.max_query_length,
                              max_passage_length=args.max_passage_length, device=args.device, index=index,
                              source_rules={} if args.source_rules is None else load_source_rules(args.source_rules),
                              source=args.source)
        return mine(args.input, args.out, config, args.corpus, args.overwrite)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
