"""Hard-negative mining for JSONL training rows (the CLI is tools/mine_hard_negatives.py).

    config.py   MiningConfig (options), ScoreRules (score window, margins to the positive), BadRow
    rows.py     parse and render one JSONL row (with scores); the candidate pool (input positives or --corpus)
    rankers.py  dense (M3 + faiss) and BM25 retrievers of a chunk of queries, scoring their positives too
    choose.py   the choosing rules (positives, rank window, score window, margins) and the seeded draw
    report.py   MiningReport: bad rows, per source the candidates each rule removed; per-chunk counts file
    mine.py     the job: rank a chunk, rescore with a teacher when asked, choose, write (framework/jobs)
    merge.py    join the parts of a split run
"""
from .config import METHODS, BadRow, MiningConfig, ScoreRules
from .merge import merge_mined
from .mine import mine
from .report import RULES, MiningReport, SourceCounts, counts_path_of, report_path_of
from framework.jobs import state_path_of

__all__ = ["METHODS", "RULES", "BadRow", "MiningConfig", "MiningReport", "ScoreRules", "SourceCounts",
           "counts_path_of", "merge_mined", "mine", "report_path_of", "state_path_of"]
