"""Common output type of the point-cloud encoders."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class BackboneOutput:
    """What every encoder returns, so heads and tasks need not know which backbone produced it.

    ``global_feat``: (B, D) pooled shape descriptor. ``point_feat``: (B, N, Dp) per-point features, only
    when requested (computing them costs memory and time in the fused paths). ``feature_transform``:
    (B, 64, 64) PointNet feature T-net output, for the orthogonality regulariser; None elsewhere.
    """

    global_feat: Tensor
    point_feat: Tensor | None = None
    feature_transform: Tensor | None = None
