"""Synthetic RGB-D sequences: rigid, smooth, in-room camera paths; depth that back-projects consistently."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from selfsup_pcd.data.synthetic.scenes import Scene, make_scene
from selfsup_pcd.data.synthetic.sequences import (
    HEIGHT_RANGE,
    WALL_CLEARANCE,
    backproject,
    camera_trajectory,
    depth_to_mm,
)

FRAMES = 60


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene(3)


@pytest.fixture(scope="module")
def poses(scene: Scene) -> np.ndarray:
    return camera_trajectory(scene, FRAMES, seed=0)


def rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    cos = (np.trace(a.T @ b) - 1) / 2
    return math.degrees(math.acos(np.clip(cos, -1, 1)))


def test_poses_are_rigid_transforms(poses: np.ndarray) -> None:
    assert poses.shape == (FRAMES, 4, 4)
    R = poses[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)
    np.testing.assert_array_equal(poses[:, 3], np.broadcast_to([0, 0, 0, 1], (FRAMES, 4)))


def test_trajectory_is_deterministic_and_seeded(scene: Scene, poses: np.ndarray) -> None:
    np.testing.assert_array_equal(camera_trajectory(scene, FRAMES, seed=0), poses)
    assert not np.allclose(camera_trajectory(scene, FRAMES, seed=1), poses)


def test_consecutive_poses_move_smoothly(poses: np.ndarray) -> None:
    eyes = poses[:, :3, 3]
    steps = np.linalg.norm(np.diff(eyes, axis=0, append=eyes[:1]), axis=1)  # closed loop: last -> first too
    assert steps.max() < 0.4 and steps.max() < 2.5 * np.median(steps) and steps.min() > 0
    turns = [rotation_angle(poses[i, :3, :3], poses[(i + 1) % FRAMES, :3, :3]) for i in range(FRAMES)]
    assert max(turns) < 15.0
    second = np.linalg.norm(eyes[2:] - 2 * eyes[1:-1] + eyes[:-2], axis=1)  # no kinks
    assert second.max() < 0.5 * steps.max()


def test_camera_stays_inside_the_room_and_clear_of_objects(scene: Scene, poses: np.ndarray) -> None:
    eyes = poses[:, :3, 3]
    assert np.all(eyes[:, :2] >= WALL_CLEARANCE - 1e-9) and np.all(eyes[:, :2] <= scene.room_size[:2] - WALL_CLEARANCE)
    assert np.all((eyes[:, 2] >= HEIGHT_RANGE[0]) & (eyes[:, 2] <= HEIGHT_RANGE[1]))
    for obj in scene.objects:
        c, s = math.cos(obj.box[6]), math.sin(obj.box[6])
        d = eyes - obj.box[:3]
        local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
        assert not np.any(np.all(np.abs(local) <= obj.box[3:6] / 2 + 0.2, axis=1)), obj.class_name


def test_cameras_are_upright_and_look_into_the_room(scene: Scene, poses: np.ndarray) -> None:
    right, down, forward = poses[:, :3, 0], poses[:, :3, 1], poses[:, :3, 2]
    assert np.abs(right[:, 2]).max() < 0.1  # little roll
    assert down[:, 2].max() < -0.3  # image "down" points down in the world
    assert forward[:, 2].max() < 0.0  # looking slightly downwards
    to_centre = scene.room_size[:2] / 2 - poses[:, :2, 3]
    assert np.all(np.einsum("ij,ij->i", forward[:, :2], to_centre) > 0)


def test_depth_to_mm_marks_invalid_depth() -> None:
    depth = np.array([[0.0, 1.2344, 1.2346], [65.535, 65.6, np.inf]], dtype=np.float32)
    mm = depth_to_mm(depth)
    assert mm.dtype == np.uint16
    assert mm.tolist() == [[0, 1234, 1235], [65535, 0, 0]]


# -- rendered frames ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sequence(scene: Scene, renderer: None):
    from selfsup_pcd.data.synthetic.sequences import make_sequence

    return make_sequence(scene, FRAMES, width=320, height=240, fov_deg=60, seed=0)


def test_sequence_arrays(sequence, poses: np.ndarray) -> None:
    assert sequence.color.shape == (FRAMES, 240, 320, 3) and sequence.color.dtype == np.uint8
    assert sequence.depth_mm.shape == (FRAMES, 240, 320) and sequence.depth_mm.dtype == np.uint16
    np.testing.assert_array_equal(sequence.poses, poses)
    K = sequence.K
    assert K.shape == (3, 3) and K[0, 2] == 160 and K[1, 2] == 120
    assert math.isclose(2 * math.degrees(math.atan(160 / K[0, 0])), 60.0)
    assert (sequence.depth_mm > 0).mean() > 0.99  # a closed room: every pixel sees a surface
    assert sequence.color.std() > 10


def test_depth_backprojects_inside_the_room(sequence, scene: Scene) -> None:
    for f in (0, FRAMES // 2):
        world = backproject(sequence.depth_mm[f], sequence.K, sequence.poses[f])
        assert np.all(world > -0.01) and np.all(world < scene.room_size + 0.01)


def overlap_distance(sequence, a: int, b: int, poses: np.ndarray) -> tuple[float, float]:
    """Mean distance from frame a's points that fall in frame b's view to frame b's points, and their share."""
    pa = backproject(sequence.depth_mm[a], sequence.K, poses[a])
    pb = backproject(sequence.depth_mm[b], sequence.K, poses[b])
    w2c = np.linalg.inv(poses[b])
    cam = pa @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam[:, :2] / cam[:, 2:] * [sequence.K[0, 0], sequence.K[1, 1]] + sequence.K[:2, 2]
    seen = (cam[:, 2] > 0) & np.all((uv >= 1) & (uv < [319, 239]), axis=1)
    if not seen.any():
        return math.inf, 0.0
    distance, _ = cKDTree(pb).query(pa[seen])
    return float(distance.mean()), float(seen.mean())


def test_nearby_frames_overlap_in_the_world(sequence) -> None:
    for a in (0, 17, 41):
        distance, shared = overlap_distance(sequence, a, a + 1, sequence.poses)
        assert distance < 0.02 and shared > 0.5, (a, distance, shared)
    # control: with world->camera matrices in place of the poses the clouds do not meet
    distance, _ = overlap_distance(sequence, 0, 1, np.linalg.inv(sequence.poses))
    assert distance > 0.05
