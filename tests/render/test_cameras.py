"""Cameras: OpenCV convention, look_at, rigs and the field of view that frames the unit sphere."""

from __future__ import annotations

import math

import numpy as np
import pytest

from selfsup_pcd.render.cameras import (
    Camera,
    dodecahedron_directions,
    intrinsics,
    look_at,
    make_rig,
)
from selfsup_pcd.render.correspondences import project


def test_look_at_is_opencv():
    """Camera on +z looking at the origin with y up: world +x is image right, world +y is image up (v down)."""
    world_to_cam = look_at([0.0, 0.0, 3.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    K = intrinsics(60.0, 64, 48)
    (centre, right, up), z = project(np.array([[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0]]), K, world_to_cam)
    np.testing.assert_allclose(centre, [32.0, 24.0])  # the target lands on the principal point
    assert right[0] > centre[0] and abs(right[1] - centre[1]) < 1e-9
    assert up[1] < centre[1] and abs(up[0] - centre[0]) < 1e-9
    np.testing.assert_allclose(z, 3.0)
    np.testing.assert_allclose(world_to_cam[:3, :3] @ world_to_cam[:3, :3].T, np.eye(3), atol=1e-12)
    assert np.linalg.det(world_to_cam[:3, :3]) == pytest.approx(1.0)


def test_look_at_along_up_axis_is_well_defined():
    world_to_cam = look_at([0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    assert np.isfinite(world_to_cam).all()
    np.testing.assert_allclose(world_to_cam[2, :3], [0.0, -1.0, 0.0])


def test_cam_to_world_inverts():
    cam = make_rig("sphere", num_views=5)[3]
    np.testing.assert_allclose(cam.cam_to_world @ cam.world_to_cam, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(cam.center), 2.5)


def test_ring_rig_matches_spec():
    cams = make_rig("ring")
    assert len(cams) == 12 and all((c.width, c.height) == (32, 32) for c in cams)
    centres = np.array([c.center for c in cams])
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 2.5)
    elevation = np.degrees(np.arcsin(centres[:, 1] / 2.5))
    np.testing.assert_allclose(elevation, 30.0)
    azimuth = np.degrees(np.arctan2(centres[:, 0], centres[:, 2])) % 360
    np.testing.assert_allclose(azimuth, np.arange(0, 360, 30), atol=1e-9)
    for cam in cams:  # every camera looks at the origin
        uv, z = project(np.zeros((1, 3)), cam.K, cam.world_to_cam)
        np.testing.assert_allclose(uv[0], [16.0, 16.0])
        np.testing.assert_allclose(z, 2.5)


@pytest.mark.parametrize("distance", [1.8, 2.5, 4.0])
def test_default_fov_makes_unit_sphere_fill_the_frame(distance):
    cam = make_rig("ring", num_views=1, distance=distance, resolution=100)[0]
    # points on the sphere's outline (tangent to the viewing cone) project onto the image border
    forward = -cam.center / distance
    side = np.cross(forward, [0.0, 1.0, 0.0])
    side /= np.linalg.norm(side)
    half_angle = math.asin(1.0 / distance)
    tangent_dir = math.cos(half_angle) * forward + math.sin(half_angle) * side
    tangent_point = cam.center + tangent_dir * math.sqrt(distance**2 - 1.0)
    assert np.linalg.norm(tangent_point) == pytest.approx(1.0)
    uv, _ = project(tangent_point[None], cam.K, cam.world_to_cam)
    assert min(uv[0, 0], 100 - uv[0, 0]) == pytest.approx(0.0, abs=1e-6)


def test_sphere_and_dodecahedron_rigs():
    sphere = make_rig("sphere", num_views=40)
    centres = np.array([c.center for c in sphere])
    assert len(sphere) == 40 and np.abs(centres.mean(axis=0)).max() < 0.1  # evenly spread
    dirs = dodecahedron_directions()
    assert dirs.shape == (20, 3) and len(np.unique(dirs.round(6), axis=0)) == 20
    dots = dirs @ dirs.T
    np.testing.assert_allclose(np.sort(dots, axis=1)[:, -2], np.sqrt(5) / 3, atol=1e-9)  # regular
    assert len(make_rig("dodecahedron", resolution=16)) == 20
    with pytest.raises(ValueError, match="20 views"):
        make_rig("dodecahedron", num_views=12)
    with pytest.raises(ValueError, match="unknown rig"):
        make_rig("cube")


def test_camera_validates():
    with pytest.raises(ValueError, match="K"):
        Camera(np.eye(2), np.eye(4), 4, 4)
