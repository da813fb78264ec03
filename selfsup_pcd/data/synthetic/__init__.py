"""Datasets the project generates itself (no download, deterministic by seed)."""

from selfsup_pcd.data.synthetic.datamodule import (
    ProceduralShapesDataModule,
    ProceduralShapesDataset,
    shape_seed,
)
from selfsup_pcd.data.synthetic.shapes import CLASS_NAMES, make_mesh, sample_points

__all__ = [
    "CLASS_NAMES",
    "ProceduralShapesDataModule",
    "ProceduralShapesDataset",
    "make_mesh",
    "sample_points",
    "shape_seed",
]
