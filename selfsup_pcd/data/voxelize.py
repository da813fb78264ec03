"""Voxelisation of a scene for sparse-convolution networks, and its inverse (de-voxelisation).

Written with NumPy rather than MinkowskiEngine's ``sparse_quantize`` so that data loading (DataLoader workers,
point-network runs) never needs the compiled engine; ``tests/models/test_srunet.py`` checks both give the
same voxels (cells ``floor(xyz / voxel_size)``). The ``inverse`` map sends every original point to its voxel,
so a voxel network's output can be scored on the original points (``logits[inverse]``), not only on voxels.

Label modes: ``majority`` (default) gives each voxel the most frequent label of its points (ties: the
smallest label); ``ignore`` gives ``ignore_index`` to every voxel whose points disagree, as PointContrast's
loaders did through MinkowskiEngine 0.4's ``sparse_quantize(..., ignore_label=...)`` (0.5.4's keeps the label
of one arbitrary point of the voxel instead, so it is not used here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

IGNORE_INDEX = -100
LABEL_MODES = ("majority", "ignore")


@dataclass
class Voxels:
    """``coords`` (M, 3) int32 grid indices; ``feats`` (M, C) float32, the mean over the voxel's points;
    ``labels`` (M,) int64 or None; ``inverse`` (N,) int64, the voxel of each input point."""

    coords: np.ndarray
    feats: np.ndarray
    labels: np.ndarray | None
    inverse: np.ndarray


def voxel_labels(inverse: np.ndarray, labels: np.ndarray, num_voxels: int, mode: str = "majority",
                 ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """One label per voxel from its points' labels (see the module docstring for the modes)."""
    if mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {mode!r}")
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels != ignore_index
    out = np.full(num_voxels, ignore_index, dtype=np.int64)
    if not valid.any():
        return out
    vox, lab = inverse[valid], labels[valid]
    if mode == "ignore":
        lo = np.full(num_voxels, np.iinfo(np.int64).max)
        hi = np.full(num_voxels, np.iinfo(np.int64).min)
        np.minimum.at(lo, vox, lab)
        np.maximum.at(hi, vox, lab)
        agree = (lo == hi) & (hi != np.iinfo(np.int64).min)
        # a voxel holding both labelled and unlabelled points is treated as disagreeing too
        mixed = np.bincount(inverse[~valid], minlength=num_voxels) > 0
        keep = agree & ~mixed
        out[keep] = lo[keep]
        return out
    # majority: count (voxel, label) pairs, then take the most frequent label of each voxel
    pairs, counts = np.unique(np.stack([vox, lab], 1), axis=0, return_counts=True)
    order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))  # by voxel, then count desc, then label asc
    pairs = pairs[order]
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = pairs[1:, 0] != pairs[:-1, 0]
    out[pairs[first, 0]] = pairs[first, 1]
    return out


def _unique_rows(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(grid, axis=0, return_inverse=True)`` through one int64 key per row (several times faster)."""
    if len(grid) == 0:
        return grid.reshape(0, 3), np.zeros(0, dtype=np.int64)
    low = grid.min(0)
    span = grid.max(0) - low + 1
    if float(np.prod(span.astype(np.float64))) >= 2**62:  # too wide a grid for one key: the slow path
        coords, inverse = np.unique(grid, axis=0, return_inverse=True)
        return coords, inverse.reshape(-1)
    shifted = grid - low
    keys = (shifted[:, 0] * span[1] + shifted[:, 1]) * span[2] + shifted[:, 2]
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    coords = np.stack([unique_keys // (span[1] * span[2]), (unique_keys // span[2]) % span[1],
                       unique_keys % span[2]], 1) + low
    return coords, inverse.reshape(-1)


def voxelize(
    xyz: np.ndarray,
    feats: np.ndarray,
    voxel_size: float,
    labels: np.ndarray | None = None,
    label_mode: str = "majority",
    ignore_index: int = IGNORE_INDEX,
) -> Voxels:
    """Quantises ``xyz`` (N, 3) to a grid of ``voxel_size`` (floor of xyz / size): one voxel per occupied cell."""
    xyz = np.asarray(xyz, dtype=np.float64)
    feats = np.asarray(feats, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be (N, 3), got {xyz.shape}")
    if feats.ndim != 2 or len(feats) != len(xyz):
        raise ValueError(f"feats must be (N, C) with N = {len(xyz)}, got {feats.shape}")
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    if not np.isfinite(xyz).all():
        raise ValueError("xyz holds NaN or infinite coordinates; drop invalid points before voxelising")
    grid = np.floor(xyz / voxel_size).astype(np.int64)
    coords, inverse = _unique_rows(grid)
    counts = np.bincount(inverse, minlength=len(coords)).astype(np.float32)
    summed = np.zeros((len(coords), feats.shape[1]), dtype=np.float64)
    np.add.at(summed, inverse, feats)
    mean = (summed / counts[:, None]).astype(np.float32)
    voxel_lab = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(xyz),):
            raise ValueError(f"labels must be (N,) with N = {len(xyz)}, got {labels.shape}")
        voxel_lab = voxel_labels(inverse, labels, len(coords), label_mode, ignore_index)
    return Voxels(coords=coords.astype(np.int32), feats=mean, labels=voxel_lab, inverse=inverse.astype(np.int64))


def collate_voxels(samples: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Concatenates voxelised scenes into one sparse batch.

    Each sample holds ``coords`` (M, 3), ``feats`` (M, C), ``inverse`` (N,) and optionally ``labels`` (M,),
    ``point_labels`` (N,), ``room`` (int). The batch's ``coords`` are (ΣM, 4) int32 with the sample index first
    (MinkowskiEngine's layout); ``inverse`` is offset so it indexes the concatenated voxels; ``num_points``
    (B,) tells which original points belong to which sample.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    coords, inverse, offset = [], [], 0
    for b, s in enumerate(samples):
        c = torch.as_tensor(np.asarray(s["coords"]), dtype=torch.int32)
        coords.append(torch.cat([torch.full((len(c), 1), b, dtype=torch.int32), c], 1))
        inverse.append(torch.as_tensor(np.asarray(s["inverse"]), dtype=torch.int64) + offset)
        offset += len(c)
    batch: dict[str, Tensor] = {
        "coords": torch.cat(coords),
        "feats": torch.cat([torch.as_tensor(np.asarray(s["feats"]), dtype=torch.float32) for s in samples]),
        "inverse": torch.cat(inverse),
        "num_points": torch.tensor([len(s["inverse"]) for s in samples], dtype=torch.int64),
    }
    for key in ("labels", "point_labels"):
        if all(key in s for s in samples):
            batch[key] = torch.cat([torch.as_tensor(np.asarray(s[key]), dtype=torch.int64) for s in samples])
    if all("room" in s for s in samples):
        batch["room"] = torch.tensor([int(s["room"]) for s in samples], dtype=torch.int64)
    return batch
