"""ProceduralShapes: deterministic, varied within a class, learnable across classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from selfsup_pcd.data.synthetic import (
    CLASS_NAMES,
    ProceduralShapesDataModule,
    ProceduralShapesDataset,
    make_mesh,
    sample_points,
)


@pytest.fixture(scope="module")
def splits() -> tuple[ProceduralShapesDataset, ProceduralShapesDataset]:
    train = ProceduralShapesDataset("train", shapes_per_class=10, num_points=512, use_normals=True, seed=0)
    test = ProceduralShapesDataset("test", shapes_per_class=5, num_points=512, use_normals=True, seed=0)
    return train, test


def surface_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Distance of each point to the mesh, brute force (trimesh.proximity would need rtree)."""
    triangles = np.repeat(mesh.triangles[None], len(points), axis=0).reshape(-1, 3, 3)
    queries = np.repeat(points, len(mesh.triangles), axis=0)
    closest = trimesh.triangles.closest_point(triangles, queries)
    return np.linalg.norm(closest - queries, axis=1).reshape(len(points), -1).min(axis=1)


def descriptor(points: np.ndarray) -> np.ndarray:
    """Rotation-invariant shape statistics: radial and D2 distance histograms, PCA spectrum."""
    rng = np.random.default_rng(0)
    radius = np.linalg.norm(points, axis=1)
    a, b = rng.integers(0, len(points), (2, 2000))
    d2 = np.linalg.norm(points[a] - points[b], axis=1)
    spectrum = np.sort(np.linalg.eigvalsh(np.cov(points.T)))[::-1]
    return np.concatenate(
        [
            np.histogram(radius, 10, (0, 1))[0] / len(points),
            np.histogram(d2, 10, (0, 2))[0] / 2000,
            spectrum / spectrum.sum(),
        ]
    )


def descriptors(dataset: ProceduralShapesDataset) -> np.ndarray:
    return np.stack([descriptor(dataset[i]["points"][:, :3].numpy()) for i in range(len(dataset))])


def test_at_least_ten_named_classes() -> None:
    assert len(CLASS_NAMES) >= 10 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    with pytest.raises(ValueError):
        make_mesh(len(CLASS_NAMES), 0)


def test_same_seed_gives_identical_points_and_other_seeds_do_not() -> None:
    a = ProceduralShapesDataset("train", shapes_per_class=2, num_points=256, seed=3)
    b = ProceduralShapesDataset("train", shapes_per_class=2, num_points=256, seed=3)
    c = ProceduralShapesDataset("train", shapes_per_class=2, num_points=256, seed=4)
    for i in (0, 5, len(a) - 1):
        torch.testing.assert_close(a[i]["points"], b[i]["points"], atol=0, rtol=0)
        assert not torch.allclose(a[i]["points"], c[i]["points"])
    mesh_a, mesh_b = make_mesh(6, 11), make_mesh(6, 11)
    np.testing.assert_array_equal(mesh_a.vertices, mesh_b.vertices)
    np.testing.assert_array_equal(sample_points(mesh_a, 64, 1)[0], sample_points(mesh_b, 64, 1)[0])


def test_meshes_are_closed_centred_and_deformed() -> None:
    for class_id in range(len(CLASS_NAMES)):
        mesh = make_mesh(class_id, seed=1)
        assert mesh.is_watertight, CLASS_NAMES[class_id]
        np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-9)
        other = make_mesh(class_id, seed=2)
        # Same primitives, different instance: sizes differ (parameters, deformation, anisotropic scale).
        assert not np.allclose(np.sort(mesh.extents), np.sort(other.extents), rtol=0.02)


def test_sample_points_lie_on_the_surface_with_unit_normals() -> None:
    mesh = make_mesh(7, seed=5)
    points, normals = sample_points(mesh, 200, seed=0)
    assert points.shape == normals.shape == (200, 3) and points.dtype == normals.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert surface_distance(mesh, points[:40]).max() < 1e-5


def test_items_and_mesh_share_one_normalised_frame(splits) -> None:
    train, _ = splits
    item = train[13]
    points = item["points"].numpy()
    assert points.shape == (512, 6) and item["points"].dtype == torch.float32
    assert int(item["label"]) == 1 and item["label"].dtype == torch.int64 and int(item["index"]) == 13
    np.testing.assert_allclose(np.linalg.norm(points[:, :3], axis=1).max(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(points[:, :3].mean(axis=0), 0.0, atol=1e-5)
    # The mesh comes back in the frame of its points, so renders line up with them.
    assert surface_distance(train.mesh(13), points[:40, :3]).max() < 1e-4


def test_train_and_test_are_disjoint(splits) -> None:
    train, test = splits
    assert not set(train.seeds.tolist()) & set(test.seeds.tolist())
    first_points = {tuple(np.round(train[i]["points"][0].numpy(), 5)) for i in range(len(train))}
    assert not any(tuple(np.round(test[i]["points"][0].numpy(), 5)) in first_points for i in range(len(test)))


def test_classes_differ_and_vary_within(splits) -> None:
    train, _ = splits
    feats = descriptors(train)
    centroids = np.stack([feats[train.labels == c].mean(axis=0) for c in range(len(CLASS_NAMES))])
    between = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)[np.triu_indices(len(CLASS_NAMES), 1)]
    within = np.array(
        [np.linalg.norm(feats[train.labels == c] - centroids[c], axis=1).mean() for c in range(len(centroids))]
    )
    assert between.min() > 0.02  # no two classes collapse onto one shape distribution
    assert within.min() > 0.01  # every class has intra-class variation


def test_classes_are_learnable_by_nearest_neighbour(splits) -> None:
    train, test = splits
    x_train, x_test = descriptors(train), descriptors(test)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-9
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    nearest = ((x_test[:, None] - x_train[None]) ** 2).sum(-1).argmin(axis=1)
    accuracy = (train.labels[nearest] == test.labels).mean()
    assert accuracy > 0.6, f"1-NN accuracy {accuracy:.2f} (chance {1 / len(CLASS_NAMES):.2f})"


def test_datamodule_batches_and_labels() -> None:
    dm = ProceduralShapesDataModule(num_points=128, train_per_class=2, test_per_class=1, batch_size=4, seed=1)
    assert dm.class_names == CLASS_NAMES and dm.num_classes == len(CLASS_NAMES)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 2 * len(CLASS_NAMES) and len(dm.dataset("val")) == len(CLASS_NAMES)
    assert dm.labels("train").tolist() == dm.dataset("train").labels.tolist()
    assert dm.labels("val").tolist() == dm.dataset("test").labels.tolist()
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape == (4, 128, 3) and batch["label"].dtype == torch.int64
