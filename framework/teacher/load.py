"""Build the teacher a config describes."""
from __future__ import annotations

from framework.teacher.base import Teacher
from framework.teacher.config import CrossEncoderConfig, M3TeacherConfig, TeacherConfig
from framework.teacher.cross_encoder import CrossEncoderTeacher
from framework.teacher.m3 import M3Teacher


def load_teacher(config: TeacherConfig) -> Teacher:
    """The teacher of `config`, its model loaded onto the configured device."""
    if isinstance(config, CrossEncoderConfig):
        return CrossEncoderTeacher(config)
    if isinstance(config, M3TeacherConfig):
        return M3Teacher(config)
    raise ValueError(f"load_teacher: {type(config).__name__} is not a teacher config; use CrossEncoderConfig or "
                     "M3TeacherConfig")
