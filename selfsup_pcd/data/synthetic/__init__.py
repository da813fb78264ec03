"""Datasets the project generates itself (no download, deterministic by seed).

The datamodule (which imports Lightning, seconds to load) is imported on first use, so the mesh and scene
generators stay quick to import for command-line tools.
"""

from __future__ import annotations

import importlib
from typing import Any

from selfsup_pcd.data.synthetic.shapes import CLASS_NAMES, make_mesh, sample_points

_LAZY = {
    "ProceduralShapesDataModule": "selfsup_pcd.data.synthetic.datamodule",
    "ProceduralShapesDataset": "selfsup_pcd.data.synthetic.datamodule",
    "shape_seed": "selfsup_pcd.data.synthetic.datamodule",
}

__all__ = ["CLASS_NAMES", "make_mesh", "sample_points", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
