"""Turn JSONL training data into WebDataset tar shards plus a manifest (format: framework/data/format.py).

    python tools/make_shards.py data/*.jsonl.gz --out shards/ --tokenizer tok/ --pretokenize
    python tools/make_shards.py DIR --out shards/ --tokenizer tok/ --part $SLURM_ARRAY_TASK_ID --num-parts 64
    python tools/make_shards.py merge shards/manifest.json shards/manifest-part*.json
    python tools/make_shards.py corpus/*.txt.gz --kind text --out text_shards/ --tokenizer tok/ --pretokenize

Inputs are JSONL files (plain or .gz), directories (every *.jsonl and *.jsonl.gz below them) or globs,
read in sorted order. Each record is validated by framework/data/records.py: bad records are counted by
reason and listed with file and line in the manifest; more than --max-bad-fraction of them stops the
run. Samples go to shards by (source, length bucket), since the training stream draws each batch from
one length bucket of one source. Lengths need --tokenizer; without one there is a single bucket. The
default length edges are framework/data/buckets.py's DEFAULT_EDGES (the paper's Table 9 edges refined to
grow by x1.1, for less padding); --length-edges 500,1000,2000,3000,4000,5000,6000,7000,8192 gives the
paper's own.

Kinds: query/passage pairs (the fine-tuning stages) or plain documents (--kind text, the RetroMAE stage:
JSONL rows {"text": ...} or .txt/.txt.gz files with one document per line; framework/data/prepare/text.py).
The default --kind auto takes .txt files as documents and looks at the first object of each JSONL file;
inputs of both kinds in one run are refused. Directories are searched for .txt files only with --kind
text. A document's length is its own token count; the manifest format is the same for both kinds.

Source: --source if given, else the record's own "source", else the file name without .jsonl[.gz]
(characters other than letters, digits, '_' and '-' become '_'). Language: --lang, else the record's.

Determinism: shards and manifest depend only on the inputs and options, not on --num-workers: workers
parse and tokenise chunks of lines, the main process writes them in input order, and tar members carry
a fixed mtime, owner and mode. --part I --num-parts N takes every N-th line (--split lines: balanced, but
every part reads all input) or every N-th file (--split files: no extra reading, for many input files);
each part writes its own shards and manifest, and `merge` combines the manifests.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# `python tools/make_shards.py` puts tools/ on sys.path, not the repo root that `framework` lives in
# when the package is not installed.
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework.data.buckets import DEFAULT_EDGES, PAPER_EDGES  # noqa: E402
from framework.data.manifest import Manifest, RejectExample, merge_manifests, tokenizer_identity  # noqa: E402
from framework.data.prepare.encode import EncodeConfig, Reject, Sample, ordered_results  # noqa: E402
from framework.data.prepare.inputs import INPUT_SUFFIXES, SPLITS, expand_inputs, part_chunks, part_files  # noqa: E402
from framework.data.prepare.text import KINDS, TEXT_SUFFIXES, resolve_kind  # noqa: E402
from framework.data.prepare.writer import ShardSet  # noqa: E402
from framework.data.records import SOURCE_PATTERN, RecordConfig  # noqa: E402

# Bad-fraction checks during the run wait for this many records, so that one early bad line in a big
# file does not stop it; the final check counts every record.
BUDGET_MIN_RECORDS = 1000


@dataclass(frozen=True)
class ShardConfig:
    """Options of one make_shards run (one part)."""

    out_dir: Path
    """Directory for shards and the manifest."""
    source: str | None = None
    """Source name for every record (default: the record's own, else the file stem)."""
    lang: str | None = None
    """Language tag for every record (default: the record's own)."""
    shard_size: int = 10_000
    """Samples per shard at most."""
    shard_max_bytes: int = 256 << 20
    """A shard is closed once it reaches this many bytes."""
    tokenizer: str | None = None
    """Tokenizer directory: measures lengths (buckets, histogram); needed by pretokenize."""
    pretokenize: bool = False
    """Store each sample's token ids as a `.tok` member."""
    max_length: int | None = None
    """Tokens per text (specials included) after truncation; default: the last length edge."""
    length_edges: tuple[int, ...] | None = None
    """Upper edges of the length buckets in tokens; default buckets.DEFAULT_EDGES (Table 9's, refined)."""
    max_chars: int = RecordConfig.max_chars
    """Texts longer than this many characters are cut (counted as too_long)."""
    num_workers: int = 1
    """Processes parsing and tokenising; 1 runs everything in this process."""
    part: int = 0
    """Which part of the input this run prepares (0-based)."""
    num_parts: int = 1
    """Number of parts the input is split into."""
    split: str = "lines"
    """How parts split the input: "lines" (every N-th line) or "files" (every N-th file)."""
    max_bad_fraction: float = 0.01
    """Stop when more than this fraction of the records read are rejected."""
    max_examples: int = 20
    """Rejected records listed in the manifest."""
    chunk_size: int = 256
    """Lines per worker task."""
    progress_seconds: float = 5.0
    """Seconds between progress lines."""
    kind: str = "auto"
    """"pairs", "text" (plain documents) or "auto" (from the inputs: .txt files and {"text": ...} rows)."""

    def __post_init__(self) -> None:
        if min(self.shard_size, self.shard_max_bytes, self.num_workers, self.chunk_size, self.num_parts) < 1:
            raise ValueError("shard_size, shard_max_bytes, num_workers, chunk_size and num_parts must be >= 1")
        if not 0 <= self.part < self.num_parts:
            raise ValueError(f"part={self.part} with num_parts={self.num_parts}: use 0 <= part < num_parts")
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: use {' or '.join(map(repr, KINDS))}")
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r}: use {' or '.join(map(repr, SPLITS))}")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction={self.max_bad_fraction}: use a fraction in [0, 1]")
        if self.source is not None and not SOURCE_PATTERN.fullmatch(self.source):
            raise ValueError(f"source {self.source!r}: use only letters, digits, '_' and '-'")
        if self.tokenizer is None and (self.pretokenize or self.max_length or self.length_edges):
            raise ValueError("pretokenize, max_length and length_edges need a tokenizer; pass --tokenizer DIR")
        edges = self.edges
        if edges is not None and (edges[0] < 1 or any(b <= a for a, b in zip(edges, edges[1:]))):
            raise ValueError(f"length_edges {edges}: use increasing positive token counts, e.g. 500,1000,8192")
        if edges is not None and not 2 < self.token_limit <= edges[-1]:
            raise ValueError(f"max_length={self.token_limit}: use 3 .. the last length edge {edges[-1]}")

    @property
    def edges(self) -> tuple[int, ...] | None:
        """The length edges in use (None without a tokenizer)."""
        if self.tokenizer is None:
            return None
        return tuple(self.length_edges) if self.length_edges else DEFAULT_EDGES

    @property
    def token_limit(self) -> int:
        return self.max_length or self.edges[-1]

    def encoding(self, kind: str = "pairs") -> EncodeConfig:
        """The options the parse/tokenise workers need, for records of the (resolved) `kind`."""
        limit = None if self.tokenizer is None else self.token_limit
        return EncodeConfig(self.source, self.lang, self.max_chars, self.tokenizer, self.pretokenize, limit,
                            self.edges, kind)

    def manifest_path(self) -> Path:
        name = "manifest.json" if self.num_parts == 1 else f"manifest-part{self.part:05d}-of-{self.num_parts:05d}.json"
        return self.out_dir / name


class ErrorBudgetExceeded(ValueError):
    """More records were rejected than --max-bad-fraction allows."""


# ---------------------------------------------------------------- bookkeeping


class Tally:
    """Counts of records read, rejected and repaired, with the first rejected examples."""

    def __init__(self, config: ShardConfig):
        self.config = config
        self.num_records = self.num_samples = 0
        self.rejected: Counter = Counter()
        self.fixed: Counter = Counter()
        self.examples: list[RejectExample] = []
        self.start = self.last_report = time.monotonic()

    def add(self, file: str, outcome: Sample | Reject) -> None:
        self.num_records += 1
        if isinstance(outcome, Reject):
            self.rejected[outcome.reason] += 1
            if len(self.examples) < self.config.max_examples:
                self.examples.append(RejectExample(file, outcome.line, outcome.reason, outcome.detail))
        else:
            self.num_samples += 1
            self.fixed.update(outcome.fixes)

    def check_budget(self, final: bool) -> None:
        num_bad, limit = sum(self.rejected.values()), self.config.max_bad_fraction * self.num_records
        if num_bad <= limit or (not final and self.num_records < BUDGET_MIN_RECORDS):
            return
        reasons = ", ".join(f"{reason} {count}" for reason, count in self.rejected.most_common())
        first = "; ".join(f"{e.file}:{e.line} {e.reason} ({e.detail})" for e in self.examples[:3])
        raise ErrorBudgetExceeded(
            f"{num_bad} of {self.num_records} records rejected ({num_bad / self.num_records:.1%}), more than "
            f"--max-bad-fraction {self.config.max_bad_fraction}: {reasons}. First: {first}. Fix the input "
            "or raise --max-bad-fraction; no shards were kept.")

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report < self.config.progress_seconds:
            return
        self.last_report = now
        rate = self.num_records / max(now - self.start, 1e-9)
        print(f"part {self.config.part}/{self.config.num_parts}: {self.num_records:,} records, "
              f"{self.num_samples:,} kept, {sum(self.rejected.values()):,} rejected, {rate:,.0f} records/s",
              flush=True)


# ---------------------------------------------------------------- entry points


def make_shards(inputs: list[str | Path], config: ShardConfig) -> Manifest:
    """Prepare this part of `inputs` into config.out_dir; writes and returns the part's manifest.

    Raises ErrorBudgetExceeded (and deletes this run's shards) when too many records are rejected.
    """
    files = expand_inputs(inputs, INPUT_SUFFIXES + TEXT_SUFFIXES if config.kind == "text" else INPUT_SUFFIXES)
    kind = resolve_kind(config.kind, files)  # over all files, so that every part agrees
    mine = part_files(files, config.part, config.num_parts, config.split)
    tokenizer = None if config.tokenizer is None else tokenizer_identity(config.tokenizer, config.token_limit)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    print(f"part {config.part}/{config.num_parts}: {len(mine)} of {len(files)} input file(s) of {kind} -> "
          f"{config.out_dir}", flush=True)
    tally = Tally(config)
    shards = ShardSet(config.out_dir, config.part, config.shard_size, config.shard_max_bytes)
    chunks = part_chunks(mine, config.part, config.num_parts, config.split, config.chunk_size)
    results = ordered_results(chunks, config.encoding(kind), mine, config.num_workers)
    try:
        for file_index, outcomes in results:
            for outcome in outcomes:
                tally.add(mine[file_index], outcome)
                if isinstance(outcome, Sample):
                    shards.add(outcome)
            tally.check_budget(final=False)
            tally.report()
        tally.check_budget(final=True)
    except BaseException:
        shards.discard()
        raise
    finally:
        results.close()  # stops the worker pool at once when the loop ends early
    manifest = Manifest(shards=shards.close(), length_edges=config.edges, num_records=tally.num_records,
                        rejected=dict(tally.rejected), fixed=dict(tally.fixed),
                        reject_examples=tuple(tally.examples), tokenizer=tokenizer, inputs=tuple(mine),
                        parts=((config.part, config.num_parts),), root=config.out_dir)
    path = manifest.save(config.manifest_path())
    tally.report(force=True)
    print(f"wrote {len(manifest.shards)} shard(s), {manifest.num_samples:,} samples; rejected "
          f"{dict(tally.rejected.most_common())}; fixed {dict(tally.fixed.most_common())}; manifest {path}",
          flush=True)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="JSONL files (.jsonl, .jsonl.gz), .txt files (--kind text), "
                        "directories or globs")
    parser.add_argument("--out", required=True, type=Path, help="output directory for shards and manifest")
    parser.add_argument("--kind", choices=KINDS, default="auto",
                        help="pairs, text (one document per sample) or auto (from the inputs)")
    parser.add_argument("--source", help="source name for all records (default: record's, else file stem)")
    parser.add_argument("--lang", help="language tag for all records (default: the record's own)")
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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        merge = argparse.ArgumentParser(prog="make_shards.py merge", description="combine part manifests")
        merge.add_argument("out", type=Path, help="merged manifest to write")
        merge.add_argument("manifests", nargs="+", type=Path, help="part manifests")
        merge.add_argument("--max-examples", type=int, default=20, help="rejected records listed")
        args = merge.parse_args(argv[1:])
        try:
            merged = merge_manifests(args.manifests, args.out, args.max_examples)
        except (ValueError, FileNotFoundError) as error:
            sys.exit(f"make_shards merge: {error}")
        print(f"merged {len(args.manifests)} manifest(s): {len(merged.shards)} shards, {merged.num_samples:,} "
              f"samples, {merged.num_rejected:,} rejected -> {args.out}")
        return
    args = vars(build_parser().parse_args(argv))
    inputs = args.pop("inputs")
    try:
        make_shards(inputs, ShardConfig(out_dir=args.pop("out"), **args))
    except (ValueError, FileNotFoundError) as error:  # user errors (options, inputs, budget): no traceback
        sys.exit(f"make_shards: {error}")


if __name__ == "__main__":
    main()
