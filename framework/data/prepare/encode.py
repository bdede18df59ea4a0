"""Worker side of shard preparation: parse, validate, tokenise and encode chunks of input lines.

Workers handle chunks independently and the main process consumes their results in input order, so the
output does not depend on the number of workers. Each sample's bucket is that of its longest text in
tokens after truncation to `token_limit` (framework/data/buckets.py). Pair texts are tokenised with their
source's prompts (framework/data/sources.py: prefixes, the record's own prompt), so lengths and `.tok`
ids are those of the texts the model sees; the `.json` member keeps the record as it was.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, NamedTuple

from framework.data.buckets import bucket_of
from framework.data.format import encode_token_ids
from framework.data.prepare.inputs import Chunk, default_source
from framework.data.prepare.text import TextRecord, is_text_file, parse_text_line, parse_text_row
from framework.data.records import BadRecord, Record, RecordConfig, parse_record
from framework.data.sources import SourceRules, prompts_for


@dataclass(frozen=True)
class EncodeConfig:
    """The part of a preparation run's options that the workers use."""

    source: str | None
    """Source name forced on every record; None: the record's own, else the file stem."""
    lang: str | None
    """Language tag forced on every record; None: the record's own."""
    max_chars: int
    """Characters per text; longer texts are cut."""
    tokenizer: str | None
    """Tokenizer directory; None: no lengths, every sample in bucket 0."""
    pretokenize: bool
    """Whether samples carry their token ids."""
    token_limit: int | None
    """Tokens per text after truncation (with a tokenizer)."""
    edges: tuple[int, ...] | None
    """Upper edges of the length buckets (with a tokenizer)."""
    kind: str = "pairs"
    """What the records are: "pairs" (query/passages, records.py) or "text" (documents, text.py)."""
    source_rules: dict[str, SourceRules] = field(default_factory=dict)
    """Per-source prompts of pair texts (framework/data/sources.py); documents take none."""

    def texts(self, record: Record | TextRecord) -> list[str]:
        """The record's texts as tokenised: a pair's with its source's prompts."""
        if not isinstance(record, Record):
            return record.texts()
        return prompts_for(self.source_rules, record.source).texts(record.query, record.pos + record.neg,
                                                                   record.prompt)


class Sample(NamedTuple):
    """A kept record, encoded for its shard."""

    line: int
    source: str
    lang: str | None
    bucket: int
    json_bytes: bytes
    token_bytes: bytes | None
    fixes: tuple[str, ...]


class Reject(NamedTuple):
    """A rejected record: its line and a records.REJECT_REASONS reason."""

    line: int
    reason: str
    detail: str


# Per-process state: set once by init_worker, so chunks travel to workers without the config or tokenizer.
_STATE: dict = {}


def init_worker(config: EncodeConfig, files: list[str], pool_worker: bool = False) -> None:
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


def record_parser(kind: str, path: str) -> Callable[[bytes, RecordConfig], Record | TextRecord | None]:
    """How one line of `path` becomes a record (None: a blank .txt line, which is no record)."""
    if kind == "pairs":
        return parse_record
    return parse_text_line if is_text_file(path) else parse_text_row


def process_chunk(chunk: Chunk) -> tuple[int, list[Sample | Reject]]:
    """Validate, tokenise and encode one chunk; outcomes are in line order."""
    config, files = _STATE["config"], _STATE["files"]
    default = config.source or default_source(files[chunk.file_index])
    parse = record_parser(config.kind, files[chunk.file_index])
    parsed: list = []
    for line_no, raw in chunk.lines:
        try:
            record = parse(raw, _STATE["record_config"])
        except BadRecord as bad:
            parsed.append(Reject(line_no, bad.reason, bad.detail))
            continue
        if record is None:
            continue
        source = config.source or record.source or default
        parsed.append((line_no, replace(record, source=source, lang=config.lang or record.lang)))
    good = [item for item in parsed if not isinstance(item, Reject)]
    encoded = iter([encode(line_no, record, tokens)
                    for (line_no, record), tokens in zip(good, tokenize([record for _, record in good]))])
    return chunk.file_index, [item if isinstance(item, Reject) else next(encoded) for item in parsed]


def tokenize(records: list[Record | TextRecord]) -> list[tuple[list[list[int]], int] | None]:
    """Per record: (token ids per text, number of texts truncated), or None without a tokenizer."""
    tokenizer, config = _STATE["tokenizer"], _STATE["config"]
    if tokenizer is None:
        return [None] * len(records)
    texts = [text for record in records for text in config.texts(record)]
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


def encode(line_no: int, record: Record | TextRecord, tokens: tuple[list[list[int]], int] | None) -> Sample:
    """The sample of a valid record: its JSON, bucket and (when pretokenizing) token ids."""
    config = _STATE["config"]
    payload = json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if tokens is None:
        return Sample(line_no, record.source, record.lang, 0, payload, None, record.fixes)
    ids, num_truncated = tokens
    # Texts are already cut to token_limit <= edges[-1] (checked by the config), so this cannot raise.
    bucket = bucket_of(max(len(seq) for seq in ids), config.edges)
    token_bytes = encode_token_ids(ids) if config.pretokenize else None
    fixes = record.fixes + ("truncated_tokens",) * num_truncated
    return Sample(line_no, record.source, record.lang, bucket, payload, token_bytes, fixes)


def ordered_results(chunks: Iterator[Chunk], config: EncodeConfig, files: list[str],
                    num_workers: int) -> Iterator[tuple[int, list[Sample | Reject]]]:
    """process_chunk over the chunks, in order, with at most 2 chunks per worker in flight."""
    init_worker(config, files)  # also loads the tokenizer here, so a bad directory fails before forking
    if num_workers == 1:
        yield from map(process_chunk, chunks)
        return
    with multiprocessing.Pool(num_workers, initializer=init_worker, initargs=(config, files, True)) as pool:
        # Pool.imap would read the whole input ahead into memory; a bounded window keeps it streaming.
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(process_chunk, (chunk,)))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
