"""Score training pairs with a teacher: every (query, pos) and (query, neg) gets a score for distillation.

    python tools/score_pairs.py train.hn.jsonl --out train.scored.jsonl --teacher bge-reranker-v2-m3/
    python tools/score_pairs.py data/*.jsonl --out-dir scored/ --teacher m3-export/ --scale 50
    python tools/score_pairs.py --manifest shards/manifest.json --out-dir scored/ --teacher bge-reranker-v2-m3/
    python tools/score_pairs.py train.jsonl --out train.scored.jsonl --teacher T/ --part 3 --num-parts 16
    python tools/score_pairs.py merge --out train.scored.jsonl --num-parts 16

Rows are in the reference format ({"query": str, "pos": [str, ...], "neg": [str, ...], ...}, with the
aliases framework/data/records.py accepts). Each valid row is written back with its other fields as
they were and `pos_scores` / `neg_scores` set (one number per passage), which tools/make_shards.py
carries into the shards and the trainer turns into softmax targets over each query's group
(loss.kd_loss_type: kl_div or m3_kd_loss). Output line N is input line N; bad rows (invalid UTF-8,
blank, malformed JSON, no query or pos, wrong types) are copied through unchanged and counted by reason
with file and line (OUT.report.json keeps the counts).

Teachers (--kind auto tells them apart by config.json): a Hugging Face cross-encoder directory
(AutoModelForSequenceClassification with one logit, e.g. bge-reranker-v2-m3: raw logits are written),
or an M3 model directory (this framework's export, or BAAI/bge-m3), scored by its hybrid
(w1 dense + w2 sparse + w3 colbert) / (w1 + w2 + w3) with --weights w1,w2,w3. Pairs are sorted by
length and batched under --batch-tokens; float32 on the CPU, bfloat16 on a GPU (--dtype overrides).

Prompts: --source-rules FILE (the file tools/make_shards.py --source-rules reads: per-source query and
passage prefixes, framework/data/sources.py) and each row's own "prompt" are put before the texts the
teacher scores, so it scores what the student will see; a row's source is --source, else its own
"source", else the input file's name (as make_shards resolves it).

Output is written --chunk-size rows at a time; rerunning the same command resumes after the last
complete chunk once the input and every option are checked against OUT.state.json, and every kept line
against its input line: the resumed file equals an uninterrupted one byte for byte. --overwrite starts
again. --part I --num-parts N scores the I-th run of chunks of each file into OUT.partIIIII-of-NNNNN
(a SLURM array: slurm/score_pairs.sbatch); `merge` joins the parts into exactly the file one run writes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from framework.data.manifest import load_manifest
from framework.data.sources import load_source_rules
from framework.teacher import (BatchingConfig, CrossEncoderConfig, HybridWeights, M3TeacherConfig, RuntimeConfig,
                               ScoreFileConfig, ScoreReport, TeacherConfig, detect_kind, load_teacher, merge_scored,
                               score_file)
from framework.teacher.config import DTYPES, KINDS

# Options that only one kind of teacher reads: giving one to the other kind is a mistake worth naming.
KIND_OPTIONS = {"cross_encoder": ("max_length",), "m3": ("weights", "max_query_length", "max_passage_length")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", type=Path, help="pair JSONL files (plain or .gz)")
    parser.add_argument("--manifest", type=Path, help="score the input files a shard manifest lists")
    parser.add_argument("--out", type=Path, help="output JSONL (one input); an existing one is resumed")
    parser.add_argument("--out-dir", type=Path, help="output directory: one file per input, named as the input "
                        "without .gz")
    parser.add_argument("--teacher", required=True, help="cross-encoder or M3 model directory")
    parser.add_argument("--kind", choices=KINDS, default="auto", help="teacher kind (auto: from config.json)")
    parser.add_argument("--max-length", type=int, help="cross-encoder: tokens of query + passage (default 512)")
    parser.add_argument("--weights", help="M3: hybrid weights dense,sparse,colbert (default 0.4,0.2,0.4)")
    parser.add_argument("--max-query-length", type=int, help="M3: query tokens (default 512)")
    parser.add_argument("--max-passage-length", type=int, help="M3: passage tokens (default: the model's limit)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bfloat16 on a GPU, else float32")
    parser.add_argument("--batch-tokens", type=int, default=BatchingConfig.batch_tokens,
                        help="padded tokens per forward pass")
    parser.add_argument("--max-batch-size", type=int, default=BatchingConfig.max_batch_size,
                        help="inputs per forward pass at most")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply scores before writing (e.g. 50 for "
                        "an M3 teacher: targets are softmax(scores) without a temperature)")
    parser.add_argument("--source-rules", type=Path, help="YAML file of per-source prompts (make_shards' file)")
    parser.add_argument("--source", help="source of every row (default: the row's own, else the file name)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="rows scored and written together")
    parser.add_argument("--part", type=int, default=0, help="which part to score (0-based)")
    parser.add_argument("--num-parts", type=int, default=1, help="how many parts each input is split into")
    parser.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    parser.add_argument("--progress-seconds", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' load reports and bars")
    return parser


def quiet_libraries() -> None:
    """Model-loading chatter (transformers' load reports and weight bars) is not progress; hide it."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def teacher_config(args: argparse.Namespace) -> TeacherConfig:
    kind = detect_kind(args.teacher) if args.kind == "auto" else args.kind
    for other, names in KIND_OPTIONS.items():
        given = [name for name in names if other != kind and getattr(args, name) is not None]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} is an option of {other} teachers; {args.teacher} is "
                             f"used as {kind} (drop the option, or pass --kind {other})")
    runtime = RuntimeConfig(device=args.device, dtype=args.dtype)
    batching = BatchingConfig(args.batch_tokens, args.max_batch_size)
    if kind == "cross_encoder":
        return CrossEncoderConfig(args.teacher, args.max_length or 512, runtime, batching)
    weights = HybridWeights(*_floats(args.weights, "--weights")) if args.weights else HybridWeights()
    query_length = args.max_query_length or M3TeacherConfig.max_query_length
    return M3TeacherConfig(args.teacher, weights, query_length, args.max_passage_length, runtime, batching)


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise ValueError(f"{name} {text!r}: give three comma-separated numbers, dense,sparse,colbert "
                         "(e.g. 0.4,0.2,0.4)")
    return values


def jobs(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(input, output) per file to score."""
    inputs = list(args.inputs)
    if args.manifest is not None:
        inputs += manifest_inputs(args.manifest)
    if not inputs:
        raise ValueError("no input: give pair JSONL files, or --manifest shards/manifest.json")
    if (args.out is None) == (args.out_dir is None):
        raise ValueError("give exactly one of --out FILE (one input) and --out-dir DIR")
    missing = [str(path) for path in inputs if not path.is_file()]
    if missing:
        raise ValueError(f"input file(s) not found: {', '.join(missing)}")
    if args.out is not None:
        if len(inputs) != 1:
            raise ValueError(f"--out takes one input, got {len(inputs)}; use --out-dir DIR for several")
        return [(inputs[0], args.out)]
    names: dict[str, Path] = {}
    for path in inputs:
        name = path.name.removesuffix(".gz")
        if name in names:
            raise ValueError(f"inputs {names[name]} and {path} would both write {args.out_dir / name}; score them "
                             "into different --out-dir directories")
        names[name] = path
    return [(path, args.out_dir / name) for name, path in names.items()]


def manifest_inputs(manifest_path: Path) -> list[Path]:
    """The manifest's input files: as recorded (relative to where make_shards ran), else next to the manifest."""
    manifest = load_manifest(manifest_path)
    if not manifest.inputs:
        raise ValueError(f"{manifest_path} lists no input files; give the JSONL files instead")
    found = []
    for name in manifest.inputs:
        candidates = [Path(name), manifest_path.parent / name]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise ValueError(f"{manifest_path} lists input {name}, which is neither there nor next to the manifest; "
                             "run from the directory make_shards ran in, or give the files instead")
        found.append(path)
    return found


def merge_main(argv: list[str]) -> ScoreReport:
    parser = argparse.ArgumentParser(prog="score_pairs.py merge", description="join the parts of a split run")
    parser.add_argument("--out", type=Path, help="the output file the parts were written for")
    parser.add_argument("--out-dir", type=Path, help="merge every file of this directory that has parts")
    parser.add_argument("--num-parts", type=int, required=True, help="the --num-parts of the run")
    args = parser.parse_args(argv)
    try:
        if (args.out is None) == (args.out_dir is None):
            raise ValueError("give exactly one of --out FILE and --out-dir DIR")
        suffix = f".part00000-of-{args.num_parts:05d}"
        outputs = [args.out] if args.out else sorted(p.with_name(p.name.removesuffix(suffix))
                                                     for p in args.out_dir.glob(f"*{suffix}"))
        if not outputs:
            raise ValueError(f"{args.out_dir} holds no file with parts of a {args.num_parts}-part run")
        total = ScoreReport()
        for output in outputs:
            total.add(merge_scored(output, args.num_parts))
            print(f"merged {args.num_parts} parts -> {output}", flush=True)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(total.summary(), flush=True)
    return total


def main(argv: list[str] | None = None) -> ScoreReport:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    try:
        files = jobs(args)
        rules = {} if args.source_rules is None else load_source_rules(args.source_rules)
        config = ScoreFileConfig(args.scale, args.chunk_size, args.part, args.num_parts, args.overwrite,
                                 args.progress_seconds, rules, args.source)
        teacher = load_teacher(teacher_config(args))
        total = ScoreReport()
        for input_path, output_path in files:
            print(f"scoring {input_path} -> {output_path}" + (f" (part {args.part} of {args.num_parts})"
                                                               if args.num_parts > 1 else ""), flush=True)
            total.add(score_file(input_path, output_path, teacher, config))
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    print(total.summary(), flush=True)
    return total


if __name__ == "__main__":
    main()
