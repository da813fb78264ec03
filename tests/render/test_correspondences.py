"""Correspondences: exact pixel of a known point, occlusion, recall on a sphere, projection."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from selfsup_pcd.render.cameras import Camera, make_rig
from selfsup_pcd.render.correspondences import correspondences, object_diameter, project
from selfsup_pcd.render.renderer import Renderer

# Camera at the origin, camera axes = world axes: looking along +z, world +y is image down.
WIDTH, HEIGHT = 40, 30
K = np.array([[30.0, 0.0, 20.0], [0.0, 30.0, 15.0], [0.0, 0.0, 1.0]])
WORLD_TO_CAM = np.eye(4)
CAMERA = Camera(K, WORLD_TO_CAM, WIDTH, HEIGHT)


def square(z: float, half: float = 0.4) -> trimesh.Trimesh:
    """A square facing the camera at depth ``z``."""
    corners = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    return trimesh.Trimesh(corners, [[0, 1, 2], [0, 2, 3]], process=False)


def render(mesh: trimesh.Trimesh):
    with Renderer(WIDTH, HEIGHT) as renderer:
        return renderer.render_mesh(mesh, [CAMERA])


def test_project_known_point():
    uv, z = project(np.array([[0.2, 0.1, 2.0]]), K, WORLD_TO_CAM)
    # u = 20 + 30 * 0.2 / 2 = 23, v = 15 + 30 * 0.1 / 2 = 16.5
    np.testing.assert_allclose(uv, [[23.0, 16.5]])
    np.testing.assert_allclose(z, [2.0])


def test_point_gets_the_exact_pixel():
    result = render(square(2.0))
    point = np.array([[0.123, -0.057, 2.0]])
    pairs = correspondences(point, result.depth, result.K, result.world_to_cam, tolerance=0.01)
    assert pairs.dtype == np.int32 and pairs.shape == (1, 4)
    # u = 20 + 30 * 0.123 / 2 = 21.845, v = 15 - 30 * 0.057 / 2 = 14.145: pixel (row 14, col 21)
    assert pairs.tolist() == [[0, 14, 21, 0]]
    assert result.depth[0, 14, 21] == pytest.approx(2.0, abs=1e-5)


def test_occluded_point_is_excluded():
    result = render(trimesh.util.concatenate([square(2.0, half=0.2), square(3.0, half=0.8)]))
    in_front = [0.05, 0.05, 2.0]  # on the near square
    hidden = [0.05, 0.05, 3.0]  # on the far square, behind the near one
    beside = [0.6, 0.6, 3.0]  # on the far square, visible beside the near one
    behind_everything = [0.05, 0.05, 5.0]
    pairs = correspondences(np.array([in_front, hidden, beside, behind_everything]), result.depth, result.K,
                            result.world_to_cam, tolerance=0.05)
    assert sorted(pairs[:, 3].tolist()) == [0, 2]
    # both visible points share a pixel with an occluded one at most once each
    assert len(np.unique(pairs[:, [0, 3]], axis=0)) == len(pairs)


def test_points_outside_or_behind_are_excluded():
    result = render(square(2.0, half=5.0))
    points = np.array([[0.0, 0.0, -2.0], [100.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    pairs = correspondences(points, result.depth, result.K, result.world_to_cam, tolerance=0.05)
    assert pairs[:, 3].tolist() == [3]


def test_most_visible_points_of_a_sphere_find_a_pixel():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.8)
    points, face = trimesh.sample.sample_surface(sphere, 3000, seed=0)
    normals = sphere.face_normals[face]
    cameras = make_rig("ring", num_views=12, resolution=224)
    with Renderer(224, 224) as renderer:
        result = renderer.render_mesh(sphere, cameras)
    pairs = correspondences(points, result.depth, result.K, result.world_to_cam)  # default tolerance
    recall = []
    for v, cam in enumerate(cameras):
        found = np.zeros(len(points), dtype=bool)
        found[pairs[pairs[:, 0] == v, 3]] = True
        to_camera = cam.center - points
        facing = np.einsum("pi,pi->p", normals, to_camera) / np.linalg.norm(to_camera, axis=1)
        visible = facing > 0
        assert (facing[found] > -0.1).all(), "only visible points (or points on the silhouette) may be paired"
        recall.append(found[visible].mean())
    assert min(recall) >= 0.9, recall
    # one pixel per point and view
    assert len(np.unique(pairs[:, [0, 3]], axis=0)) == len(pairs)


def test_slope_correction_keeps_more_points_at_low_resolution():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.8)
    points, _ = trimesh.sample.sample_surface(sphere, 2000, seed=1)
    cameras = make_rig("ring", num_views=4, resolution=32)
    with Renderer(32, 32) as renderer:
        r = renderer.render_mesh(sphere, cameras)
    plain = correspondences(points, r.depth, r.K, r.world_to_cam, slope_correction=False)
    sloped = correspondences(points, r.depth, r.K, r.world_to_cam)
    assert len(sloped) > 1.2 * len(plain)
    assert {tuple(p) for p in plain} <= {tuple(p) for p in sloped}


def test_default_tolerance_is_relative_to_diameter():
    points = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 4.0]])
    assert object_diameter(points) == pytest.approx(2.0)
    depth = np.full((1, HEIGHT, WIDTH), 2.0 + 0.02, dtype=np.float32)  # 1 % of the diameter away
    pairs = correspondences(points[:1], depth, K[None], WORLD_TO_CAM[None], tolerance=None)
    assert len(pairs) == 0  # a single point has diameter 0: tolerance 0
    many = np.concatenate([points[:1], [[1.0, 0.0, 2.0], [-1.0, 0.0, 2.0]]])  # diameter about 2.3
    pairs = correspondences(many, depth, K[None], WORLD_TO_CAM[None])
    assert 0 in pairs[:, 3]


def test_vectorised_over_views_and_validates_shapes():
    result = render(square(2.0))
    depth = np.repeat(result.depth, 3, axis=0)
    pairs = correspondences(np.array([[0.0, 0.0, 2.0]]), depth, np.repeat(result.K, 3, 0),
                            np.repeat(result.world_to_cam, 3, 0), tolerance=0.01)
    assert pairs[:, 0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="expected depth"):
        correspondences(np.zeros((1, 3)), depth, result.K, result.world_to_cam, 0.01)
