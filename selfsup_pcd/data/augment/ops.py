"""STRL's point-cloud augmentations (``strl_byol.md`` §2) as batched operations on a :class:`PointBatch`.

Each class is one row of the spec's table, with the original's defaults; ``p`` is the per-cloud probability
of applying it. Crop and cutout keep their candidate boxes' results as masks (no points move); the
original's "up to 10 tries" loops become 10 boxes drawn at once, of which the first acceptable one is used.
Rotations rotate channels 3:6 too when the clouds carry normals (C >= 6).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from selfsup_pcd.data.augment.core import (
    PointBatch,
    first_true,
    masked_bbox,
    masked_mean,
    normal,
    sample_points,
    uniform,
    with_xyz,
)
from selfsup_pcd.data.augment.knn import knn_among_valid
from selfsup_pcd.data.transforms import rotation_matrices

DROPOUT_MODES = ("first_point", "remove")


def _applies(p: float, batch: PointBatch, generator: torch.Generator) -> Tensor:
    """(B,) bool: which clouds an operation with probability ``p`` acts on (one draw per cloud)."""
    return uniform((batch.points.shape[0],), 0.0, 1.0, generator, batch.points) <= p


def _rotate(batch: PointBatch, rot: Tensor, where: Tensor | None = None) -> PointBatch:
    """Rotates xyz (and normals) of each cloud by ``rot`` (B, 3, 3); clouds with where=False are kept."""
    if where is not None:
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device).expand_as(rot)
        rot = torch.where(where.view(-1, 1, 1), rot, eye)
    pts = batch.points
    out = pts.clone()
    out[..., :3] = pts[..., :3] @ rot.transpose(1, 2)
    if pts.shape[-1] >= 6:
        out[..., 3:6] = pts[..., 3:6] @ rot.transpose(1, 2)
    return PointBatch(out, batch.mask)


def _box_corners(batch: PointBatch, start: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
    """Boxes given as fractions (B, T, 3) of each cloud's bounding box -> absolute (low, high) (B, T, 3)."""
    low, high = masked_bbox(batch)
    extent = (high - low).unsqueeze(1)
    return low.unsqueeze(1) + extent * start, low.unsqueeze(1) + extent * (start + size)


def _first_accepted(
    batch: PointBatch, box_low: Tensor, box_high: Tensor, active: Tensor, accept: Callable[[Tensor, Tensor], Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Tries the boxes (B, T, 3) of the ``active`` clouds in order until ``accept(inside, rows)`` holds.

    Returns (inside-mask of the accepted box (B, N), index of that box (B,), accepted (B,)). Only clouds
    still without an accepted box are tested at each try (most accept at the first), which does the same
    as testing all T boxes at once for a fraction of the work. "Inside" is strict, as in the original.
    """
    xyz, mask = batch.points[..., :3], batch.mask
    b, n = mask.shape
    inside_best = torch.zeros((b, n), dtype=torch.bool, device=mask.device)
    choice = torch.zeros(b, dtype=torch.long, device=mask.device)
    pending = active.clone()
    for t in range(box_low.shape[1]):
        rows = pending.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        pts, lo, hi = xyz[rows], box_low[rows, t].unsqueeze(1), box_high[rows, t].unsqueeze(1)
        inside = mask[rows] & (pts[..., 0] > lo[..., 0]) & (pts[..., 0] < hi[..., 0])
        inside &= (pts[..., 1] > lo[..., 1]) & (pts[..., 1] < hi[..., 1])
        inside &= (pts[..., 2] > lo[..., 2]) & (pts[..., 2] < hi[..., 2])
        ok = accept(inside, rows)
        done = rows[ok]
        inside_best[done] = inside[ok]
        choice[done] = t
        pending[done] = False
    return inside_best, choice, active & ~pending


class _NeedsPointCount:
    """Operations whose default thresholds derive from the chain's ``num_points``."""

    min_points: int | None

    def bind(self, num_points: int) -> None:
        if self.min_points is None:
            self.min_points = num_points

    def _min_points(self) -> int:
        if self.min_points is None:
            raise ValueError(f"{type(self).__name__} needs min_points (or to be part of an AugmentChain)")
        return self.min_points


@functools.cache
def _subsets_cpu(k: int, size: int) -> Tensor:
    return torch.tensor(list(itertools.combinations(range(k), size)), dtype=torch.long)


def _subsets(k: int, size: int, device: torch.device) -> Tensor:
    """(C(k, size), size) all index subsets of ``range(k)``."""
    return _subsets_cpu(k, size).to(device)


class UpSample:
    """kNN up-sampling (``PointcloudUpSampling``): clouds with fewer than ``num_points`` points (default:
    twice the chain's point count) get new points until they have that many; each new point is the mean of
    ``nsample`` points drawn among the ``2 * nsample`` nearest neighbours of a random existing point.

    New points go to extra rows after the input's, so N grows by the largest number added.
    """

    def __init__(self, num_points: int | None = None, nsample: int = 5) -> None:
        self.num_points, self.nsample = num_points, nsample

    def bind(self, num_points: int) -> None:
        if self.num_points is None:
            self.num_points = 2 * num_points

    def __repr__(self) -> str:
        return f"UpSample(num_points={self.num_points}, nsample={self.nsample})"

    def apply(self, batch: PointBatch, generator: torch.Generator) -> PointBatch:
        if self.num_points is None:
            raise ValueError("UpSample needs num_points (or to be part of an AugmentChain)")
        counts = batch.counts
        need = (self.num_points - counts).clamp_min(0)
        new_rows = int(need.max())
        if new_rows == 0:
            return batch
        points, mask = batch
        if not bool(mask.all()):  # valid points first, so each cloud's valid rows are 0 .. count-1
            order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
            points = torch.gather(points, 1, order.unsqueeze(-1).expand_as(points))
            mask = torch.gather(mask, 1, order)
        b, _, c = points.shape
        k = 2 * self.nsample
        centres = (uniform((b, new_rows), 0.0, 1.0, generator, points) * counts.unsqueeze(1)).long()
        centres = torch.minimum(centres, (counts - 1).unsqueeze(1))
        neighbours = knn_among_valid(points[..., :3], counts, centres, k).to(points.device)  # (B, R, k)
        # nsample of the k neighbours, a uniformly drawn subset (the original keeps those whose uniform is
        # above the median of k uniforms): one draw from the table of all subsets
        subsets = _subsets(k, self.nsample, points.device)
        choice = (uniform((b, new_rows), 0.0, 1.0, generator, points) * len(subsets)).long().clamp_max(len(subsets) - 1)
        pick = subsets[choice]  # (B, R, nsample)
        chosen = torch.gather(neighbours, 2, pick).view(b, new_rows * self.nsample, 1).expand(-1, -1, c)
        new = torch.gather(points, 1, chosen).view(b, new_rows, self.nsample, c).mean(dim=2)
        new_mask = torch.arange(new_rows, device=mask.device).unsqueeze(0) < need.unsqueeze(1)
        return PointBatch(torch.cat([points, new], dim=1), torch.cat([mask, new_mask], dim=1))


class RandomCrop(_NeedsPointCount):
    """Keeps the points inside a random box (``PointcloudRandomCrop``).

    Box side fractions of the bounding box: rx ~ U(x_min, x_max), ar ~ U(ar_min, ar_max), (rx, rx·ar,
    rx/ar); start ~ U(0, 1 − side) per axis. A box is accepted when it keeps at least ``min_points`` and
    fewer than all points; the first accepted of ``max_tries`` boxes is used, none accepted = no crop.
    """

    def __init__(self, p: float = 0.5, x_min: float = 0.6, x_max: float = 1.1, ar_min: float = 0.75,
                 ar_max: float = 1.33, min_points: int | None = None, max_tries: int = 10) -> None:
        self.p, self.x_min, self.x_max, self.ar_min, self.ar_max = p, x_min, x_max, ar_min, ar_max
        self.min_points, self.max_tries = min_points, max_tries

    def __repr__(self) -> str:
        return f"RandomCrop(p={self.p}, min_points={self.min_points})"

    def sample(self, batch: PointBatch, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(new mask (B, N), box low, box high (B, 3), cropped (B,) bool) for one draw."""
        pts, b, t = batch.points, batch.points.shape[0], self.max_tries
        applies = _applies(self.p, batch, generator)
        rx = uniform((b, t), self.x_min, self.x_max, generator, pts)
        ar = uniform((b, t), self.ar_min, self.ar_max, generator, pts)
        size = torch.stack([rx, rx * ar, rx / ar], dim=-1)
        start = uniform((b, t, 3), 0.0, 1.0, generator, pts) * (1 - size)
        box_low, box_high = _box_corners(batch, start, size)
        counts, min_points = batch.counts, self._min_points()

        def accept(inside: Tensor, rows: Tensor) -> Tensor:
            kept = inside.sum(dim=-1)
            return (kept >= min_points) & (kept < counts[rows])

        inside, choice, cropped = _first_accepted(batch, box_low, box_high, applies, accept)
        rows = torch.arange(b, device=pts.device)
        mask = torch.where(cropped.unsqueeze(1), inside, batch.mask)
        return mask, box_low[rows, choice], box_high[rows, choice], cropped

    def apply(self, batch: PointBatch, generator: torch.Generator) -> PointBatch:
        return PointBatch(batch.points, self.sample(batch, generator)[0])


class RandomCutout(_NeedsPointCount):
    """Removes the points inside a random box (``PointcloudRandomCutout``): side fractions ~ U(ratio_min,
    ratio_max) per axis; accepted when at least ``min_points`` remain and at least one point is removed."""

    def __init__(self, p: float = 0.5, ratio_min: float = 0.3, ratio_max: float = 0.6,
                 min_points: int | None = None, max_tries: int = 10) -> None:
        self.p, self.ratio_min, self.ratio_max = p, ratio_min, ratio_max
        self.min_points, self.max_tries = min_points, max_tries

    def __repr__(self) -> str:
        return f"RandomCutout(p={self.p}, min_points={self.min_points})"

    def sample(self, batch: PointBatch, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(new mask (B, N), box low, box high (B, 3), cut (B,) bool) for one draw."""
        pts, b, t = batch.points, batch.points.shape[0], self.max_tries
        applies = _applies(self.p, batch, generator)
        size = uniform((b, t, 3), self.ratio_min, self.ratio_max, generator, pts)
        start = uniform((b, t, 3), 0.0, 1.0, generator, pts) * (1 - size)
        box_low, box_high = _box_corners(batch, start, size)
        counts, min_points = batch.counts, self._min_points()

        def accept(inside: Tensor, rows: Tensor) -> Tensor:
            removed = inside.sum(dim=-1)
            return (counts[rows] - removed >= min_points) & (removed > 0)

        inside, choice, cut = _first_accepted(batch, box_low, box_high, applies, accept)
        rows = torch.arange(b, device=pts.device)
        return batch.mask & ~inside, box_low[rows, choice], box_high[rows, choice], cut

    def apply(self, batch: PointBatch, generator: torch.Generator) -> PointBatch:
        return PointBatch(batch.points, self.sample(batch, generator)[0])


class Normalize:
    """Centroid of the valid points to the origin, farthest valid point at distance ``radius``."""

    def __init__(self, radius: float = 1.0) -> None:
        self.radius = radius

    def __repr__(self) -> str:
        return f"Normalize(radius={self.radius})"

    def apply(self, batch: PointBatch, generator: torch.Generator) -> PointBatch:
        xyz = batch.points[..., :3] - masked_mean(batch).unsqueeze(1)
        dist = xyz.norm(dim=-1).masked_fill(~batch.mask, 0.0)
        scale = self.radius / dist.amax(dim=1).clamp_min(1e-12)
        return with_xyz(batch, xyz * scale.view(-1, 1, 1))


class Scale:
    """Isotropic scaling by U(low, high) per cloud (``PointcloudScale``)."""

    def __init__(self, low: float = 0.8, high: float = 1.25, p: float = 1.0) -> None:
        self.low, self.high, self.p = low, high, p

    def __repr__(self) -> str:
        return f"Scale(low={self.low}, high={self.high}, p={self.p})"

    def apply(self, batch: PointBatch, generator: torch.Generator) -> PointBatch:
        pts = batch.points
        applies = _applies(self.p, batch, generator)
        scale = uniform((pts.shape[0],), self.low, self.high, generator, pts)
        scale = torch.where(applies, scale, torch.ones_like(scale))
        return with_xyz(batch, pts[..., :3] * scale.view(-1, 1, 1))


class RotatePerturbation:
    """Small rotation R = Rz·Ry·Rx with angles clip(sigma·N(0, 1), ±clip) rad (``PointcloudRotatePerturbation``)."""

    def __init__(self, sigma: float = 0.06, clip: float = 0.18, p: float = 1.0) -> None:
        self.sigma, self.clip, self.p = sigma, clip, p

    def __repr__(self) -> str:
        return f"RotatePerturbation(sigma={self.sigma}, clip={self.clip}, p={self.p})"

    def sample(self, batch: PointBatch, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(rotations (B, 3, 3), angles (B, 3) about x, y, z, applied (B,) bool)."""
        pts = batch.points
        applies = _applies(self.p, batch, generator)
        angles = (self.sigma * normal((pts.shape[0], 3), generator, pts)).clamp(-self.clip, self.clip)
        return euler_zyx(angles), angles, applies

    def apply(self, batch: PointBatch, generator: torch.Generator) -> PointBatch:
        rot, _, applies = self.sample(batch, generator)
        return _rotate(batch, rot, applies)


class RandomRotate:
    """Full rotation (``PointcloudRotate``): about ``axis`` ('x', 'y', 'z') by U(0, 2π), or with
    ``axis=None`` R = Rz·Ry·Rx with three angles ~ U(0, 2π)."""

    def __init__(self, axis: str | None = "z", p: float = 1.0) -> None:
        if axis is not None:
            rotation_matrices(torch.zeros(1), axis)  # validates the axis
        self.axis, self.p = axis, p

    def __repr__(self) -> str:
        return f"RandomRotate(axis={self.axis!r}, p={self.p})"

    def sample(self, batch: PointBatch, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(rotations (B, 3, 3), applied (B,) bool)."""
        pts = batch.points
        applies = _applies(self.p, batch, generator)
        if self.axis is None:
            return euler_zyx(uniform((pts.shape[0], 3), 0.0, 2 * math.pi, generator, pts)), applies
        angles = uniform((pts.shape[0],), 0.0, 2 * math.pi, generator, pts)
        return rotation_matrices(angles, self.axis), applies

    def apply(self, batch: PointBatch, generator: torch.Generator) -> PointBatch:
        rot, applies = self.sample(batch, generator)
        return _rotate(batch, rot, applies)


class Translate:
    """Shift by U(−range, range) × the bounding-box extent, per axis (``PointcloudTranslate``)."""

    def __init__(self, translate_range: float = 0.1, p: float = 1.0) -> None:
        self.translate_range, self.p = translate_range, p

    def __repr__(self) -> str:
        return f"Translate(translate_range={self.translate_range}, p={self.p})"

    def apply(self, batch: PointBatch, generator: torch.Generator) -> PointBatch:
        pts = batch.points
        applies = _applies(self.p, batch, generator)
        low, high = masked_bbox(batch)
        r = self.translate_range
        shift = uniform((pts.shape[0], 3), -r, r, generator, pts) * (high - low) * applies.unsqueeze(1)
        return with_xyz(batch, pts[..., :3] + shift.unsqueeze(1))


class Jitter:
    """Adds clip(N(0, sigma²), ±clip) to every coordinate (``PointcloudJitter``)."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05, p: float = 1.0) -> None:
        if sigma < 0 or clip <= 0:
            raise ValueError(f"need sigma >= 0 and clip > 0, got sigma={sigma}, clip={clip}")
        self.sigma, self.clip, self.p = sigma, clip, p

    def __repr__(self) -> str:
        return f"Jitter(sigma={self.sigma}, clip={self.clip}, p={self.p})"

    def noise(self, batch: PointBatch, generator: torch.Generator) -> Tensor:
        """(B, N, 3) clipped noise, zero for the clouds it does not apply to."""
        pts = batch.points
        applies = _applies(self.p, batch, generator)
        noise = (self.sigma * normal((*pts.shape[:2], 3), generator, pts)).clamp_(-self.clip, self.clip)
        return noise * applies.view(-1, 1, 1)

    def apply(self, batch: PointBatch, generator: torch.Generator) -> PointBatch:
        return with_xyz(batch, batch.points[..., :3] + self.noise(batch, generator))


class InputDropout:
    """Random input dropout (``PointcloudRandomInputDropout``): ratio r ~ U(0, max_ratio) per cloud, each
    point dropped with probability r.

    ``mode="first_point"`` (the original, spec quirk 9, reproduced): a dropped point is replaced by the
    cloud's first point, so the count stays and point 0 gains duplicates. ``mode="remove"``: dropped points
    leave the cloud (the final sampling repeats points if fewer than its count remain).
    """

    def __init__(self, max_ratio: float = 0.875, mode: str = "first_point", p: float = 1.0) -> None:
        if not 0 <= max_ratio < 1:
            raise ValueError(f"max_ratio must be in [0, 1), got {max_ratio}")
        if mode not in DROPOUT_MODES:
            raise ValueError(f"mode must be one of {DROPOUT_MODES}, got {mode!r}")
        self.max_ratio, self.mode, self.p = max_ratio, mode, p

    def __repr__(self) -> str:
        return f"InputDropout(max_ratio={self.max_ratio}, mode={self.mode!r}, p={self.p})"

    def apply(self, batch: PointBatch, generator: torch.Generator) -> PointBatch:
        pts, mask = batch
        b, n = mask.shape
        applies = _applies(self.p, batch, generator)
        ratio = uniform((b, 1), 0.0, self.max_ratio, generator, pts)
        drop = (uniform((b, n), 0.0, 1.0, generator, pts) <= ratio) & mask & applies.unsqueeze(1)
        if self.mode == "remove":
            return PointBatch(pts, mask & ~drop)
        first = pts[torch.arange(b, device=pts.device), first_true(mask)]  # (B, C)
        return PointBatch(torch.where(drop.unsqueeze(-1), first.unsqueeze(1), pts), mask)


def euler_zyx(angles: Tensor) -> Tensor:
    """(B, 3) angles about x, y, z -> (B, 3, 3) R = Rz·Ry·Rx (the original's composition order)."""
    rx = rotation_matrices(angles[:, 0], "x")
    ry = rotation_matrices(angles[:, 1], "y")
    rz = rotation_matrices(angles[:, 2], "z")
    return rz @ ry @ rx


class Subsample:
    """``num_points`` valid points per cloud, uniformly without replacement (``points_sampler``), as a step
    inside a chain (e.g. to thin dense depth frames before costly steps); the chain always ends with one."""

    def __init__(self, num_points: int) -> None:
        self.num_points = num_points

    def __repr__(self) -> str:
        return f"Subsample(num_points={self.num_points})"

    def apply(self, batch: PointBatch, generator: torch.Generator) -> PointBatch:
        return PointBatch.full(sample_points(batch, self.num_points, generator))
