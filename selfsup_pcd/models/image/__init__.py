"""2D image networks (pure torch + torchvision): the multi-view teacher of MVR."""

from selfsup_pcd.models.image.teacher import (
    TEACHER_FORMAT,
    MultiViewTeacher,
    load_teacher,
    save_teacher,
    teacher_from_file,
)

__all__ = ["TEACHER_FORMAT", "MultiViewTeacher", "load_teacher", "save_teacher", "teacher_from_file"]
