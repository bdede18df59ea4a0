"""Hard-negative mining for JSONL training rows (the CLI is tools/mine_hard_negatives.py).

    config.py   MiningConfig (options), BadRow, MiningReport
    rows.py     parse and render one JSONL row; the candidate pool (input positives or --corpus)
    rankers.py  dense (M3 + faiss) and BM25 rankers of a chunk of queries over the pool
    resume.py   OUT.state.json and the point to resume from, with every kept line re-checked
    mine.py     the loop: rank a chunk, draw seeded negatives from the rank band, append
"""
from .config import METHODS, BadRow, MiningConfig, MiningReport
from .mine import mine
from .resume import state_path_of

__all__ = ["METHODS", "BadRow", "MiningConfig", "MiningReport", "mine", "state_path_of"]
