"""The typed job config of one shard-preparation run (one part of the input): `ShardConfig`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from framework.data.buckets import DEFAULT_EDGES
from framework.data.prepare.encode import EncodeConfig
from framework.data.prepare.inputs import SPLITS
from framework.data.prepare.text import KINDS
from framework.data.records import SOURCE_PATTERN, RecordConfig
from framework.data.sources import SourceRules, check_source_rules, prompts_for


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
    source_rules: dict[str, SourceRules] = field(default_factory=dict)
    """Per-source prompts applied before tokenisation and recorded in the manifest (framework/data/sources.py;
    the batch rules in it are the trainer's and ignored here)."""

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
        check_source_rules(self.source_rules, "source_rules")
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
                            self.edges, kind, dict(self.source_rules))

    def manifest_prompts(self, kind: str, sources) -> dict[str, dict]:
        """What the manifest records: each pair source's prompts (documents take none)."""
        if kind != "pairs":
            return {}
        return {source: prompts_for(self.source_rules, source).to_json() for source in sorted(sources)}

    def manifest_path(self) -> Path:
        name = "manifest.json" if self.num_parts == 1 else f"manifest-part{self.part:05d}-of-{self.num_parts:05d}.json"
        return self.out_dir / name
