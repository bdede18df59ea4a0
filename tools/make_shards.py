"""Turn JSONL training data into WebDataset tar shards plus a manifest (format: framework/data/format.py).

    python tools/make_shards.py data/*.jsonl.gz --out shards/ --tokenizer tok/ --pretokenize
    python tools/make_shards.py DIR --out shards/ --tokenizer tok/ --part $SLURM_ARRAY_TASK_ID --num-parts 64
    python tools/make_shards.py merge shards/manifest.json shards/manifest-part*.json

Inputs are JSONL files (plain or .gz), directories (every *.jsonl and *.jsonl.gz below them) or globs,
read in sorted order. Each record is validated by framework/data/records.py: bad records are counted by
reason and listed with file and line in the manifest; more than --max-bad-fraction of them stops the
run. Samples go to shards by (source, length bucket), since the training stream draws each batch from
one length bucket of one source. Lengths need --tokenizer; without one there is a single bucket.

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
import glob
import gzip
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, NamedTuple

# `python tools/make_shards.py` puts tools/ on sys.path, not the repo root that `framework` lives in
# when the package is not installed.
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import webdataset as wds  # noqa: E402

from framework.data.format import JSON_EXT, TOKENS_EXT, encode_token_ids, sample_key  # noqa: E402
from framework.data.manifest import (DEFAULT_LENGTH_EDGES, Manifest, RejectExample, ShardInfo,  # noqa: E402
                                     bucket_of, merge_manifests, tokenizer_identity)
from framework.data.records import SOURCE_PATTERN, BadRecord, RecordConfig, parse_record  # noqa: E402

INPUT_SUFFIXES = (".jsonl", ".jsonl.gz")
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
    """Upper edges of the length buckets in tokens; default DEFAULT_LENGTH_EDGES (paper Table 9)."""
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

    def __post_init__(self) -> None:
        if min(self.shard_size, self.shard_max_bytes, self.num_workers, self.chunk_size, self.num_parts) < 1:
            raise ValueError("shard_size, shard_max_bytes, num_workers, chunk_size and num_parts must be >= 1")
        if not 0 <= self.part < self.num_parts:
            raise ValueError(f"part={self.part} with num_parts={self.num_parts}: use 0 <= part < num_parts")
        if self.split not in ("lines", "files"):
            raise ValueError(f"split={self.split!r}: use 'lines' or 'files'")
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
        return tuple(self.length_edges) if self.length_edges else DEFAULT_LENGTH_EDGES

    @property
    def token_limit(self) -> int:
        return self.max_length or self.edges[-1]

    def manifest_path(self) -> Path:
        name = "manifest.json" if self.num_parts == 1 else f"manifest-part{self.part:05d}-of-{self.num_parts:05d}.json"
        return self.out_dir / name


class ErrorBudgetExceeded(ValueError):
    """More records were rejected than --max-bad-fraction allows."""


# ---------------------------------------------------------------- inputs


def expand_inputs(inputs: list[str | Path]) -> list[str]:
    """Files from files, directories (*.jsonl, *.jsonl.gz below them) and globs; sorted, without repeats."""
    found: dict[str, str] = {}
    for item in map(str, inputs):
        if os.path.isdir(item):
            matches = [str(p) for p in Path(item).rglob("*") if p.is_file() and p.name.endswith(INPUT_SUFFIXES)]
        elif glob.has_magic(item):
            matches = [m for m in glob.glob(item, recursive=True) if os.path.isfile(m)]
        elif os.path.isfile(item):
            matches = [item]
        else:
            raise ValueError(f"input {item} does not exist; pass JSONL files, directories or globs")
        if not matches:
            raise ValueError(f"input {item} matches no files (directories are searched for {INPUT_SUFFIXES})")
        for match in matches:
            found.setdefault(os.path.abspath(match), match)
    return sorted(found.values())


def default_source(path: str) -> str:
    """The file name without .gz / .jsonl / .json, made a valid source name."""
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "data"


def iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without the line end) of a plain or gzip JSONL file."""
    opener = gzip.open if path.endswith(".gz") else open
    line_no = 0
    try:
        with opener(path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # a UTF-8 byte order mark, as some editors write
                yield line_no, raw.rstrip(b"\r\n")
    except (EOFError, OSError, zlib.error) as error:
        raise ValueError(f"cannot read {path} after line {line_no}: {error}; the file is truncated or not "
                         "gzip; re-create it") from None


class Chunk(NamedTuple):
    """Consecutive lines of one input file for one worker task."""

    file_index: int
    lines: list[tuple[int, bytes]]


def part_chunks(files: list[str], config: ShardConfig) -> Iterator[Chunk]:
    """This part's lines, cut into chunks of at most config.chunk_size lines of one file."""
    counter = 0
    for file_index, path in enumerate(files):
        lines: list[tuple[int, bytes]] = []
        for line_no, raw in iter_lines(path):
            mine = config.split == "files" or counter % config.num_parts == config.part
            counter += 1
            if not mine:
                continue
            lines.append((line_no, raw))
            if len(lines) == config.chunk_size:
                yield Chunk(file_index, lines)
                lines = []
        if lines:
            yield Chunk(file_index, lines)


def part_files(files: list[str], config: ShardConfig) -> list[str]:
    if config.split == "files":
        return files[config.part::config.num_parts]
    return files


# ---------------------------------------------------------------- workers: parse, tokenise, encode


class Sample(NamedTuple):
    line: int
    source: str
    lang: str | None
    bucket: int
    json_bytes: bytes
    token_bytes: bytes | None
    fixes: tuple[str, ...]


class Reject(NamedTuple):
    line: int
    reason: str
    detail: str


_STATE: dict = {}


def init_worker(config: ShardConfig, files: list[str], pool_worker: bool = False) -> None:
    """Per-process state: the config, input names and the tokenizer (loaded once per process)."""
    if pool_worker:
        # Each worker is one process: the tokenizer's own thread pool would only oversubscribe the cores.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _STATE.update(config=config, files=files, record_config=RecordConfig(config.max_chars), tokenizer=None)
    if config.tokenizer is not None:
        from transformers import AutoTokenizer  # seconds to import: only when tokenising

        try:
            _STATE["tokenizer"] = AutoTokenizer.from_pretrained(config.tokenizer)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot load tokenizer {config.tokenizer}: {error}; pass a transformers "
                             "tokenizer directory") from None


def process_chunk(chunk: Chunk) -> tuple[int, list[Sample | Reject]]:
    """Validate, tokenise and encode one chunk; outcomes are in line order."""
    config, files = _STATE["config"], _STATE["files"]
    default = config.source or default_source(files[chunk.file_index])
    parsed: list = []
    for line_no, raw in chunk.lines:
        try:
            record = parse_record(raw, _STATE["record_config"])
        except BadRecord as bad:
            parsed.append(Reject(line_no, bad.reason, bad.detail))
            continue
        source = config.source or record.source or default
        parsed.append((line_no, replace(record, source=source, lang=config.lang or record.lang)))
    good = [item for item in parsed if not isinstance(item, Reject)]
    encoded = iter([encode(line_no, record, tokens)
                    for (line_no, record), tokens in zip(good, tokenize([record for _, record in good]))])
    return chunk.file_index, [item if isinstance(item, Reject) else next(encoded) for item in parsed]


def tokenize(records: list) -> list[tuple[list[list[int]], int] | None]:
    """Per record: (token ids per text, number of texts truncated), or None without a tokenizer."""
    tokenizer, config = _STATE["tokenizer"], _STATE["config"]
    if tokenizer is None:
        return [None] * len(records)
    texts = [text for record in records for text in record.texts()]
    # One call for the chunk; the rare over-long texts are encoded again with the tokenizer's own
    # truncation, so ids match `tokenizer(text, truncation=True, max_length=...)` exactly.
    ids = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"] if texts else []
    limit = config.token_limit
    long = [i for i, seq in enumerate(ids) if len(seq) > limit]
    if long:
        cut = tokenizer([texts[i] for i in long], truncation=True, max_length=limit)["input_ids"]
        for i, seq in zip(long, cut):
            ids[i] = seq
    out, start, long_set = [], 0, set(long)
    for record in records:
        end = start + len(record.texts())
        out.append((ids[start:end], sum(1 for i in range(start, end) if i in long_set)))
        start = end
    return out


def encode(line_no: int, record, tokens: tuple[list[list[int]], int] | None) -> Sample:
    config = _STATE["config"]
    payload = json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if tokens is None:
        return Sample(line_no, record.source, record.lang, 0, payload, None, record.fixes)
    ids, num_truncated = tokens
    bucket = bucket_of(max(len(seq) for seq in ids), config.edges)
    token_bytes = encode_token_ids(ids) if config.pretokenize else None
    fixes = record.fixes + ("truncated_tokens",) * num_truncated
    return Sample(line_no, record.source, record.lang, bucket, payload, token_bytes, fixes)


def ordered_results(chunks: Iterator[Chunk], config: ShardConfig, files: list[str]) -> Iterator[tuple]:
    """process_chunk over the chunks, in order, with at most 2 chunks per worker in flight."""
    init_worker(config, files)  # also loads the tokenizer here, so a bad directory fails before forking
    if config.num_workers == 1:
        yield from map(process_chunk, chunks)
        return
    with multiprocessing.Pool(config.num_workers, initializer=init_worker, initargs=(config, files, True)) as pool:
        # Pool.imap would read the whole input ahead into memory; a bounded window keeps it streaming.
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(process_chunk, (chunk,)))
            if len(pending) >= 2 * config.num_workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ---------------------------------------------------------------- writing


class HashingFile:
    """A write-only file that hashes and counts what passes through (the tar stream is written once)."""

    def __init__(self, path: Path):
        self.handle = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.num_bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.num_bytes += len(data)
        return self.handle.write(data)

    def close(self) -> None:
        self.handle.close()


class OpenShard:
    def __init__(self, path: Path, source: str, bucket: int):
        self.path, self.source, self.bucket = path, source, bucket
        self.file = HashingFile(path)
        # Fixed mtime/owner/mode make the tar bytes a function of the samples alone.
        self.tar = wds.TarWriter(self.file, user="m3", group="m3", mode=0o444, mtime=0.0, encoder=False)
        self.num_samples, self.langs, self.pretokenized = 0, set(), None

    def tar_bytes(self) -> int:
        # The tar stream buffers its output, so bytes written to the file lag; the archive offset does not.
        return self.tar.tarstream.offset

    def close(self, out_dir: Path) -> ShardInfo:
        self.tar.close()
        self.file.close()
        lang = next(iter(self.langs)) if len(self.langs) == 1 else None
        return ShardInfo(self.path.relative_to(out_dir).as_posix(), self.num_samples, self.file.num_bytes,
                         self.file.sha256.hexdigest(), self.source, self.bucket, lang, bool(self.pretokenized))


class ShardSet:
    """The open shards of one part, one per (source, bucket), rotated by sample count and size."""

    def __init__(self, config: ShardConfig):
        self.config = config
        self.open: dict[tuple[str, int], OpenShard] = {}
        self.sequence: Counter = Counter()
        self.next_index: Counter = Counter()
        self.done: list[ShardInfo] = []
        self.created: list[Path] = []

    def add(self, sample: Sample) -> None:
        key = (sample.source, sample.bucket)
        shard = self.open.get(key)
        cfg = self.config
        if shard is not None and (shard.num_samples >= cfg.shard_size or shard.tar_bytes() >= cfg.shard_max_bytes):
            self.done.append(shard.close(cfg.out_dir))
            shard = None
        if shard is None:
            name = f"{sample.source}.b{sample.bucket:02d}.p{cfg.part:05d}.{self.sequence[key]:05d}.tar"
            self.sequence[key] += 1
            shard = self.open[key] = OpenShard(cfg.out_dir / name, *key)
            self.created.append(shard.path)
        members = {"__key__": sample_key(sample.source, cfg.part, self.next_index[sample.source]),
                   JSON_EXT: sample.json_bytes}
        if sample.token_bytes is not None:
            members[TOKENS_EXT] = sample.token_bytes
        self.next_index[sample.source] += 1
        shard.tar.write(members)
        shard.num_samples += 1
        shard.langs.add(sample.lang)
        shard.pretokenized = sample.token_bytes is not None

    def close(self) -> tuple[ShardInfo, ...]:
        self.done.extend(shard.close(self.config.out_dir) for shard in self.open.values())
        self.open.clear()
        return tuple(sorted(self.done, key=lambda s: s.path))

    def discard(self) -> None:
        """Close and delete every shard this run wrote (after a failure: no manifest will list them)."""
        self.close()
        for path in self.created:
            path.unlink(missing_ok=True)


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
    files = expand_inputs(inputs)
    mine = part_files(files, config)
    tokenizer = None if config.tokenizer is None else tokenizer_identity(config.tokenizer, config.token_limit)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    print(f"part {config.part}/{config.num_parts}: {len(mine)} of {len(files)} input file(s) -> {config.out_dir}",
          flush=True)
    tally, shards = Tally(config), ShardSet(config)
    results = ordered_results(part_chunks(mine, config), config, mine)
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
    parser.add_argument("inputs", nargs="+", help="JSONL files (.jsonl, .jsonl.gz), directories or globs")
    parser.add_argument("--out", required=True, type=Path, help="output directory for shards and manifest")
    parser.add_argument("--source", help="source name for all records (default: record's, else file stem)")
    parser.add_argument("--lang", help="language tag for all records (default: the record's own)")
    parser.add_argument("--shard-size", type=int, default=10_000, help="samples per shard at most")
    parser.add_argument("--shard-max-bytes", type=int, default=256 << 20, help="bytes per shard at most")
    parser.add_argument("--tokenizer", help="tokenizer directory (lengths, buckets, --pretokenize)")
    parser.add_argument("--pretokenize", action="store_true", help="store token ids as .tok members")
    parser.add_argument("--max-length", type=int, help="tokens per text after truncation (default: last edge)")
    parser.add_argument("--length-edges", type=lambda s: tuple(int(x) for x in s.split(",")),
                        help=f"comma-separated bucket upper edges (default {','.join(map(str, DEFAULT_LENGTH_EDGES))})")
    parser.add_argument("--max-chars", type=int, default=RecordConfig.max_chars, help="characters per text")
    parser.add_argument("--num-workers", type=int, default=1, help="parsing/tokenising processes")
    parser.add_argument("--part", type=int, default=0, help="which part to prepare (0-based)")
    parser.add_argument("--num-parts", type=int, default=1, help="how many parts the input is split into")
    parser.add_argument("--split", choices=("lines", "files"), default="lines", help="how parts split input")
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
