"""Batched STRL augmentations, each checked on its defining property."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from selfsup_pcd.data.augment import (
    AugmentChain,
    InputDropout,
    Jitter,
    Normalize,
    PointBatch,
    RandomCrop,
    RandomCutout,
    RandomRotate,
    RotatePerturbation,
    Scale,
    Subsample,
    Translate,
    UpSample,
    sample_points,
)
from selfsup_pcd.data.augment.knn import _knn_brute_force, _knn_kdtree
from selfsup_pcd.data.transforms import Compose


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clouds(b: int = 6, n: int = 256, seed: int = 0) -> torch.Tensor:
    """Anisotropic blobs at different offsets and scales."""
    g = gen(seed)
    pts = torch.randn(b, n, 3, generator=g) * torch.rand(b, 1, 3, generator=g) * 2
    return pts + torch.randn(b, 1, 3, generator=g) * 3


def strl_chain(num_points: int) -> AugmentChain:
    return AugmentChain([UpSample(), RandomCrop(), Normalize(), RandomCutout(), Scale(), RotatePerturbation(),
                         Translate(), Jitter(), InputDropout()], num_points=num_points)


# -- crop and cutout ---------------------------------------------------------------------------------
def test_crop_keeps_min_points_inside_its_box() -> None:
    pts = clouds(32, 300)
    mask = torch.ones(32, 300, dtype=torch.bool)
    mask[:, 250:] = False  # padding rows never count and are never kept
    batch = PointBatch(pts, mask)
    new_mask, low, high, cropped = RandomCrop(p=1.0, min_points=100).sample(batch, gen(1))
    assert cropped.sum() >= 24  # most clouds find an acceptable box within 10 tries
    inside = ((pts > low[:, None]) & (pts < high[:, None])).all(-1) & mask
    for b in range(32):
        if cropped[b]:
            kept = new_mask[b]
            assert 100 <= int(kept.sum()) < 250
            assert torch.equal(kept, inside[b])  # exactly the valid points strictly inside the box
        else:
            assert torch.equal(new_mask[b], mask[b])
    # the box side fractions follow the spec: rx in [0.6, 1.1], aspect in [0.75, 1.33]
    lo, hi = pts[:, :250].amin(1), pts[:, :250].amax(1)
    frac = ((high - low) / (hi - lo))[cropped]
    assert torch.all(frac[:, 0] >= 0.6 - 1e-5) and torch.all(frac[:, 0] <= 1.1 + 1e-5)
    aspect = frac[:, 1] / frac[:, 0]
    assert torch.all(aspect >= 0.75 - 1e-4) and torch.all(aspect <= 1.33 + 1e-4)
    torch.testing.assert_close(frac[:, 1] * frac[:, 2], frac[:, 0] ** 2)


def test_crop_without_acceptable_box_or_probability_zero_keeps_all() -> None:
    batch = PointBatch.full(clouds(8, 64))
    # keeping >= 64 of 64 points and fewer than all is impossible: no box is accepted
    mask, _, _, cropped = RandomCrop(p=1.0, min_points=64).sample(batch, gen())
    assert not cropped.any() and mask.all()
    mask, _, _, cropped = RandomCrop(p=0.0, min_points=1).sample(batch, gen())
    assert not cropped.any() and mask.all()


def test_cutout_removes_exactly_its_box_and_keeps_min_points() -> None:
    pts = clouds(32, 300)
    batch = PointBatch.full(pts)
    new_mask, low, high, cut = RandomCutout(p=1.0, min_points=200).sample(batch, gen(2))
    assert cut.sum() >= 24
    inside = ((pts > low[:, None]) & (pts < high[:, None])).all(-1)
    for b in cut.nonzero().flatten().tolist():
        assert inside[b].any() and int(new_mask[b].sum()) >= 200
        assert torch.equal(new_mask[b], ~inside[b])
    assert new_mask[~cut].all()


# -- rotations, scale, translate, jitter ---------------------------------------------------------------
def test_rotate_perturbation_is_orthonormal_clipped_and_zyx() -> None:
    pts = clouds(64, 32)
    op = RotatePerturbation(sigma=0.2, clip=0.18)  # wide sigma: most angles hit the clip
    rot, angles, applied = op.sample(PointBatch.full(pts), gen(3))
    assert applied.all()
    eye = torch.eye(3).expand(64, 3, 3)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(64), atol=1e-6, rtol=0)
    assert angles.abs().max() <= 0.18 and (angles.abs() == 0.18).float().mean() > 0.2
    # R = Rz Ry Rx: extrinsic x, then y, then z
    expected = Rotation.from_euler("xyz", angles.double().numpy()).as_matrix()
    np.testing.assert_allclose(rot.double().numpy(), expected, atol=1e-6)
    out = op.apply(PointBatch.full(pts), gen(3)).points
    torch.testing.assert_close(out, pts @ rot.transpose(1, 2))


@pytest.mark.parametrize("axis", ["z", None])
def test_full_rotation_is_orthonormal(axis) -> None:
    pts = clouds(16, 32)
    rot, _ = RandomRotate(axis=axis).sample(PointBatch.full(pts), gen(4))
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(16, 3, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(16), atol=1e-6, rtol=0)
    out = RandomRotate(axis=axis).apply(PointBatch.full(pts), gen(4)).points
    torch.testing.assert_close(out.norm(dim=-1), pts.norm(dim=-1))  # distances to the origin kept
    if axis == "z":
        torch.testing.assert_close(out[..., 2], pts[..., 2])


def test_rotation_also_turns_normals() -> None:
    xyz = clouds(4, 16)
    normals = torch.nn.functional.normalize(torch.randn(4, 16, 3, generator=gen(5)), dim=-1)
    out = RandomRotate(axis=None).apply(PointBatch.full(torch.cat([xyz, normals], -1)), gen(6)).points
    torch.testing.assert_close(out[..., 3:].norm(dim=-1), torch.ones(4, 16))
    torch.testing.assert_close((out[..., :3] * out[..., 3:]).sum(-1), (xyz * normals).sum(-1), atol=1e-5, rtol=0)


def test_jitter_is_clipped() -> None:
    pts = torch.zeros(8, 4096, 3)
    noise = Jitter(sigma=0.05, clip=0.05).apply(PointBatch.full(pts), gen(7)).points
    assert noise.abs().max() <= 0.05
    assert (noise.abs() == 0.05).float().mean() > 0.2  # 1 sigma: about a third of the draws are clipped
    loose = Jitter(sigma=0.01, clip=1.0).apply(PointBatch.full(pts), gen(7)).points
    assert abs(float(loose.std()) - 0.01) < 0.0005


def test_scale_and_translate_ranges() -> None:
    pts = clouds(64, 64)
    batch = PointBatch.full(pts)
    scaled = Scale(0.8, 1.25).apply(batch, gen(8)).points
    ratio = scaled[:, 0, 0] / pts[:, 0, 0]
    torch.testing.assert_close(scaled, pts * ratio.view(-1, 1, 1))
    assert ratio.min() >= 0.8 and ratio.max() <= 1.25
    shifted = Translate(0.1).apply(batch, gen(9)).points
    shift = shifted[:, 0] - pts[:, 0]
    torch.testing.assert_close(shifted, pts + shift[:, None])
    extent = pts.amax(1) - pts.amin(1)
    assert torch.all(shift.abs() <= 0.1 * extent + 1e-5)


def test_normalize_uses_valid_points_only() -> None:
    pts = clouds(4, 50)
    mask = torch.arange(50) < torch.tensor([50, 40, 30, 20]).unsqueeze(1)
    pts = torch.where(mask.unsqueeze(-1), pts, torch.full_like(pts, 1e4))  # far-away padding
    out = Normalize().apply(PointBatch(pts, mask), gen()).points
    for b in range(4):
        valid = out[b, mask[b]]
        torch.testing.assert_close(valid.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(valid.norm(dim=-1).max(), torch.tensor(1.0))


# -- dropout and sampling ------------------------------------------------------------------------------
def test_input_dropout_replaces_points_with_the_first_point() -> None:
    pts = clouds(16, 400)
    mask = torch.ones(16, 400, dtype=torch.bool)
    mask[:, :3] = False  # the "first point" is the first valid one
    out = InputDropout(max_ratio=0.875).apply(PointBatch(pts, mask), gen(10))
    assert torch.equal(out.mask, mask)
    changed = (out.points != pts).any(-1)
    assert not changed[:, :3].any()
    first = pts[:, 3]
    assert torch.equal(out.points[changed], first.unsqueeze(1).expand_as(pts)[changed])
    share = changed.float().mean(1)
    assert share.max() < 0.95 and share.max() > 0.3  # ratios ~ U(0, 0.875)
    removed = InputDropout(mode="remove").apply(PointBatch(pts, mask), gen(10))
    dropped = ~removed.mask & mask  # the same draws; point 3 itself may be dropped, unchanged above
    assert torch.equal(removed.points, pts) and torch.equal(dropped[:, 4:], changed[:, 4:])


def test_sampling_takes_distinct_valid_points_and_cycles_when_short() -> None:
    pts = torch.arange(40, dtype=torch.float32).view(1, 40, 1).expand(3, 40, 3).contiguous()
    mask = torch.arange(40) < torch.tensor([40, 25, 10]).unsqueeze(1)
    out = sample_points(PointBatch(pts, mask), 20, gen(11))[..., 0]
    assert len(set(out[0].tolist())) == 20 and len(set(out[1].tolist())) == 20
    assert out[1].max() < 25  # only valid rows
    assert sorted(set(out[2].tolist())) == list(range(10))  # all 10 valid points, each twice
    assert torch.equal(out[2, :10], out[2, 10:])
    full = Subsample(20).apply(PointBatch(pts, mask), gen(11))
    assert full.points.shape == (3, 20, 3) and full.mask.all()


# -- kNN up-sampling ----------------------------------------------------------------------------------
def test_knn_kdtree_matches_brute_force() -> None:
    pts = clouds(3, 200).double()
    counts = torch.tensor([200, 150, 60])
    queries = torch.randint(0, 60, (3, 30), generator=gen(12))
    assert torch.equal(_knn_kdtree(pts, counts, queries, 10), _knn_brute_force(pts, counts, queries, 10))


def test_upsampled_points_are_means_of_five_of_ten_nearest_neighbours() -> None:
    n = 24
    pts = clouds(2, n, seed=3).double()
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 20:] = False
    pts[1, 20:] = 1e3  # padding must never be used
    out = UpSample(num_points=40, nsample=5).apply(PointBatch(pts, mask), gen(13))
    assert out.points.shape[1] == n + 20 and out.counts.tolist() == [40, 40]
    for b in range(2):
        valid = out.points[b, out.mask[b]]
        count = int(mask[b].sum())
        original = pts[b, :count]
        dist = torch.cdist(original, original)
        neighbours = dist.topk(10, largest=False).indices  # (count, 10)
        means = set()
        for c in range(count):
            for subset in itertools.combinations(neighbours[c].tolist(), 5):
                means.add(tuple(original[list(subset)].mean(0).round(decimals=9).tolist()))
        new = valid[count:]
        assert len(new) == 40 - count
        for p in new:
            assert tuple(p.round(decimals=9).tolist()) in means


def test_upsampling_is_a_no_op_on_large_enough_clouds() -> None:
    batch = PointBatch.full(clouds(2, 64))
    assert UpSample(num_points=64).apply(batch, gen()) is batch


# -- the chain ----------------------------------------------------------------------------------------
def test_same_seed_same_views_other_seed_other_views() -> None:
    pts = clouds(4, 256)
    a = strl_chain(128)(pts, gen(5))
    b = strl_chain(128)(pts, gen(5))
    c = strl_chain(128)(pts, gen(6))
    assert a.shape == (4, 128, 3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # two views of the same clouds from one generator differ
    g = gen(5)
    assert not torch.equal(strl_chain(128)(pts, g), strl_chain(128)(pts, g))


def test_chain_binds_point_count_and_skips_disabled_steps() -> None:
    chain = AugmentChain({"upsample": UpSample(), "crop": None, "cutout": RandomCutout(), "jitter": None},
                         num_points=100)
    assert [type(t).__name__ for t in chain.transforms] == ["UpSample", "RandomCutout"]
    assert chain.transforms[0].num_points == 200 and chain.transforms[1].min_points == 100
    with pytest.raises(ValueError, match="min_points"):
        RandomCrop().apply(PointBatch.full(clouds(1, 10)), gen())


def test_chain_is_a_batch_transform_and_accepts_plain_transforms() -> None:
    from selfsup_pcd.data.transforms import RandomScaleShift

    pts = clouds(2, 64)
    chain = AugmentChain([RandomScaleShift(), Normalize()], num_points=None)
    out = Compose([chain])(pts, gen())
    assert out.shape == pts.shape
    torch.testing.assert_close(out.norm(dim=-1).amax(1), torch.ones(2))
