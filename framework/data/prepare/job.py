"""One shard-preparation run: inputs -> workers -> shards of this part -> the part's manifest.

`make_shards(inputs, ShardConfig)` is the whole job (tools/make_shards.py is its command line): list
the inputs, resolve their kind, deal this part's lines to the parse/tokenise workers, write the samples
in input order, count what was rejected (the error budget, framework/data/budget.py), repaired and
repeated, and write the manifest. `merge_manifests` (framework/data/manifest.py) combines the parts;
`verify_manifest` re-hashes a shard set against its manifest.
"""
from __future__ import annotations

import hashlib
import sys
import time
from array import array
from collections import Counter
from pathlib import Path

import numpy as np

from framework.data.budget import BudgetConfig, ErrorBudget, ErrorBudgetExceeded  # noqa: F401 -- raised here
from framework.data.integrity import verify_shards
from framework.data.manifest import Manifest, RejectExample, load_manifest, tokenizer_identity
from framework.data.prepare.config import ShardConfig
from framework.data.prepare.encode import Reject, Sample, ordered_results
from framework.data.prepare.inputs import INPUT_SUFFIXES, expand_inputs, iter_lines, part_chunks, part_files
from framework.data.prepare.text import TEXT_SUFFIXES, resolve_kind
from framework.data.prepare.writer import ShardSet

# Bad-fraction checks during the run wait for this many records, so that one early bad line in a big
# file does not stop it; the final check counts every record.
BUDGET_MIN_RECORDS = 1000


class Tally:
    """Counts of records read, rejected, repaired and repeated, with the first rejected examples."""

    def __init__(self, config: ShardConfig):
        self.config = config
        self.budget = ErrorBudget(BudgetConfig(config.max_bad_fraction, BUDGET_MIN_RECORDS, "--max-bad-fraction",
                                               "Fix the input or raise --max-bad-fraction; no shards were kept."))
        self.num_samples = 0
        self.fixed: Counter = Counter()
        self.examples: list[RejectExample] = []
        # 8 bytes per kept record and source: exact repeats are counted at the end, without a set of records.
        self.digests: dict[str, array] = {}
        self.start = self.last_report = time.monotonic()

    @property
    def num_records(self) -> int:
        return self.budget.num_records

    @property
    def rejected(self) -> Counter:
        return self.budget.bad

    def add(self, file: str, outcome: Sample | Reject) -> None:
        if isinstance(outcome, Reject):
            self.budget.add_bad(outcome.reason, f"{file}:{outcome.line}", outcome.detail)
            if len(self.examples) < self.config.max_examples:
                self.examples.append(RejectExample(file, outcome.line, outcome.reason, outcome.detail))
            return
        self.budget.good()
        self.num_samples += 1
        self.fixed.update(outcome.fixes)
        digest = hashlib.blake2b(outcome.json_bytes, digest_size=8).digest()
        self.digests.setdefault(outcome.source, array("Q")).append(int.from_bytes(digest, "little"))

    def duplicates(self) -> dict[str, int]:
        """Per source, kept records identical (after normalisation) to an earlier one."""
        counts = {source: len(d) - len(np.unique(np.frombuffer(d, dtype=np.uint64)))
                  for source, d in self.digests.items()}
        return {source: n for source, n in sorted(counts.items()) if n}

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report < self.config.progress_seconds:
            return
        self.last_report = now
        rate = self.num_records / max(now - self.start, 1e-9)
        print(f"part {self.config.part}/{self.config.num_parts}: {self.num_records:,} records, "
              f"{self.num_samples:,} kept, {self.budget.num_bad:,} rejected, {rate:,.0f} records/s", flush=True)


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def has_records(path: str) -> bool:
    """Whether the file holds a non-blank line (reads up to the first one)."""
    return any(raw.strip() for _, raw in iter_lines(path))


def make_shards(inputs: list[str | Path], config: ShardConfig) -> Manifest:
    """Prepare this part of `inputs` into config.out_dir; writes and returns the part's manifest.

    Raises ErrorBudgetExceeded (and deletes this run's shards) when too many records are rejected, and
    ValueError when the part holds no record to keep.
    """
    files = expand_inputs(inputs, INPUT_SUFFIXES + TEXT_SUFFIXES if config.kind == "text" else INPUT_SUFFIXES)
    kind = resolve_kind(config.kind, files)  # over all files, so that every part agrees
    if kind == "text" and any(r.query_prefix or r.passage_prefix for r in config.source_rules.values()):
        raise ValueError("the source rules set query/passage prefixes, which apply to query/passage pairs; plain "
                         "documents (--kind text, the RetroMAE stage) take none: drop --source-rules here")
    mine = part_files(files, config.part, config.num_parts, config.split)
    empty = [path for path in mine if not has_records(path)]
    for path in empty:
        warn(f"input {path} holds no records; it adds nothing to the shards")
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
            tally.budget.check(final=False)
            tally.report()
        tally.budget.check(final=True)
        _check_kept(tally, config, mine, empty)
    except BaseException:
        shards.discard()
        raise
    finally:
        results.close()  # stops the worker pool at once when the loop ends early
    written = shards.close()
    manifest = Manifest(shards=written, length_edges=config.edges, num_records=tally.num_records,
                        rejected=dict(tally.rejected), fixed=dict(tally.fixed),
                        reject_examples=tuple(tally.examples), tokenizer=tokenizer, inputs=tuple(mine),
                        parts=((config.part, config.num_parts),), duplicates=tally.duplicates(),
                        prompts=config.manifest_prompts(kind, {s.source for s in written}), root=config.out_dir)
    path = manifest.save(config.manifest_path())
    tally.report(force=True)
    print(f"wrote {len(manifest.shards)} shard(s), {manifest.num_samples:,} samples; rejected "
          f"{dict(tally.rejected.most_common())}; fixed {dict(tally.fixed.most_common())}; duplicates "
          f"(kept) {manifest.duplicates}; manifest {path}", flush=True)
    return manifest


def _check_kept(tally: Tally, config: ShardConfig, files: list[str], empty: list[str]) -> None:
    """A part that keeps no sample would write a manifest no stage can train on: refuse it."""
    if tally.num_samples:
        return
    where = f"part {config.part} of {config.num_parts}" if config.num_parts > 1 else "the input"
    if tally.num_records:
        raise ValueError(f"none of the {tally.num_records} records of {where} was kept (rejected: "
                         f"{dict(tally.rejected.most_common())}); fix the input (the first rejected lines are "
                         f"{'; '.join(tally.budget.examples)})")
    named = f"{', '.join(empty)} {'holds' if len(empty) == 1 else 'hold'} no records" if empty else \
        f"its {len(files)} file(s) hold no lines for this part (more parts than lines?)"
    raise ValueError(f"no records to shard in {where}: {named}; pass JSONL files with one record per line "
                     "(or .txt files with one document per line and --kind text)")


def verify_manifest(path: str | Path) -> Manifest:
    """Re-hash every shard of a manifest; ValueError naming every damaged one and the fix."""
    manifest = load_manifest(path)
    damaged = verify_shards(manifest)
    if damaged:
        raise ValueError(f"{len(damaged)} of {len(manifest.shards)} shard(s) damaged: "
                         f"{'; '.join(d.describe(manifest) for d in damaged)}. Restore them from a good copy, "
                         "or re-create the set with tools/make_shards.py (the same inputs and options give the "
                         "same bytes)")
    return manifest
