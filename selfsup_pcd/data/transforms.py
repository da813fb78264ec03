"""Batched point-cloud augmentations.

They act on a whole batch ``points`` of shape (B, N, C) whose first three channels are xyz and, when
C >= 6, channels 3:6 are normals. Randomness comes only from the ``generator`` passed in, so a run
that restores the generator's state (see ``PointCloudDataModule.state_dict``) replays the same views.
Random numbers are drawn on the generator's device and moved to the batch's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor


class BatchTransform(Protocol):
    def __call__(self, points: Tensor, generator: torch.Generator) -> Tensor: ...


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator, like: Tensor) -> Tensor:
    values = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return (low + (high - low) * values).to(device=like.device, dtype=like.dtype)


def _has_normals(points: Tensor) -> bool:
    return points.shape[-1] >= 6


class Compose:
    """Applies transforms in order."""

    def __init__(self, transforms: Sequence[BatchTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, points: Tensor, generator: torch.Generator) -> Tensor:
        for transform in self.transforms:
            points = transform(points, generator)
        return points

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomScaleShift:
    """Per-shape anisotropic scaling then translation of xyz (the DGCNN classification recipe).

    Normals are left unchanged: anisotropic scaling would bend them, so the recipes that use it are xyz-only.
    """

    def __init__(self, scale_low: float = 2.0 / 3.0, scale_high: float = 1.5, shift: float = 0.2) -> None:
        self.scale_low, self.scale_high, self.shift = scale_low, scale_high, shift

    def __call__(self, points: Tensor, generator: torch.Generator) -> Tensor:
        batch = points.shape[0]
        scale = _uniform((batch, 1, 3), self.scale_low, self.scale_high, generator, points)
        shift = _uniform((batch, 1, 3), -self.shift, self.shift, generator, points)
        out = points.clone()
        out[..., :3] = points[..., :3] * scale + shift
        return out


def rotation_matrices(angles: Tensor, axis: str) -> Tensor:
    """(B,) angles in radians -> (B, 3, 3) right-handed rotations about ``axis``."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero, one = torch.zeros_like(angles), torch.ones_like(angles)
    if axis == "x":
        rows = [one, zero, zero, zero, cos, -sin, zero, sin, cos]
    elif axis == "y":
        rows = [cos, zero, sin, zero, one, zero, -sin, zero, cos]
    elif axis == "z":
        rows = [cos, -sin, zero, sin, cos, zero, zero, zero, one]
    else:
        raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
    return torch.stack(rows, dim=-1).reshape(*angles.shape, 3, 3)


class RandomRotation:
    """Rotation of xyz (and normals) about one axis by an angle drawn from U(low, high) radians."""

    def __init__(self, axis: str = "y", low: float = 0.0, high: float = 2.0 * math.pi) -> None:
        rotation_matrices(torch.zeros(1), axis)  # validates the axis early
        self.axis, self.low, self.high = axis, low, high

    def __call__(self, points: Tensor, generator: torch.Generator) -> Tensor:
        angles = _uniform((points.shape[0],), self.low, self.high, generator, points)
        rot = rotation_matrices(angles, self.axis)  # (B, 3, 3)
        out = points.clone()
        out[..., :3] = points[..., :3] @ rot.transpose(1, 2)
        if _has_normals(points):
            out[..., 3:6] = points[..., 3:6] @ rot.transpose(1, 2)
        return out


class RandomJitter:
    """Adds clip(N(0, sigma^2), -clip, clip) to every coordinate."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05) -> None:
        if sigma < 0 or clip <= 0:
            raise ValueError(f"need sigma >= 0 and clip > 0, got sigma={sigma}, clip={clip}")
        self.sigma, self.clip = sigma, clip

    def __call__(self, points: Tensor, generator: torch.Generator) -> Tensor:
        shape = (*points.shape[:-1], 3)
        noise = torch.randn(shape, generator=generator, device=generator.device) * self.sigma
        noise = noise.clamp_(-self.clip, self.clip).to(device=points.device, dtype=points.dtype)
        out = points.clone()
        out[..., :3] = points[..., :3] + noise
        return out


class ShufflePoints:
    """Random permutation of the points of each shape (order-dependent samplers see new subsets)."""

    def __call__(self, points: Tensor, generator: torch.Generator) -> Tensor:
        batch, num = points.shape[:2]
        order = torch.rand((batch, num), generator=generator, device=generator.device).argsort(dim=1)
        order = order.to(points.device).unsqueeze(-1).expand(-1, -1, points.shape[-1])
        return torch.gather(points, 1, order)


class RandomSubsample:
    """Keeps ``num_points`` points per shape, drawn uniformly without replacement."""

    def __init__(self, num_points: int) -> None:
        self.num_points = num_points

    def __call__(self, points: Tensor, generator: torch.Generator) -> Tensor:
        if points.shape[1] < self.num_points:
            raise ValueError(f"cannot keep {self.num_points} of {points.shape[1]} points")
        shuffled = ShufflePoints()(points, generator)
        return shuffled[:, : self.num_points].contiguous()
