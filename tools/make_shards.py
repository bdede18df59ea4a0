"""Turn JSONL training data into WebDataset tar shards plus a manifest (format: framework/data/format.py).

    python tools/make_shards.py data/*.jsonl.gz --out shards/ --tokenizer tok/ --pretokenize
    python tools/make_shards.py DIR --out shards/ --tokenizer tok/ --part $SLURM_ARRAY_TASK_ID --num-parts 64
    python tools/make_shards.py merge shards/manifest.json shards/manifest-part*.json
    python tools/make_shards.py verify shards/manifest.json
    python tools/make_shards.py corpus/*.txt.gz --kind text --out text_shards/ --tokenizer tok/ --pretokenize

Inputs are JSONL files (plain or .gz), directories (every *.jsonl and *.jsonl.gz below them) or globs,
read in sorted order. Each record is validated by framework/data/records.py: bad records are counted by
reason and listed with file and line in the manifest; more than --max-bad-fraction of them stops the
run. An input file without records is named in a warning; a run that keeps no sample at all fails.
Exact repeats of a record are kept and counted per source (the manifest's "duplicates"). Samples go to
shards by (source, length bucket), since the training stream draws each batch from one length bucket of
one source. Lengths need --tokenizer; without one there is a single bucket. The default length edges
are framework/data/buckets.py's DEFAULT_EDGES (the paper's Table 9 edges refined to grow by x1.1, for
less padding); --length-edges 500,1000,2000,3000,4000,5000,6000,7000,8192 gives the paper's own.

Kinds: query/passage pairs (the fine-tuning stages) or plain documents (--kind text, the RetroMAE stage:
JSONL rows {"text": ...} or .txt/.txt.gz files with one document per line; framework/data/prepare/text.py).
The default --kind auto takes .txt files as documents and looks at the first object of each JSONL file;
inputs of both kinds in one run are refused. Directories are searched for .txt files only with --kind
text. A document's length is its own token count; the manifest format is the same for both kinds.

Source: --source if given, else the record's own "source", else the file name without .jsonl[.gz]
(characters other than letters, digits, '_' and '-' become '_'). Language: --lang, else the record's.

Prompts: --source-rules FILE (YAML: source -> {query_prefix, passage_prefix, record_prompt, ...}, "*" for
every source; framework/data/sources.py) prefixes each pair's texts before they are measured and
tokenised, and a record's own "prompt" replaces the query prefix. The manifest records each source's
prompts; a training stage whose data.source_rules ask for others is refused. The same file serves
tools/mine_hard_negatives.py, tools/score_pairs.py and the run config (data.source_rules: FILE).

Determinism: shards and manifest depend only on the inputs and options, not on --num-workers: workers
parse and tokenise chunks of lines, the main process writes them in input order, and tar members carry
a fixed mtime, owner and mode. --part I --num-parts N takes every N-th line (--split lines: balanced, but
every part reads all input) or every N-th file (--split files: no extra reading, for many input files);
each part writes its own shards and manifest, and `merge` combines the manifests. `verify` re-hashes
every shard against its manifest's SHA-256 (the training stream only compares sizes, at every start).

The work is framework/data/prepare/ (ShardConfig, make_shards); this file is its command line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from framework.data.buckets import DEFAULT_EDGES, PAPER_EDGES
from framework.data.manifest import merge_manifests
from framework.data.prepare import ErrorBudgetExceeded, ShardConfig, make_shards, verify_manifest  # noqa: F401
from framework.data.prepare.inputs import SPLITS
from framework.data.prepare.text import KINDS
from framework.data.records import RecordConfig
from framework.data.sources import load_source_rules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="JSONL files (.jsonl, .jsonl.gz), .txt files (--kind text), "
                        "directories or globs")
    parser.add_argument("--out", required=True, type=Path, help="output directory for shards and manifest")
    parser.add_argument("--kind", choices=KINDS, default="auto",
                        help="pairs, text (one document per sample) or auto (from the inputs)")
    parser.add_argument("--source", help="source name for all records (default: record's, else file stem)")
    parser.add_argument("--lang", help="language tag for all records (default: the record's own)")
    parser.add_argument("--source-rules", dest="source_rules", type=Path,
                        help="YAML file of per-source prompts (query_prefix, passage_prefix, record_prompt)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="samples per shard at most")
    parser.add_argument("--shard-max-bytes", type=int, default=256 << 20, help="bytes per shard at most")
    parser.add_argument("--tokenizer", help="tokenizer directory (lengths, buckets, --pretokenize)")
    parser.add_argument("--pretokenize", action="store_true", help="store token ids as .tok members")
    parser.add_argument("--max-length", type=int, help="tokens per text after truncation (default: last edge)")
    parser.add_argument("--length-edges", type=lambda s: tuple(int(x) for x in s.split(",")),
                        help=f"comma-separated bucket upper edges (default: the {len(DEFAULT_EDGES)} edges of "
                             f"framework/data/buckets.py, x1.1 apart up to {DEFAULT_EDGES[-1]}; the paper's: "
                             f"{','.join(map(str, PAPER_EDGES))})")
    parser.add_argument("--max-chars", type=int, default=RecordConfig.max_chars, help="characters per text")
    parser.add_argument("--num-workers", type=int, default=1, help="parsing/tokenising processes")
    parser.add_argument("--part", type=int, default=0, help="which part to prepare (0-based)")
    parser.add_argument("--num-parts", type=int, default=1, help="how many parts the input is split into")
    parser.add_argument("--split", choices=SPLITS, default="lines", help="how parts split input")
    parser.add_argument("--max-bad-fraction", type=float, default=0.01, help="error budget (fraction)")
    parser.add_argument("--max-examples", type=int, default=20, help="rejected records listed in the manifest")
    parser.add_argument("--chunk-size", type=int, default=256, help="lines per worker task")
    parser.add_argument("--progress-seconds", type=float, default=5.0, help="seconds between progress lines")
    return parser


def merge(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="make_shards.py merge", description="combine part manifests")
    parser.add_argument("out", type=Path, help="merged manifest to write")
    parser.add_argument("manifests", nargs="+", type=Path, help="part manifests")
    parser.add_argument("--max-examples", type=int, default=20, help="rejected records listed")
    args = parser.parse_args(argv)
    try:
        merged = merge_manifests(args.manifests, args.out, args.max_examples)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"make_shards merge: {error}")
    print(f"merged {len(args.manifests)} manifest(s): {len(merged.shards)} shards, {merged.num_samples:,} "
          f"samples, {merged.num_rejected:,} rejected -> {args.out}")


def verify(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="make_shards.py verify",
                                     description="re-hash every shard against its manifest's sha256")
    parser.add_argument("manifest", type=Path, help="manifest to check (its shards are read whole)")
    args = parser.parse_args(argv)
    try:
        manifest = verify_manifest(args.manifest)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"make_shards verify: {error}")
    print(f"verified {args.manifest}: {len(manifest.shards)} shard(s) match their sha256 "
          f"({sum(s.num_bytes for s in manifest.shards):,} bytes, {manifest.num_samples:,} samples)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"merge": merge, "verify": verify}
    if argv[:1] and argv[0] in commands:
        commands[argv[0]](argv[1:])
        return
    args = vars(build_parser().parse_args(argv))
    inputs = args.pop("inputs")
    try:
        rules = args.pop("source_rules")
        args["source_rules"] = {} if rules is None else load_source_rules(rules)
        make_shards(inputs, ShardConfig(out_dir=args.pop("out"), **args))
    except (ValueError, FileNotFoundError) as error:  # user errors (options, inputs, budget): no traceback
        sys.exit(f"make_shards: {error}")


if __name__ == "__main__":
    main()
