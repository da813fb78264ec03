"""Voxelisation and de-voxelisation (issue #6): every point gets its own voxel's feature and label back."""

from __future__ import annotations

import numpy as np
import pytest

from selfsup_pcd.data.voxelize import IGNORE_INDEX, collate_voxels, voxel_labels, voxelize


def _cloud(n: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, 3)), rng.normal(size=(n, 4)).astype(np.float32)


def test_devoxelised_feature_of_each_point_is_the_mean_of_its_own_cell() -> None:
    xyz, feats = _cloud()
    vox = voxelize(xyz, feats, voxel_size=0.25)
    cells = np.floor(xyz / 0.25).astype(np.int64)
    # the voxel each point is sent back to is its own cell
    np.testing.assert_array_equal(vox.coords[vox.inverse], cells)
    # and carries the mean feature of exactly the points of that cell
    back = vox.feats[vox.inverse]
    for i in range(0, len(xyz), 37):
        same = (cells == cells[i]).all(1)
        np.testing.assert_allclose(back[i], feats[same].mean(0), rtol=1e-5, atol=1e-6)
    # one voxel per occupied cell, no duplicates
    assert len(vox.coords) == len(np.unique(cells, axis=0))
    assert vox.coords.dtype == np.int32 and vox.inverse.dtype == np.int64


def test_label_modes_on_a_hand_made_case() -> None:
    #           voxel: 0  0  0  1  1  2  2  3
    inverse = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    labels = np.array([4, 4, 7, 2, 5, 3, 3, IGNORE_INDEX])
    np.testing.assert_array_equal(voxel_labels(inverse, labels, 4, "majority"), [4, 2, 3, IGNORE_INDEX])
    np.testing.assert_array_equal(voxel_labels(inverse, labels, 4, "ignore"),
                                  [IGNORE_INDEX, IGNORE_INDEX, 3, IGNORE_INDEX])
    with pytest.raises(ValueError, match="label_mode"):
        voxel_labels(inverse, labels, 4, "vote")


def test_invalid_points_are_refused_with_a_reason() -> None:
    xyz, feats = _cloud(10)
    xyz[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        voxelize(xyz, feats, 0.1)


def test_collate_offsets_inverse_into_the_concatenated_voxels() -> None:
    samples = []
    for seed in (0, 1):
        xyz, feats = _cloud(200, seed)
        labels = np.random.default_rng(seed).integers(0, 3, 200)
        v = voxelize(xyz, feats, 0.5, labels)
        samples.append({"coords": v.coords, "feats": v.feats, "labels": v.labels, "inverse": v.inverse,
                        "point_labels": labels, "room": seed})
    batch = collate_voxels(samples)
    m0 = len(samples[0]["coords"])
    assert batch["coords"].shape == (m0 + len(samples[1]["coords"]), 4)
    assert set(batch["coords"][:m0, 0].tolist()) == {0} and set(batch["coords"][m0:, 0].tolist()) == {1}
    # the second sample's points land on the second sample's voxels, with the same features as before
    inv = batch["inverse"][200:]
    assert int(inv.min()) >= m0
    np.testing.assert_allclose(batch["feats"][inv].numpy(), samples[1]["feats"][samples[1]["inverse"]])
    assert batch["num_points"].tolist() == [200, 200] and batch["room"].tolist() == [0, 1]
