"""The mining loop: rank each chunk's queries over the pool, draw seeded negatives from a rank band, write."""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from framework.data.prepare.inputs import default_source
from framework.data.records import Record
from framework.data.sources import RowPrompter
from framework.retrieval import MISSING_ID
from .config import BadRow, MiningConfig, MiningReport
from .rankers import RANKERS, Ranker
from .resume import resume_point, run_state
from .rows import Pool, iter_lines, parse_row, read_corpus, render_row, scan_input


def pick_negatives(ranked_K: np.ndarray, exclude: set[int], config: MiningConfig, line: int) -> list[int]:
    """Up to num_neg pool ids from ranks [range_start, range_end) minus `exclude`, in rank order.

    The generator is seeded by (seed, line), so a row's draw does not depend on chunking or resuming.
    """
    band = [int(i) for i in ranked_K[config.range_start:config.range_end] if i != MISSING_ID and int(i) not in exclude]
    if len(band) <= config.num_neg:
        return band
    chosen = np.sort(np.random.default_rng([config.seed, line]).choice(len(band), config.num_neg, replace=False))
    return [band[j] for j in chosen]


def mine_chunk(first_line: int, raws: list[bytes], rank: Ranker | None, pool: Pool, config: MiningConfig,
               report: MiningReport, prompter: RowPrompter | None = None) -> bytes:
    """Output bytes of consecutive input lines starting at 1-based `first_line`; queries are ranked as
    `prompter` shows them (with their prompts), written back as they were."""
    rows: list[tuple[dict, Record] | None] = []
    for line, raw in enumerate(raws, start=first_line):
        try:
            rows.append(parse_row(raw))
        except BadRow as error:
            report.add_bad(error, line)
            rows.append(None)
    queries = [record.query if prompter is None else prompter.query(row, record.query)
               for row, record in (parsed for parsed in rows if parsed is not None)]
    # A valid row has a positive, so the pool is non-empty (and a ranker exists) whenever there are queries.
    ranked = iter(rank(queries) if queries else ())
    out = []
    for line, raw, parsed in zip(itertools.count(first_line), raws, rows):
        if parsed is None:
            out.append(raw)
            continue
        row, record = parsed
        picked = pick_negatives(next(ranked), pool.ids_of([*record.pos, record.query]), config, line)
        report.add_mined(len(picked), config.num_neg)
        out.append(render_row(row, [pool.texts[i] for i in picked], report))
    return b"".join(line + b"\n" for line in out)


def iter_chunks(path: Path, start: int, size: int) -> Iterator[tuple[int, list[bytes]]]:
    """(0-based index of the first line, lines) of consecutive chunks from line `start` on."""
    lines = itertools.islice(iter_lines(path), start, None)
    while chunk := list(itertools.islice(lines, size)):
        yield start, chunk
        start += len(chunk)


def mine(input_path: str | Path, output_path: str | Path, config: MiningConfig,
         corpus_path: str | Path | None = None, overwrite: bool = False) -> MiningReport:
    """Write `input_path`'s rows with mined negatives to `output_path` (resuming it); returns the report."""
    input_path, output_path = Path(input_path), Path(output_path)
    corpus_path = Path(corpus_path) if corpus_path is not None else None
    if output_path.resolve() == input_path.resolve():
        raise ValueError(f"--out {output_path} is the input file; write to another path")
    report = MiningReport()
    # The dense retriever sees the texts as the student will (prompts); BM25 ranks words, which prompts
    # would only add to every query.
    prompter = RowPrompter(config.source_rules, default_source(str(input_path)), config.source) \
        if config.method == "dense" else None
    report.num_lines, pool = scan_input(input_path, config, fill_pool=corpus_path is None, prompter=prompter)
    if corpus_path is not None:
        pool = read_corpus(corpus_path, report, prompter)
    report.pool_size = len(pool.texts)
    start = resume_point(input_path, output_path, run_state(input_path, corpus_path, config), config, overwrite,
                         report)
    if start < report.num_lines:
        print(f"{'resuming after line ' + str(start) if start else 'mining'} of {report.num_lines} lines, "
              f"{config.method} retrieval over {len(pool.texts)} pool passages", flush=True)
        rank = RANKERS[config.method](config, pool.shown) if pool.texts else None
        _write_chunks(input_path, output_path, start, rank, pool, config, report, prompter)
    print(report.summary(), flush=True)
    return report


def _write_chunks(input_path: Path, output_path: Path, start: int, rank: Ranker | None, pool: Pool,
                  config: MiningConfig, report: MiningReport, prompter: RowPrompter | None) -> None:
    """Mine and append the chunks from line `start` on, printing progress after each."""
    began = time.monotonic()
    with output_path.open("ab") as out:
        for first, raws in iter_chunks(input_path, start, config.chunk_size):
            out.write(mine_chunk(first + 1, raws, rank, pool, config, report, prompter))
            out.flush()
            done = first + len(raws)
            rate = (done - start) / max(time.monotonic() - began, 1e-9)
            print(f"  {done}/{report.num_lines} lines, {sum(report.bad.values())} bad, {rate:.1f} lines/s, "
                  f"~{(report.num_lines - done) / rate:.0f} s left", flush=True)
