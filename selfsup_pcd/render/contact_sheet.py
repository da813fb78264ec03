"""Contact sheets: the views of one shape in a grid, correspondences drawn as dots coloured by point index.

A quick visual check that views, cameras and pairs agree: the same point index gets the same colour in
every view, so a dot of one colour should sit on the same part of the shape from view to view.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np


def point_colors(point_idx: np.ndarray) -> np.ndarray:
    """(M, 3) uint8 colours, well separated for neighbouring indices (golden-ratio hue steps)."""
    hue = (np.asarray(point_idx, dtype=np.float64) * 0.618033988749895) % 1.0
    rgb = np.array([colorsys.hsv_to_rgb(h, 0.9, 1.0) for h in hue]).reshape(-1, 3)
    return np.round(rgb * 255).astype(np.uint8)


def contact_sheet(rgb: np.ndarray, pairs: np.ndarray | None = None, points_uv: np.ndarray | None = None,
                  columns: int | None = None, tile: int = 160, dot_radius: int = 1, max_dots: int = 1500,
                  gap: int = 2) -> np.ndarray:
    """An (rows * tile, columns * tile, 3) uint8 image of the views ``rgb`` (V, H, W, 3).

    ``pairs`` (M, 4) ``view, row, col, point_idx`` are drawn at their pixel centres, or at the point's exact
    projection when ``points_uv`` (V, P, 2) continuous pixel coordinates are given. Views are enlarged
    (nearest neighbour) to about ``tile`` pixels; at most ``max_dots`` pairs are drawn (evenly subsampled).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be (V, H, W, 3), got {rgb.shape}")
    num_views, height, width, _ = rgb.shape
    columns = columns or min(num_views, math.ceil(math.sqrt(num_views * 4 / 3)))
    rows = math.ceil(num_views / columns)
    scale = max(1, round(tile / max(height, width)))
    cell_h, cell_w = height * scale + gap, width * scale + gap
    sheet = np.full((rows * cell_h - gap, columns * cell_w - gap, 3), 255, dtype=np.uint8)
    for v in range(num_views):
        top, left = (v // columns) * cell_h, (v % columns) * cell_w
        sheet[top:top + height * scale, left:left + width * scale] = rgb[v].repeat(scale, 0).repeat(scale, 1)
    if pairs is None or len(pairs) == 0:
        return sheet
    pairs = np.asarray(pairs)
    if len(pairs) > max_dots:
        pairs = pairs[np.linspace(0, len(pairs) - 1, max_dots).astype(np.int64)]
    view, row, col, idx = pairs.T
    if points_uv is not None:
        uv = np.asarray(points_uv)[view, idx]
        x, y = uv[:, 0] * scale, uv[:, 1] * scale
    else:
        x, y = (col + 0.5) * scale, (row + 0.5) * scale
    x = np.clip(np.floor(x).astype(np.int64), 0, width * scale - 1) + (view % columns) * cell_w
    y = np.clip(np.floor(y).astype(np.int64), 0, height * scale - 1) + (view // columns) * cell_h
    colors = point_colors(idx)
    for dy in range(-dot_radius, dot_radius + 1):
        for dx in range(-dot_radius, dot_radius + 1):
            if dx * dx + dy * dy <= dot_radius * dot_radius:
                yy, xx = np.clip(y + dy, 0, sheet.shape[0] - 1), np.clip(x + dx, 0, sheet.shape[1] - 1)
                sheet[yy, xx] = colors
    return sheet


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Writes ``image`` (H, W, 3) uint8 as PNG (creating the folder)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path)
    return path
