"""Teachers for distillation data: score (query, passage) pairs with a cross-encoder or an M3 model.

    teacher = load_teacher(CrossEncoderConfig("bge-reranker-v2-m3/"))     # or M3TeacherConfig("m3-export/")
    scores = teacher.score([ScorePair("what is x", "x is ..."), ...])       # float32, one per pair
    score_file("train.jsonl", "train.scored.jsonl", teacher)                # rows get pos_scores / neg_scores

Both teachers sort their inputs by length and batch them under a token budget, run in float32 on the
CPU and bfloat16 on a GPU (RuntimeConfig), and report an identity that resumed runs must match.
"""
from framework.teacher.base import ScorePair, Teacher
from framework.teacher.batching import length_batches
from framework.teacher.config import (BatchingConfig, CrossEncoderConfig, HybridWeights, M3TeacherConfig,
                                      RuntimeConfig, TeacherConfig, detect_kind)
from framework.teacher.cross_encoder import CrossEncoderTeacher
from framework.teacher.load import load_teacher
from framework.teacher.m3 import M3Teacher
from framework.teacher.report import ScoreReport
from framework.teacher.score_file import ScoreFileConfig, merge_scored, score_file

__all__ = ["BatchingConfig", "CrossEncoderConfig", "CrossEncoderTeacher", "HybridWeights", "M3Teacher",
           "M3TeacherConfig", "RuntimeConfig", "ScoreFileConfig", "ScorePair", "ScoreReport", "Teacher",
           "TeacherConfig", "detect_kind", "length_batches", "load_teacher", "merge_scored", "score_file"]
