from selfsup_pcd.models.heads.classifier import ClassifierHead
from selfsup_pcd.models.heads.projection import (
    GlobalProjectionHead,
    PixelHead,
    PointProjectionHead,
    ProjectionHead,
    bilinear_at_pixels,
)

__all__ = ["ClassifierHead", "GlobalProjectionHead", "PixelHead", "PointProjectionHead", "ProjectionHead",
           "bilinear_at_pixels"]
