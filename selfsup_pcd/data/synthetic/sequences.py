"""Synthetic RGB-D sequences: a camera walking a smooth loop inside a procedural room, like a ScanNet scan.

STRL pretrains on pairs of nearby depth frames of ScanNet (``strl_byol.md`` §1-2). This module renders
such sequences from ``scenes.py`` rooms so the frame reader, the back-projection and the spatio-temporal
view pairing can be tested end to end with known geometry.

The camera path is a closed Fourier curve (an ellipse with low-frequency radial and height wobble) around
the room centre at 1.2-1.6 m, kept at least ``WALL_CLEARANCE`` from the walls and ``OBJECT_CLEARANCE`` from
every object's box; the camera looks across the room centre (towards the far side, below eye level),
with a small roll, as a hand-held scan does. Frames are equally spaced along one loop. Poses are
camera-to-world in the OpenCV convention (x right, y down, z forward), as ScanNet's ``pose/*.txt``; depth
is z along the optical axis in millimetres (uint16, 0 = no surface), as ScanNet's depth PNGs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from selfsup_pcd.data.synthetic.scenes import Scene

HEIGHT_RANGE = (1.2, 1.6)
WALL_CLEARANCE = 0.5  # metres between the camera and any wall
OBJECT_CLEARANCE = 0.3  # metres between the camera and any object's box (horizontally and above it)
PATH_SAMPLES = 256  # points at which a candidate loop is checked
PATH_TRIES = 500
MIN_LOOK_DISTANCE = 0.8  # horizontal distance to the looked-at point: bounds how steeply the camera looks down
MAX_DEPTH_MM = np.iinfo(np.uint16).max


@dataclass
class Sequence:
    """``F`` frames: colour, depth in mm (0 = invalid), camera-to-world poses (OpenCV axes) and intrinsics."""

    color: np.ndarray  # (F, H, W, 3) uint8
    depth_mm: np.ndarray  # (F, H, W) uint16
    poses: np.ndarray  # (F, 4, 4) float64, camera -> world
    K: np.ndarray  # (3, 3) float64


@dataclass
class _Loop:
    centre: np.ndarray  # (2,)
    radii: np.ndarray  # (2,)
    wobble: np.ndarray  # (2, 2): amplitude and phase of radial harmonics 2 and 3
    height: float
    height_wobble: tuple[float, float]  # amplitude, phase
    target_height: float
    target_gain: float  # the camera looks across the centre, this many times its distance to it beyond
    target_wobble: np.ndarray  # (3,) amplitude per axis
    roll: tuple[float, float]  # amplitude (rad), phase
    start: float
    direction: int

    def position(self, t: np.ndarray) -> np.ndarray:
        radial = 1.0 + self.wobble[0, 0] * np.cos(2 * t + self.wobble[0, 1]) + self.wobble[1, 0] * np.cos(
            3 * t + self.wobble[1, 1])
        x = self.centre[0] + self.radii[0] * radial * np.cos(t)
        y = self.centre[1] + self.radii[1] * radial * np.sin(t)
        z = self.height + self.height_wobble[0] * np.sin(2 * t + self.height_wobble[1])
        return np.stack([x, y, z], axis=-1)

    def look_target(self, t: np.ndarray) -> np.ndarray:
        eye = self.position(t)
        across = self.centre + self.target_gain * (self.centre - eye[..., :2])
        target = np.concatenate([across, np.full((*across.shape[:-1], 1), self.target_height)], axis=-1)
        return target + self.target_wobble * np.stack([np.sin(t), np.cos(t), np.sin(2 * t)], axis=-1)

    def roll_angle(self, t: np.ndarray) -> np.ndarray:
        return self.roll[0] * np.sin(3 * t + self.roll[1])


def _random_loop(scene: Scene, rng: np.random.Generator) -> _Loop:
    size = scene.room_size
    half = size[:2] / 2 - WALL_CLEARANCE
    return _Loop(
        centre=size[:2] / 2 + rng.uniform(-0.1, 0.1, 2) * size[:2],
        radii=rng.uniform(0.35, 0.85, 2) * half,
        wobble=np.stack([rng.uniform(0.0, 0.08, 2), rng.uniform(0, 2 * math.pi, 2)], axis=1),
        height=rng.uniform(HEIGHT_RANGE[0] + 0.08, HEIGHT_RANGE[1] - 0.08),
        height_wobble=(rng.uniform(0.0, 0.08), rng.uniform(0, 2 * math.pi)),
        target_height=rng.uniform(0.5, 0.9),
        target_gain=rng.uniform(0.5, 1.5),
        target_wobble=np.array([0.2, 0.2, 0.1]),
        roll=(math.radians(rng.uniform(0.0, 5.0)), rng.uniform(0, 2 * math.pi)),
        start=rng.uniform(0, 2 * math.pi),
        direction=int(rng.choice([-1, 1])),
    )


def _loop_is_free(loop: _Loop, scene: Scene) -> bool:
    """The whole loop stays inside the room, clear of walls and boxes, and never looks straight down."""
    t = np.linspace(0, 2 * math.pi, PATH_SAMPLES, endpoint=False)
    eye = loop.position(t)
    lo, hi = np.full(3, WALL_CLEARANCE), scene.room_size - WALL_CLEARANCE
    if np.any(eye < lo) or np.any(eye > hi):
        return False
    for box in scene.boxes:
        local = (eye - box[:3]) @ _rot_z(box[6])
        near = np.all(np.abs(local) <= box[3:6] / 2 + OBJECT_CLEARANCE, axis=1)
        if near.any():
            return False
    horizontal = np.linalg.norm((loop.look_target(t) - eye)[:, :2], axis=1)
    return bool(horizontal.min() > MIN_LOOK_DISTANCE)


def rigid_inverse(transform: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rotation + translation, exact (no general matrix inverse)."""
    inverse = np.eye(4)
    inverse[:3, :3] = transform[:3, :3].T
    inverse[:3, 3] = -transform[:3, :3].T @ transform[:3, 3]
    return inverse


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def camera_trajectory(scene: Scene, num_frames: int, seed: int = 0) -> np.ndarray:
    """(F, 4, 4) camera-to-world poses (OpenCV axes) equally spaced along one smooth loop in the room."""
    from selfsup_pcd.render.cameras import look_at

    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    rng = np.random.default_rng([seed, scene.seed, 0x5E9])
    for _ in range(PATH_TRIES):
        loop = _random_loop(scene, rng)
        if _loop_is_free(loop, scene):
            break
    else:
        raise RuntimeError(
            f"no free camera loop found in scene seed {scene.seed} (room {scene.room_size.round(2)} m, "
            f"{len(scene.objects)} objects) after {PATH_TRIES} tries"
        )
    t = loop.start + loop.direction * 2 * math.pi * np.arange(num_frames) / num_frames
    eyes, targets, rolls = loop.position(t), loop.look_target(t), loop.roll_angle(t)
    poses = np.empty((num_frames, 4, 4))
    for i in range(num_frames):
        world_to_cam = look_at(eyes[i], targets[i], up=(0.0, 0.0, 1.0))
        roll = np.eye(4)
        roll[:3, :3] = _rot_z(rolls[i])  # about the optical axis (camera z)
        poses[i] = rigid_inverse(roll @ world_to_cam)
    return poses


def depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """Metric depth to uint16 millimetres; 0 (nothing hit) and depths beyond 65.535 m become 0 (invalid)."""
    mm = np.round(np.asarray(depth_m, dtype=np.float64) * 1000.0)
    mm[(mm <= 0) | (mm > MAX_DEPTH_MM) | ~np.isfinite(mm)] = 0
    return mm.astype(np.uint16)


def make_sequence(
    scene: Scene,
    num_frames: int,
    width: int = 640,
    height: int = 480,
    fov_deg: float = 60.0,
    seed: int = 0,
) -> Sequence:
    """Renders ``num_frames`` RGB-D frames of ``scene`` along ``camera_trajectory`` (``fov_deg`` across the width)."""
    from selfsup_pcd.render.cameras import Camera, intrinsics
    from selfsup_pcd.render.renderer import shared_renderer

    poses = camera_trajectory(scene, num_frames, seed)
    K = intrinsics(fov_deg, width, height)
    cameras = [Camera(K, rigid_inverse(pose), width, height) for pose in poses]
    result = shared_renderer(width, height).render_mesh(scene.mesh, cameras, colors=True)
    return Sequence(color=result.rgb, depth_mm=depth_to_mm(result.depth), poses=poses, K=K)


def backproject(depth_mm: np.ndarray, K: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(P, 3) world points of the valid pixels of one depth frame, as STRL builds its views.

    Pixel ``(row, col)`` is sampled at its centre ``(col + 0.5, row + 0.5)`` (the renderer's convention);
    ScanNet's own code uses integer pixel coordinates, half a pixel off, which does not matter there.
    """
    rows, cols = np.nonzero(depth_mm)
    z = depth_mm[rows, cols].astype(np.float64) / 1000.0
    x = (cols + 0.5 - K[0, 2]) * z / K[0, 0]
    y = (rows + 0.5 - K[1, 2]) * z / K[1, 1]
    cam = np.stack([x, y, z], axis=1)
    return cam @ pose[:3, :3].T + pose[:3, 3]
