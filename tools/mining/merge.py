"""Join the parts of a split mining run (--part I --num-parts N) into the one output, report and counts."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from framework.jobs import merge_parts, part_path
from .report import MiningReport, counts_path_of, report_path_of


def merge_mined(output_path: str | Path, num_parts: int) -> MiningReport:
    """Concatenate the parts of `output_path` (framework/jobs.merge_parts checks them), sum their reports and
    join their chunk counts, so that rerunning the job without parts finds it finished; returns the report."""
    output_path = Path(output_path)
    if num_parts < 2:
        raise ValueError(f"num_parts={num_parts}: merging needs the parts of a split run (2 or more)")
    parts = [part_path(output_path, part, num_parts) for part in range(num_parts)]
    for part, path in enumerate(parts):
        if path.exists() and not report_path_of(path).is_file():
            raise ValueError(f"{path} has no {report_path_of(path).name}: part {part} has not finished; rerun it "
                             f"(--part {part} --num-parts {num_parts}) and merge again")
    merge_parts(output_path, num_parts)  # checks every part is complete and of one run, then joins them
    total = MiningReport()
    for path in parts:
        part_report = MiningReport.load(report_path_of(path))
        total.add(part_report)
        total.pool_size, total.corpus_bad = part_report.pool_size, part_report.corpus_bad  # one pool for all
    _concatenate([counts_path_of(path) for path in parts], counts_path_of(output_path))
    total.save(report_path_of(output_path))
    for path in parts:
        report_path_of(path).unlink()
        counts_path_of(path).unlink()
    return total


def _concatenate(paths: list[Path], out_path: Path) -> None:
    """Chunk records are keyed by their global first line, so the parts' files simply follow each other."""
    tmp = out_path.with_name(out_path.name + ".merging")
    with tmp.open("wb") as out:
        for path in paths:
            with path.open("rb") as handle:
                shutil.copyfileobj(handle, out)
    os.replace(tmp, out_path)
