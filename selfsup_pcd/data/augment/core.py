"""Batched point clouds of varying size, and the chain that turns a batch into fixed-size views.

Augmentations such as cropping remove a different number of points from each cloud. To keep the batch one
tensor they only update a validity mask: a :class:`PointBatch` is ``points`` (B, N, C) plus ``mask`` (B, N),
True where a row is a point of the cloud. :class:`AugmentChain` runs a sequence of such operations and ends
with the uniform sampling of ``num_points`` valid points per cloud (STRL's ``points_sampler``), so its
output is again a plain (B, num_points, C) tensor and it satisfies the ``BatchTransform`` protocol of
``selfsup_pcd.data.transforms``.

Randomness comes only from the ``generator`` passed in (drawn on its device, moved to the batch's), and
every operation draws the same amount of random numbers whatever the data, so one seed gives one stream
of views.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor


class PointBatch(NamedTuple):
    """``points`` (B, N, C), xyz first; ``mask`` (B, N) bool, True for the rows that are points."""

    points: Tensor
    mask: Tensor

    @classmethod
    def full(cls, points: Tensor) -> PointBatch:
        return cls(points, torch.ones(points.shape[:2], dtype=torch.bool, device=points.device))

    @property
    def counts(self) -> Tensor:
        """(B,) number of valid points per cloud."""
        return self.mask.sum(dim=1)


@runtime_checkable
class MaskedTransform(Protocol):
    """An operation on a :class:`PointBatch` (may remove points by clearing mask entries)."""

    def apply(self, batch: PointBatch, generator: torch.Generator) -> PointBatch: ...


# -- random draws ------------------------------------------------------------------------------------
def uniform(shape: tuple[int, ...], low: float | Tensor, high: float | Tensor, generator: torch.Generator,
            like: Tensor) -> Tensor:
    """U(low, high) of ``shape`` (bounds may be broadcastable tensors on ``like``'s device)."""
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32)
    u = u.to(device=like.device, dtype=like.dtype)
    return low + (high - low) * u


def normal(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    """N(0, 1) of ``shape`` on ``like``'s device and dtype."""
    z = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return z.to(device=like.device, dtype=like.dtype)


# -- masked reductions -------------------------------------------------------------------------------
def masked_bbox(batch: PointBatch) -> tuple[Tensor, Tensor]:
    """Per-cloud (B, 3) minimum and maximum of the valid points' xyz."""
    xyz, m = batch.points[..., :3], batch.mask.unsqueeze(-1)
    low = torch.where(m, xyz, torch.full_like(xyz, float("inf"))).amin(dim=1)
    high = torch.where(m, xyz, torch.full_like(xyz, float("-inf"))).amax(dim=1)
    return low, high


def masked_mean(batch: PointBatch) -> Tensor:
    """(B, 3) centroid of the valid points."""
    m = batch.mask.unsqueeze(-1).to(batch.points.dtype)
    return (batch.points[..., :3] * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)


def with_xyz(batch: PointBatch, xyz: Tensor) -> PointBatch:
    """``batch`` with new xyz (other channels kept)."""
    if batch.points.shape[-1] == 3:
        return PointBatch(xyz, batch.mask)
    return PointBatch(torch.cat([xyz, batch.points[..., 3:]], dim=-1), batch.mask)


def first_true(flags: Tensor) -> Tensor:
    """Index of the first True along the last dimension (0 where there is none)."""
    return flags.to(torch.uint8).argmax(dim=-1)


# -- final sampling ----------------------------------------------------------------------------------
def sample_points(batch: PointBatch, num_points: int, generator: torch.Generator) -> Tensor:
    """(B, num_points, C): ``num_points`` valid points per cloud, uniformly without replacement.

    A cloud with fewer valid points repeats them (cycling through one random order), so the output
    always has the requested size; a cloud with none is an error.
    """
    points, mask = batch
    b, n = mask.shape
    counts = mask.sum(dim=1)
    if int(counts.min()) == 0:
        raise ValueError("cannot sample points from a cloud that has no valid points left")
    keys = torch.rand((b, n), generator=generator, device=generator.device).to(points.device)
    keys = keys.masked_fill(~mask, 2.0)
    take = min(num_points, n)
    order = keys.topk(take, dim=1, largest=False, sorted=True).indices  # valid rows first, random order
    if num_points > n or int(counts.min()) < num_points:
        slots = torch.arange(num_points, device=points.device).unsqueeze(0) % counts.clamp_max(take).unsqueeze(1)
        order = torch.gather(order, 1, slots)
    return torch.gather(points, 1, order.unsqueeze(-1).expand(-1, -1, points.shape[-1]))


# -- the chain ---------------------------------------------------------------------------------------
PointsTransform = Callable[[Tensor, torch.Generator], Tensor]


class AugmentChain:
    """Applies augmentations in order, then samples ``num_points`` valid points per cloud.

    ``transforms`` is a sequence, or a mapping whose ``None`` values are skipped (so a Hydra override
    such as ``method.views.transforms.crop=null`` removes one step). Elements are :class:`MaskedTransform`
    objects or plain ``(points, generator) -> points`` transforms (``selfsup_pcd.data.transforms``), which
    see the padded tensor and must keep its size. Operations with a ``bind(num_points)`` method learn the
    chain's point count (crop / cutout minimum, up-sampling target). ``num_points=None`` keeps the input
    size.
    """

    def __init__(
        self,
        transforms: Sequence[MaskedTransform | PointsTransform | None] | Mapping[str, MaskedTransform | None],
        num_points: int | None = None,
    ) -> None:
        items = list(transforms.values()) if isinstance(transforms, Mapping) else list(transforms)
        self.transforms = [t for t in items if t is not None]
        self.num_points = num_points
        if num_points is not None:
            for t in self.transforms:
                bind = getattr(t, "bind", None)
                if callable(bind):
                    bind(num_points)

    def apply(self, batch: PointBatch, generator: torch.Generator) -> PointBatch:
        """All operations, without the final sampling."""
        for t in self.transforms:
            if isinstance(t, MaskedTransform):
                batch = t.apply(batch, generator)
            else:
                batch = PointBatch(t(batch.points, generator), batch.mask)
        return batch

    def __call__(self, points: Tensor, generator: torch.Generator, mask: Tensor | None = None) -> Tensor:
        """(B, N, C) [+ (B, N) validity] -> (B, num_points, C)."""
        batch = PointBatch.full(points) if mask is None else PointBatch(points, mask)
        batch = self.apply(batch, generator)
        return sample_points(batch, self.num_points or points.shape[1], generator)

    def __repr__(self) -> str:
        return f"AugmentChain(num_points={self.num_points}, transforms={self.transforms!r})"
