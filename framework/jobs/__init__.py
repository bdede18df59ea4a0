"""Line-by-line JSONL rewrite jobs: resumable after kill -9 with a byte-identical result, split into parts.

A job reads an input JSONL file and writes one output line per input line (output line N = input
line N), a chunk of lines at a time, through a `LineRewriter` that a tool supplies (teacher scoring,
hard-negative mining). `rewrite_jsonl` keeps what an earlier run wrote once the run's settings and the
input match, re-checks each kept line, redoes the partly written chunk and appends the rest;
`merge_parts` joins the outputs of a --part/--num-parts split. `Progress` prints progress lines.
"""
from framework.jobs.lines import count_lines, iter_lines, sha256_of
from framework.jobs.merge import merge_parts
from framework.jobs.progress import Progress
from framework.jobs.rewrite import (LineRewriter, RewriteJob, RewriteResult, part_lines, part_path, rewrite_jsonl,
                                    state_path_of)

__all__ = ["LineRewriter", "Progress", "RewriteJob", "RewriteResult", "count_lines", "iter_lines", "merge_parts",
           "part_lines", "part_path", "rewrite_jsonl", "sha256_of", "state_path_of"]
