"""Per-source rules: how a source's batches are scored and what its texts are prefixed with.

One section per source, the same everywhere: a run config's `data.source_rules`, and the file that
tools/make_shards.py, tools/mine_hard_negatives.py and tools/score_pairs.py read (`--source-rules
FILE`, a YAML mapping of the same form; `data.source_rules: FILE` in a run config reads it too):

    "*":     {query_prefix: "query: ", passage_prefix: "passage: "}   # every source's default
    nli:     {in_batch_negatives: false}                               # its own group only
    msmarco: {query_prefix: "Given a web search query, retrieve relevant passages: "}

Batch rules (training only): `in_batch_negatives: false` makes each query of the source score only its own
group (no in-batch, no cross-rank negatives: classification-style sources); `mask_duplicates: false`
keeps passages equal to one of the query's positives as negatives (the reference's behaviour).

Prompts: `query_prefix` / `passage_prefix` are put before the texts before tokenisation, and a record's
own `prompt` (the reference format's field) replaces the query prefix (FlagEmbedding's rule; switch it off
with `record_prompt: false`). Texts are concatenated as they are: a prefix carries its own separator.
Shards are pre-tokenised, so the prefixes are applied when the shards are made; the manifest records
them per source and a stage whose rules ask for other prefixes is refused (`check_manifest_prompts`),
naming both. A field left out (None) takes the "*" entry's value, else, in training, the shards'
(so a run config need not repeat the prefixes), else the default ("" and record prompts on).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from framework.config.loading import convert, read_yaml
from framework.data.manifest import read_manifest_json
from framework.data.records import SOURCE_PATTERN

DEFAULT_KEY = "*"
"""The source_rules entry whose fields every source takes where its own entry leaves them out."""


@dataclass(frozen=True)
class SourceRules:
    """One source's batch rules and prompts (None: the "*" entry's value, else the default)."""

    in_batch_negatives: bool | None = None
    """False: each query scores only its own group, no in-batch and no cross-rank negatives (default True)."""
    mask_duplicates: bool | None = None
    """True (default): a passage whose token ids equal one of the query's positives is no negative of it."""
    query_prefix: str | None = None
    """Text put before every query, e.g. mE5's "query: " or an instruction (default: as the shards were
    made; tools: "")."""
    passage_prefix: str | None = None
    """Text put before every passage, positives and negatives alike, e.g. "passage: " (default as above)."""
    record_prompt: bool | None = None
    """True (default): a record's own `prompt` field replaces query_prefix for its query."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kind = getattr(self, f.name), str if f.name.endswith("prefix") else bool
            if value is not None and not isinstance(value, kind):
                raise ValueError(f"{f.name}={value!r}: use a {kind.__name__} (or leave it out for the default)")


@dataclass(frozen=True)
class Prompts:
    """The prefixes one source's texts get before tokenisation: in shards, mining, scoring and evaluation."""

    query_prefix: str = ""
    """Put before every query (unless the record's prompt replaces it)."""
    passage_prefix: str = ""
    """Put before every passage."""
    record_prompt: bool = True
    """A record's non-empty `prompt` replaces query_prefix."""

    @property
    def active(self) -> bool:
        """Whether any text can change (a record's prompt counts)."""
        return bool(self.query_prefix or self.passage_prefix or self.record_prompt)

    def query(self, text: str, prompt: str | None = None) -> str:
        """The query as the model sees it; `prompt` is the record's own `prompt` field."""
        return (prompt if self.record_prompt and prompt else self.query_prefix) + text

    def passage(self, text: str) -> str:
        return self.passage_prefix + text

    def texts(self, query: str, passages, prompt: str | None = None) -> list[str]:
        """[query, *passages] prefixed: a record's texts in `.tok` order (query, pos..., neg...)."""
        return [self.query(query, prompt), *(self.passage_prefix + p for p in passages)]

    def to_json(self) -> dict:
        return {"query_prefix": self.query_prefix, "passage_prefix": self.passage_prefix,
                "record_prompt": self.record_prompt}

    @classmethod
    def from_json(cls, data: Mapping, where: str) -> "Prompts":
        try:
            prompts = cls(str(data["query_prefix"]), str(data["passage_prefix"]), bool(data["record_prompt"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"{where}: malformed prompts {data!r} ({error}); regenerate it with "
                             "tools/make_shards.py") from None
        return prompts

    def describe(self) -> str:
        record = "the record's prompt replacing it" if self.record_prompt else "record prompts ignored"
        return f"query_prefix={self.query_prefix!r}, passage_prefix={self.passage_prefix!r} ({record})"


# What shards made before prompts existed did: no prefix, and the record's prompt field left out.
LEGACY_PROMPTS = Prompts(record_prompt=False)


@dataclass(frozen=True)
class BatchRules:
    """One source's batch rules, resolved."""

    in_batch_negatives: bool = True
    """Whether the source's queries see other groups' passages (local and gathered) as negatives."""
    mask_duplicates: bool = True
    """Whether passages equal to one of the query's positives are masked out of its softmax."""


def check_source_rules(rules: Mapping[str, SourceRules], where: str) -> None:
    """ValueError naming `where`.<key> for a key that is no source name (nor "*") or a value of another type."""
    for key, value in rules.items():
        if key != DEFAULT_KEY and not (isinstance(key, str) and SOURCE_PATTERN.fullmatch(key)):
            raise ValueError(f"{where}: {key!r} is no source name; use the sources' names (letters, digits, '_', "
                             f"'-') or {DEFAULT_KEY!r} for every source's default")
        if not isinstance(value, SourceRules):
            raise ValueError(f"{where}.{key}: expected SourceRules fields (in_batch_negatives, mask_duplicates, "
                             f"query_prefix, passage_prefix, record_prompt), got {value!r}")


def _field(rules: Mapping[str, SourceRules], source: str, name: str):
    """The source's own value of a field, else the "*" entry's, else None."""
    for key in (source, DEFAULT_KEY):
        value = getattr(rules.get(key) or SourceRules(), name)
        if value is not None:
            return value
    return None


def batch_rules(rules: Mapping[str, SourceRules], source: str) -> BatchRules:
    """The batch rules of `source`: its entry, else the "*" entry, else the defaults."""
    default = BatchRules()
    return BatchRules(*(default_if_none(_field(rules, source, f.name), getattr(default, f.name))
                        for f in fields(BatchRules)))


def prompts_for(rules: Mapping[str, SourceRules], source: str, fallback: Prompts = Prompts()) -> Prompts:
    """The prompts of `source`: its entry, else the "*" entry, else `fallback`'s (the shards' in training)."""
    return Prompts(*(default_if_none(_field(rules, source, f.name), getattr(fallback, f.name))
                     for f in fields(Prompts)))


def default_if_none(value, default):
    return default if value is None else value


def check_manifest_prompts(rules: Mapping[str, SourceRules], made: Mapping[str, Prompts], sources,
                           manifest_path, where: str = "data.source_rules") -> dict[str, Prompts]:
    """Per source of `sources`: the prompts its shards were made with (`made`, from the manifest), after
    checking that `rules` ask for the same; ValueError naming both otherwise."""
    out = {}
    for source in sorted(sources):
        shards = made.get(source, LEGACY_PROMPTS)
        wanted = prompts_for(rules, source, fallback=shards)
        if wanted != shards:
            entry = source if source in rules else DEFAULT_KEY
            raise ValueError(f"{where}.{entry} gives source {source!r} {wanted.describe()}, but its shards in "
                             f"{manifest_path} were made with {shards.describe()}: training would differ from "
                             "mining, scoring and inference. Re-make the shards with tools/make_shards.py "
                             f"--source-rules FILE holding the prompts you want, or change (or drop) {where}."
                             f"{entry}'s prompt fields to match the shards")
        out[source] = shards
    return out


def load_source_rules(path: str | Path) -> dict[str, SourceRules]:
    """The rules of a YAML (or JSON) file: a mapping source -> SourceRules fields; ValueError naming the file."""
    raw = read_yaml(path)
    rules = convert(dict[str, SourceRules], raw, str(path))
    check_source_rules(rules, str(path))
    return rules


def manifest_prompts(data: Mapping, where: str) -> dict[str, Prompts]:
    """Prompts per source of a manifest's JSON `prompts` field (absent: shards made before prompts)."""
    return {source: Prompts.from_json(value, f"{where} prompts.{source}")
            for source, value in (data.get("prompts") or {}).items()}


@dataclass(frozen=True)
class RowPrompter:
    """The prompts of JSONL rows read outside shards (mining, scoring): each row's by its source, resolved
    as tools/make_shards.py resolves it (the forced --source, else the row's own "source", else the file's
    name), so that the texts a retriever or teacher sees are the texts the shards train on."""

    rules: Mapping[str, SourceRules]
    """The per-source rules (a --source-rules file); {}: only the rows' own prompts apply."""
    default_source: str
    """The source of rows without one (framework/data/prepare/inputs.py default_source of the file)."""
    forced_source: str | None = None
    """The source of every row (make_shards' --source)."""

    def source(self, row: Mapping) -> str:
        own = row.get("source")
        return self.forced_source or (own if isinstance(own, str) and own else self.default_source)

    def prompts(self, row: Mapping) -> Prompts:
        return prompts_for(self.rules, self.source(row))

    def query(self, row: Mapping, text: str) -> str:
        prompt = row.get("prompt")
        return self.prompts(row).query(text, prompt if isinstance(prompt, str) else None)

    def passage(self, row: Mapping, text: str) -> str:
        return self.prompts(row).passage(text)

    def identity(self) -> dict:
        """What must match for a resumed run (JSON)."""
        return {"source_rules": {k: {f.name: getattr(v, f.name) for f in fields(v)} for k, v in
                                 sorted(self.rules.items())}, "source": self.forced_source}


def stage_prompts(rules: Mapping[str, SourceRules], manifest_path, sources=()) -> dict[str, Prompts]:
    """The prompts of the manifest's `sources` (all when empty), checked against `rules`
    (check_manifest_prompts): what a stage trains with and saves with its export."""
    data = read_manifest_json(manifest_path)
    present = {shard["source"] for shard in data.get("shards", [])}
    chosen = (set(sources) & present) if sources else present
    return check_manifest_prompts(rules, manifest_prompts(data, str(manifest_path)), chosen, manifest_path)


def export_prompts(by_source: Mapping[str, Prompts]) -> dict[str, str]:
    """The named prompts an export saves (sentence-transformers' `prompts`, M3Embedder's `prompt_name`).

    One prefix pair for every source trained on: {"query": q, "document": p, "passage": p} ({} when both
    are empty, as BGE-M3 ships): sentence-transformers' encode_query / encode_document take "query" and
    "document" (which it otherwise fills with ""), "passage" is the mE5 name. Sources with different
    prefixes: "<source>/query" and "<source>/document" per source, and no default (evaluation then needs
    --query-prompt / --passage-prompt). A record's own prompt is per record: inference passes it as `prompt=`.
    """
    pairs = {(p.query_prefix, p.passage_prefix) for p in by_source.values()}
    if len(pairs) == 1:
        query, passage = pairs.pop()
        return {"query": query, "document": passage, "passage": passage} if query or passage else {}
    named = {}
    for source, p in sorted(by_source.items()):
        named[f"{source}/query"], named[f"{source}/document"] = p.query_prefix, p.passage_prefix
    return named
