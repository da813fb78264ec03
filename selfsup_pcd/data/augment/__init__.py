"""Batched, composable point-cloud augmentations (STRL's view pipeline, ``strl_byol.md`` §2).

``AugmentChain([UpSample(), RandomCrop(), Normalize(), ...], num_points=2048)(points, generator)`` turns a
batch (B, N, C) into views (B, 2048, C); intermediate steps that remove points keep a validity mask.
"""

from selfsup_pcd.data.augment.core import AugmentChain, MaskedTransform, PointBatch, sample_points
from selfsup_pcd.data.augment.ops import (
    InputDropout,
    Jitter,
    Normalize,
    RandomCrop,
    RandomCutout,
    RandomRotate,
    RotatePerturbation,
    Scale,
    Subsample,
    Translate,
    UpSample,
    euler_zyx,
)

__all__ = [
    "AugmentChain",
    "InputDropout",
    "Jitter",
    "MaskedTransform",
    "Normalize",
    "PointBatch",
    "RandomCrop",
    "RandomCutout",
    "RandomRotate",
    "RotatePerturbation",
    "Scale",
    "Subsample",
    "Translate",
    "UpSample",
    "euler_zyx",
    "sample_points",
]
