"""Upright 3D boxes: VoteNet's class + residual parametrisation, corners and the rigid transforms of augmentation.

One box convention throughout the project (data targets, models, metrics): ``(cx, cy, cz, dx, dy, dz, yaw)``,
the centre, the **full** sizes along the box's own x, y, z axes and the yaw about +z, **counter-clockwise** seen
from above (radians), z up. ``data/synthetic/scenes.py`` uses the same. SUN RGB-D's files store half sizes and a
clockwise heading (``writers/votenet.py``); their readers convert (yaw = -heading, size = 2 * half size).

VoteNet regresses a box as

* heading: one of ``num_bins`` bins of width 2π/num_bins centred on 0, 2π/num_bins, ... and a residual in
  [-π/num_bins, π/num_bins) from the bin centre (``heading_to_class`` / ``class_to_heading``; one bin = no
  heading: class 0, residual = the angle wrapped to [-π, π), i.e. 0 for axis-aligned boxes);
* size: the semantic class picks a mean size (one "size cluster" per class) and the residual is the full size
  minus that mean (``size_to_class`` / ``class_to_size``).

The decoders and ``box_corners`` work on NumPy arrays and torch tensors alike (models import them); the
encoders are NumPy only (the data pipeline).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)
TWO_PI = 2.0 * math.pi

# Corner order of ``box_corners``: x, y, z signs (bottom face counter-clockwise, then the top face).
CORNER_SIGNS = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1],
                         [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=np.float64)


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def wrap_angle(angle: Array) -> Array:
    """Angle(s) wrapped to [-π, π)."""
    return (angle + math.pi) % TWO_PI - math.pi


# -- heading -----------------------------------------------------------------------------------------------
def heading_to_class(angle: np.ndarray | float, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin (int64), residual) of counter-clockwise yaw angle(s); bins centred on k·2π/num_bins."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be positive, got {num_bins}")
    width = TWO_PI / num_bins
    shifted = (np.asarray(angle, dtype=np.float64) % TWO_PI + width / 2) % TWO_PI
    cls = np.minimum(np.floor(shifted / width).astype(np.int64), num_bins - 1)  # guards rounding at 2π
    return cls, shifted - (cls * width + width / 2)


def class_to_heading(cls: Array, residual: Array, num_bins: int) -> Array:
    """Yaw(s) in [-π, π) of bin(s) ``cls`` plus ``residual`` (NumPy or torch)."""
    if _is_torch(cls):
        cls = cls.to(residual.dtype if _is_torch(residual) and residual.is_floating_point() else torch.float64)
    return wrap_angle(cls * (TWO_PI / num_bins) + residual)


# -- size ----------------------------------------------------------------------------------------------------
def size_to_class(size: np.ndarray, sem_cls: np.ndarray, mean_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(size class = semantic class (int64), residual = full size - the class's mean size) per box."""
    cls = np.asarray(sem_cls, dtype=np.int64)
    return cls, np.asarray(size, dtype=np.float64) - np.asarray(mean_sizes, dtype=np.float64)[cls]


def class_to_size(cls: Array, residual: Array, mean_sizes: np.ndarray | torch.Tensor) -> Array:
    """Full size(s) ``mean_sizes[cls] + residual`` (NumPy or torch; ``mean_sizes`` (C, 3))."""
    if _is_torch(residual):
        table = torch.as_tensor(mean_sizes, dtype=residual.dtype, device=residual.device)
        return table[cls.long()] + residual
    return np.asarray(mean_sizes, dtype=np.float64)[np.asarray(cls, dtype=np.int64)] + residual


# -- whole boxes ----------------------------------------------------------------------------------------------
def encode_boxes(boxes: np.ndarray, sem_cls: np.ndarray, mean_sizes: np.ndarray,
                 num_heading_bins: int) -> dict[str, np.ndarray]:
    """VoteNet's regression targets of (K, 7) boxes: centre, heading bin + residual, size class + residual."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    heading_cls, heading_res = heading_to_class(boxes[:, 6], num_heading_bins)
    size_cls, size_res = size_to_class(boxes[:, 3:6], sem_cls, mean_sizes)
    return {"center": boxes[:, :3].copy(), "heading_class": heading_cls, "heading_residual": heading_res,
            "size_class": size_cls, "size_residual": size_res}


def decode_boxes(center: Array, heading_class: Array, heading_residual: Array, size_class: Array,
                 size_residual: Array, mean_sizes: np.ndarray | torch.Tensor, num_heading_bins: int) -> Array:
    """(..., 7) boxes from VoteNet's parametrisation (inverse of ``encode_boxes``; NumPy or torch)."""
    yaw = class_to_heading(heading_class, heading_residual, num_heading_bins)
    size = class_to_size(size_class, size_residual, mean_sizes)
    if _is_torch(center):
        return torch.cat([center, size, yaw.unsqueeze(-1).to(center.dtype)], dim=-1)
    return np.concatenate([center, size, np.asarray(yaw)[..., None]], axis=-1)


def rotz(angle: float) -> np.ndarray:
    """(3, 3) counter-clockwise rotation about +z."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def box_corners(boxes: Array) -> Array:
    """(..., 8, 3) corners of (..., 7) boxes in ``CORNER_SIGNS`` order (NumPy or torch)."""
    if _is_torch(boxes):
        signs = torch.as_tensor(CORNER_SIGNS, dtype=boxes.dtype, device=boxes.device)
        local = signs * boxes[..., None, 3:6] / 2
        c, s = torch.cos(boxes[..., 6:7]), torch.sin(boxes[..., 6:7])
        x = local[..., 0] * c - local[..., 1] * s
        y = local[..., 0] * s + local[..., 1] * c
        return torch.stack([x, y, local[..., 2]], dim=-1) + boxes[..., None, :3]
    boxes = np.asarray(boxes, dtype=np.float64)
    local = CORNER_SIGNS * boxes[..., None, 3:6] / 2
    c, s = np.cos(boxes[..., 6:7]), np.sin(boxes[..., 6:7])
    x = local[..., 0] * c - local[..., 1] * s
    y = local[..., 0] * s + local[..., 1] * c
    return np.stack([x, y, local[..., 2]], axis=-1) + boxes[..., None, :3]


def points_in_boxes(xyz: np.ndarray, boxes: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """(N, K) bool: point n lies in box k (each box inflated by ``tol`` on every side)."""
    xyz = np.asarray(xyz, dtype=np.float64)[:, None, :3]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    d = xyz - boxes[None, :, :3]
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    local = np.stack([d[..., 0] * c + d[..., 1] * s, -d[..., 0] * s + d[..., 1] * c, d[..., 2]], axis=-1)
    return np.all(np.abs(local) <= boxes[None, :, 3:6] / 2 + tol, axis=-1)


# -- rigid transforms (augmentation) --------------------------------------------------------------------------
def flip_boxes(boxes: np.ndarray, axis: int) -> np.ndarray:
    """Boxes mirrored at the plane ``axis`` = 0 (x -> -x) or 1 (y -> -y): centre mirrored, yaw π - yaw or -yaw."""
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (x) or 1 (y), got {axis}")
    out = np.array(boxes, dtype=np.float64).reshape(-1, 7)
    out[:, axis] = -out[:, axis]
    out[:, 6] = wrap_angle((math.pi if axis == 0 else 0.0) - out[:, 6])
    return out


def rotate_boxes(boxes: np.ndarray, angle: float) -> np.ndarray:
    """Boxes turned by ``angle`` (counter-clockwise) about the z axis through the origin."""
    out = np.array(boxes, dtype=np.float64).reshape(-1, 7)
    out[:, :3] = out[:, :3] @ rotz(angle).T
    out[:, 6] = wrap_angle(out[:, 6] + angle)
    return out


def rotate_aligned_boxes(boxes: np.ndarray, angle: float) -> np.ndarray:
    """Axis-aligned boxes after a turn about z, kept axis-aligned: the bounds of their turned footprints (VoteNet).

    Yaw is ignored (taken as 0) and set to 0; the result contains the turned box, so points stay inside.
    """
    out = np.array(boxes, dtype=np.float64).reshape(-1, 7)
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    dx, dy = out[:, 3].copy(), out[:, 4].copy()
    out[:, :3] = out[:, :3] @ rotz(angle).T
    out[:, 3], out[:, 4] = c * dx + s * dy, s * dx + c * dy
    out[:, 6] = 0.0
    return out


def scale_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    """Boxes under a uniform scaling about the origin."""
    out = np.array(boxes, dtype=np.float64).reshape(-1, 7)
    out[:, :6] *= scale
    return out
