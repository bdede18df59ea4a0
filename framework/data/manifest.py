"""The manifest of a shard set: which tars exist, what they hold, and what the preparation rejected.

One JSON file next to (or above) the shards, written by tools/make_shards.py (one per part) and combined
by `merge_manifests`. Shard paths are relative to the manifest's directory, so a shard set can be moved
as a whole. Samples are grouped into shards by (source, length bucket): a sample's length is the longest
of its query and passages in tokens, specials included, after truncation; bucket i holds lengths in
(length_edges[i-1], length_edges[i]] (framework/data/buckets.py: bucket_of and the default edges).
Without a tokenizer there are no edges and every shard is bucket 0.

    {"format": "m3-shards", "version": 1,
     "shards": [{"path", "num_samples", "num_bytes", "sha256", "source", "bucket", "lang", "pretokenized"}],
     "totals": {...derived, checked on load}, "length_histogram": {"upper_edges": [...], "counts": [...]},
     "num_records", "rejected": {reason: n}, "fixed": {reason: n}, "reject_examples": [{file, line,
     reason, detail}], "tokenizer": {path, file, sha256, max_length} | null, "inputs": [...], "parts": [[i, n]],
     "duplicates": {source: n}, "prompts": {source: {query_prefix, passage_prefix, record_prompt}}}

`prompts` (pair shards) records the prefixes each source's texts got before tokenisation (framework/data/
sources.py); a manifest without it was made before prompts existed (no prefix, record prompts left out).

Integrity: `load_manifest` checks that every shard exists; framework/data/integrity.py compares sizes
(cheap, at every stream start) and SHA-256 (`tools/make_shards.py verify`).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

MANIFEST_FORMAT = "m3-shards"
MANIFEST_VERSION = 1
# Identity files in order of preference: tokenizer.json is what transformers 5 runs.
TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model")


@dataclass(frozen=True)
class ShardInfo:
    """One tar shard."""

    path: str
    """Location relative to the manifest's directory (POSIX separators)."""
    num_samples: int
    """Samples in the shard."""
    num_bytes: int
    """Size of the tar file."""
    sha256: str
    """Hex SHA-256 of the tar file."""
    source: str
    """Data source of every sample in the shard."""
    bucket: int
    """Length bucket of every sample in the shard (index into Manifest.length_edges; 0 without edges)."""
    lang: str | None = None
    """Language of every sample in the shard; None when they have none or several."""
    pretokenized: bool = False
    """Whether every sample has a `.tok` member."""


@dataclass(frozen=True)
class RejectExample:
    """One rejected input record."""

    file: str
    """Input file as given."""
    line: int
    """1-based line number in the (decompressed) file."""
    reason: str
    """A records.REJECT_REASONS string."""
    detail: str
    """What was wrong."""


@dataclass(frozen=True)
class TokenizerInfo:
    """Which tokenizer measured (and, when pretokenized, encoded) the samples."""

    path: str
    """Tokenizer directory as given."""
    file: str
    """The file hashed (tokenizer.json, else sentencepiece.bpe.model)."""
    sha256: str
    """Hex SHA-256 of that file: two manifests agree on tokens only when these agree."""
    max_length: int
    """Tokens per text (specials included) after truncation."""


@dataclass(frozen=True)
class Manifest:
    """A shard set; see the module docstring for the JSON layout."""

    shards: tuple[ShardInfo, ...]
    """The shards, sorted by path."""
    length_edges: tuple[int, ...] | None = None
    """Upper edges of the length buckets in tokens; None without a tokenizer."""
    num_records: int = 0
    """Input records read (kept + rejected); blank lines count as rejected records."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Rejected records by reason."""
    fixed: dict[str, int] = field(default_factory=dict)
    """Repairs by kind (too_long, empty_*_dropped, truncated_tokens); a record may have several."""
    reject_examples: tuple[RejectExample, ...] = ()
    """The first rejected records, in input order."""
    tokenizer: TokenizerInfo | None = None
    """Tokenizer identity, when lengths were measured."""
    inputs: tuple[str, ...] = ()
    """Input files read, sorted."""
    parts: tuple[tuple[int, int], ...] = ()
    """(part, num_parts) of each preparation run merged in."""
    duplicates: dict[str, int] = field(default_factory=dict)
    """Per source: kept records that repeat an earlier one exactly (after normalisation), within each
    preparation part (a merge adds the parts' counts; repeats across parts are not seen)."""
    prompts: dict[str, dict] = field(default_factory=dict)
    """Per source of pair shards: the prompts its texts were prefixed with (sources.Prompts.to_json())."""
    root: Path = Path(".")
    """Directory the shard paths are relative to (the manifest's directory); not serialised."""

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def num_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def length_counts(self) -> tuple[int, ...] | None:
        """Samples per length bucket (the histogram); None without edges."""
        if self.length_edges is None:
            return None
        counts = [0] * len(self.length_edges)
        for shard in self.shards:
            counts[shard.bucket] += shard.num_samples
        return tuple(counts)

    def shard_path(self, shard: ShardInfo) -> Path:
        """Where a shard lies on disk."""
        return self.root / shard.path

    def samples_by_source(self) -> dict[str, int]:
        counts: Counter = Counter()
        for shard in self.shards:
            counts[shard.source] += shard.num_samples
        return dict(sorted(counts.items()))

    def to_json(self) -> dict:
        histogram = None
        if self.length_edges is not None:
            histogram = {"upper_edges": list(self.length_edges), "counts": list(self.length_counts)}
        return {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
            "shards": [asdict(s) for s in self.shards],
            "totals": {"num_shards": len(self.shards), "num_samples": self.num_samples,
                       "num_records": self.num_records, "num_rejected": self.num_rejected,
                       "samples_by_source": self.samples_by_source()},
            "length_histogram": histogram,
            "num_records": self.num_records,
            "rejected": dict(sorted(self.rejected.items())), "fixed": dict(sorted(self.fixed.items())),
            "reject_examples": [asdict(e) for e in self.reject_examples],
            "tokenizer": None if self.tokenizer is None else asdict(self.tokenizer),
            "inputs": list(self.inputs), "parts": [list(p) for p in self.parts],
            "duplicates": dict(sorted(self.duplicates.items())),
            **({"prompts": dict(sorted(self.prompts.items()))} if self.prompts else {}),
        }

    def save(self, path: str | Path) -> Path:
        """Write the manifest as deterministic JSON (no timestamps, fixed key order)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_dumps(self.to_json()), encoding="utf-8")
        return path


def _dumps(data: dict) -> str:
    """JSON with one line per top-level field and per shard or example: readable and diff-friendly."""
    def compact(value) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))

    lines = []
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n".join(f"  {compact(item)}" for item in value)
            lines.append(f" {compact(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {compact(key)}: {compact(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_identity(tokenizer_dir: str | Path, max_length: int) -> TokenizerInfo:
    """The TokenizerInfo of a tokenizer directory; raises ValueError when it has no identity file."""
    for name in TOKENIZER_FILES:
        candidate = Path(tokenizer_dir) / name
        if candidate.is_file():
            return TokenizerInfo(str(tokenizer_dir), name, file_sha256(candidate), max_length)
    raise ValueError(f"tokenizer directory {tokenizer_dir} has none of {TOKENIZER_FILES}; pass a "
                     "transformers tokenizer directory (e.g. one written by tools/train_tokenizer.py)")


def read_manifest_json(path: str | Path) -> dict:
    """A manifest's JSON, format and version checked (no consistency or file checks: see load_manifest)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read manifest {path}: {error}; pass a manifest written by "
                         "tools/make_shards.py") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a shard manifest (no \"format\": \"{MANIFEST_FORMAT}\")")
    if data.get("version") != MANIFEST_VERSION:
        raise ValueError(f"manifest {path} has version {data.get('version')!r}, this code reads version "
                         f"{MANIFEST_VERSION}; re-run tools/make_shards.py with this code")
    return data


def load_manifest(path: str | Path, verify_sha256: bool = False) -> Manifest:
    """Read and check a manifest: version, consistency, and that every shard file exists.

    Raises ValueError for a bad or inconsistent manifest and FileNotFoundError naming a missing shard;
    with `verify_sha256`, also re-hashes every shard (slow on big sets).
    """
    path = Path(path)
    data = read_manifest_json(path)
    try:
        manifest = _from_json(data, path.parent)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"manifest {path} is malformed ({type(error).__name__}: {error}); regenerate it "
                         "with tools/make_shards.py") from None
    _check_consistent(manifest, data, path)
    _check_files(manifest, path, verify_sha256)
    return manifest


def _from_json(data: dict, root: Path) -> Manifest:
    tokenizer = data["tokenizer"]
    edges = data["length_histogram"]["upper_edges"] if data["length_histogram"] else None
    return Manifest(
        shards=tuple(ShardInfo(**s) for s in data["shards"]),
        length_edges=None if edges is None else tuple(edges),
        num_records=data["num_records"], rejected=dict(data["rejected"]), fixed=dict(data["fixed"]),
        reject_examples=tuple(RejectExample(**e) for e in data["reject_examples"]),
        tokenizer=None if tokenizer is None else TokenizerInfo(**tokenizer),
        inputs=tuple(data["inputs"]), parts=tuple(tuple(p) for p in data["parts"]),
        # Manifests made before duplicates were counted, or before prompts existed, lack those fields.
        duplicates=dict(data.get("duplicates", {})), prompts=dict(data.get("prompts") or {}), root=root)


def _check_consistent(manifest: Manifest, data: dict, path: Path) -> None:
    num_buckets = len(manifest.length_edges) if manifest.length_edges else 1
    for shard in manifest.shards:
        if not 0 <= shard.bucket < num_buckets:
            raise ValueError(f"manifest {path}: shard {shard.path} has bucket {shard.bucket}, but there are "
                             f"{num_buckets} buckets; regenerate the manifest")
    expected = manifest.to_json()
    for name in ("totals", "length_histogram"):
        if data.get(name) != expected[name]:
            raise ValueError(f"manifest {path}: {name} {data.get(name)} disagree with its shards "
                             f"({expected[name]}); the file was edited or truncated, regenerate it")


def _check_files(manifest: Manifest, path: Path, verify_sha256: bool) -> None:
    for shard in manifest.shards:
        location = manifest.shard_path(shard)
        if not location.is_file():
            raise FileNotFoundError(f"manifest {path} lists shard {location}, which does not exist; copy the "
                                    "shards along with the manifest or regenerate them")
        if verify_sha256 and file_sha256(location) != shard.sha256:
            raise ValueError(f"shard {location} does not match the sha256 in manifest {path}; it changed "
                             "after preparation, regenerate it")


def merge_manifests(paths: list[str | Path], out: str | Path, max_examples: int = 20) -> Manifest:
    """Combine manifests (e.g. the parts of a SLURM array job) into `out`; returns the merged manifest.

    Shard paths are rewritten relative to `out`'s directory. The inputs must agree on tokenizer and
    length edges; a shard listed twice is an error.
    """
    if not paths:
        raise ValueError("no manifests to merge; pass the part manifests (e.g. OUT/manifest-part*.json)")
    out = Path(out)
    parts = [load_manifest(p) for p in paths]
    for other, other_path in zip(parts[1:], paths[1:]):
        # The tokenizer's path may be spelled differently by each part; its hash is what matters.
        for name, value in (("tokenizer", _token_identity), ("length_edges", lambda m: m.length_edges)):
            if value(other) != value(parts[0]):
                raise ValueError(f"cannot merge {other_path} with {paths[0]}: their {name} differ "
                                 f"({value(other)} vs {value(parts[0])}); prepare both with the same "
                                 "--tokenizer, --max-length and --length-edges")
    shards = _rebased_shards(parts, out.parent)
    prompts = _merged_prompts(parts, paths)
    rejected, fixed = Counter(), Counter()
    for part in parts:
        rejected.update(part.rejected)
        fixed.update(part.fixed)
    examples = sorted((e for p in parts for e in p.reject_examples), key=lambda e: (e.file, e.line))
    duplicates: Counter = sum((Counter(p.duplicates) for p in parts), Counter())
    merged = Manifest(shards=shards, length_edges=parts[0].length_edges,
                      num_records=sum(p.num_records for p in parts), rejected=dict(rejected),
                      fixed=dict(fixed), reject_examples=tuple(examples[:max_examples]),
                      tokenizer=parts[0].tokenizer, inputs=tuple(sorted({i for p in parts for i in p.inputs})),
                      parts=tuple(sorted(q for p in parts for q in p.parts)), duplicates=dict(duplicates),
                      prompts=prompts, root=out.parent)
    _warn_missing_parts(merged.parts)
    merged.save(out)
    return merged


def _merged_prompts(parts: list[Manifest], paths: list) -> dict[str, dict]:
    """Every part's prompts per source; a source prefixed differently by two parts (or recorded by one and
    not by another that has its shards: made before prompts existed) is refused."""
    merged: dict[str, tuple[dict | None, object]] = {}
    for part, path in zip(parts, paths):
        for source in sorted({s.source for s in part.shards} | set(part.prompts)):
            prompts = part.prompts.get(source)
            seen = merged.setdefault(source, (prompts, path))
            if seen[0] != prompts:
                raise ValueError(f"cannot merge {path} with {seen[1]}: source {source!r} was prefixed with "
                                 f"{prompts or 'no recorded prompts'} there and {seen[0] or 'no recorded prompts'} "
                                 "in the other; prepare every part with this code and the same --source-rules")
    return {source: prompts for source, (prompts, _) in sorted(merged.items()) if prompts is not None}


def _token_identity(manifest: Manifest) -> tuple | None:
    info = manifest.tokenizer
    return None if info is None else (info.file, info.sha256, info.max_length)


def _rebased_shards(parts: list[Manifest], out_dir: Path) -> tuple[ShardInfo, ...]:
    shards, seen = [], {}
    for part in parts:
        for shard in part.shards:
            location = os.path.abspath(part.shard_path(shard))
            if location in seen:
                raise ValueError(f"shard {location} is listed by two of the manifests being merged; merge "
                                 "each part once (parts of one run write distinct shard names)")
            seen[location] = True
            relative = Path(os.path.relpath(location, os.path.abspath(out_dir))).as_posix()
            shards.append(replace(shard, path=relative))
    return tuple(sorted(shards, key=lambda s: s.path))


def _warn_missing_parts(parts: tuple[tuple[int, int], ...]) -> None:
    by_count: dict[int, set[int]] = {}
    for part, num_parts in parts:
        by_count.setdefault(num_parts, set()).add(part)
    for num_parts, present in sorted(by_count.items()):
        missing = sorted(set(range(num_parts)) - present)
        if missing:
            print(f"warning: merged manifests of a {num_parts}-part run lack part(s) {missing}",
                  file=sys.stderr, flush=True)
