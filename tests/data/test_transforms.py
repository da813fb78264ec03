"""Batched augmentations: geometry is right, randomness comes only from the generator."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup_pcd.data.transforms import (
    Compose,
    RandomJitter,
    RandomRotation,
    RandomScaleShift,
    RandomSubsample,
    ShufflePoints,
    rotation_matrices,
)


def make_batch(batch: int = 4, num: int = 128, normals: bool = True, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randn(batch, num, 3, generator=g)
    if not normals:
        return xyz
    n = torch.randn(batch, num, 3, generator=g)
    return torch.cat([xyz, n / n.norm(dim=-1, keepdim=True)], dim=-1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_rotation_matrices_are_proper_rotations_about_the_axis(axis: str) -> None:
    angles = torch.rand(16, generator=gen()) * 4 * math.pi - 2 * math.pi
    rot = rotation_matrices(angles, axis)
    eye = torch.eye(3).expand(16, 3, 3)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(16), atol=1e-6, rtol=0)
    unit = torch.eye(3)["xyz".index(axis)]
    torch.testing.assert_close(rot @ unit, unit.expand(16, 3), atol=1e-6, rtol=0)  # the axis is fixed


def test_rotation_matrix_is_right_handed() -> None:
    quarter = rotation_matrices(torch.tensor([math.pi / 2]), "z")[0]
    torch.testing.assert_close(
        quarter @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0
    )
    with pytest.raises(ValueError, match="axis"):
        rotation_matrices(torch.zeros(1), "w")


def test_random_rotation_rotates_normals_with_points() -> None:
    points = make_batch()
    out = RandomRotation(axis="y")(points, gen())
    for b in range(points.shape[0]):
        # Recover the rotation from xyz alone, then check the normals went through the same one.
        rot = torch.linalg.lstsq(points[b, :, :3].double(), out[b, :, :3].double()).solution
        torch.testing.assert_close(points[b, :, 3:].double() @ rot, out[b, :, 3:].double(), atol=1e-5, rtol=0)
        torch.testing.assert_close(rot.T @ rot, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., 1], points[..., 1])  # about y: heights unchanged
    assert not torch.allclose(out, points)


def test_jitter_stays_within_clip_and_leaves_normals() -> None:
    points = make_batch()
    out = RandomJitter(sigma=1.0, clip=0.05)(points, gen())  # large sigma: the clip is what bounds it
    delta = (out[..., :3] - points[..., :3]).abs()
    assert delta.max() <= 0.05 + 1e-6 and delta.max() > 0.049
    torch.testing.assert_close(out[..., 3:], points[..., 3:])
    with pytest.raises(ValueError):
        RandomJitter(sigma=0.01, clip=0.0)


def test_scale_shift_bounds_and_normals() -> None:
    points = make_batch()
    out = RandomScaleShift(scale_low=0.5, scale_high=2.0, shift=0.2)(points, gen())
    # Per shape and axis: out = in * s + t, so differences between points scale by s alone.
    scale = (out[:, 1:, :3] - out[:, :1, :3]) / (points[:, 1:, :3] - points[:, :1, :3])
    torch.testing.assert_close(scale, scale[:, :1].expand_as(scale), atol=1e-3, rtol=1e-3)
    assert scale.min() >= 0.5 - 1e-3 and scale.max() <= 2.0 + 1e-3
    shift = out[:, 0, :3] - points[:, 0, :3] * scale[:, 0]
    assert shift.abs().max() <= 0.2 + 1e-4
    torch.testing.assert_close(out[..., 3:], points[..., 3:])


def full_pipeline() -> Compose:
    return Compose([RandomRotation(), RandomScaleShift(), RandomJitter(), ShufflePoints(), RandomSubsample(64)])


def test_same_generator_seed_gives_identical_output() -> None:
    points = make_batch()
    first = full_pipeline()(points, gen(7))
    torch.testing.assert_close(full_pipeline()(points, gen(7)), first, atol=0, rtol=0)
    assert not torch.allclose(full_pipeline()(points, gen(8)), first)
    assert first.shape == (4, 64, 6)


def test_generator_state_replays_the_next_views() -> None:
    points, g = make_batch(), gen(3)
    full_pipeline()(points, g)
    state = g.get_state()
    second = full_pipeline()(points, g)
    g.set_state(state)
    torch.testing.assert_close(full_pipeline()(points, g), second, atol=0, rtol=0)


def test_shuffle_is_a_permutation_of_each_shape() -> None:
    points = make_batch()
    out = ShufflePoints()(points, gen())
    assert not torch.equal(out, points)
    for b in range(points.shape[0]):
        torch.testing.assert_close(out[b, out[b, :, 0].argsort()], points[b, points[b, :, 0].argsort()])


def test_random_subsample_keeps_distinct_input_points() -> None:
    batch, num = 3, 50
    ids = torch.arange(batch * num, dtype=torch.float32).reshape(batch, num, 1).expand(-1, -1, 3)
    out = RandomSubsample(20)(ids.contiguous(), gen())
    assert out.shape == (batch, 20, 3)
    for b in range(batch):
        kept = out[b, :, 0]
        assert len(kept.unique()) == 20  # no point drawn twice
        assert ((kept >= b * num) & (kept < (b + 1) * num)).all()  # from its own shape
    assert not torch.equal(out[0, :, 0], torch.arange(20, dtype=torch.float32))  # not just the first rows
    with pytest.raises(ValueError, match="cannot keep"):
        RandomSubsample(51)(ids, gen())
