"""Multi-view rendering of shapes: cameras, offscreen renderer, pixel-point correspondences, render cache.

Importing this package does not import pyrender: the OpenGL back end is chosen (``backend.py``) when the
first image is rendered. ``python -m selfsup_pcd.render`` renders a dataset into HDF5 (``cache.py``).
"""

from selfsup_pcd.render.cameras import Camera, look_at, make_rig
from selfsup_pcd.render.correspondences import correspondences, project
from selfsup_pcd.render.renderer import Renderer, RenderResult, shared_renderer

__all__ = ["Camera", "RenderResult", "Renderer", "correspondences", "look_at", "make_rig", "project",
           "shared_renderer"]
