"""Pinhole cameras in the OpenCV convention and the camera rigs used to render shapes.

Convention (used everywhere in ``selfsup_pcd.render``): camera axes x right, y down, z forward; a world
point ``X`` maps to camera coordinates ``world_to_cam @ [X, 1]`` and to continuous pixel coordinates
``(u, v) = (K @ X_cam)[:2] / z``, with ``u`` along the image width (column) and ``v`` along the height (row).
Pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``, so its centre is at ``(col + 0.5, row + 0.5)``
and a point falls in pixel ``(floor(v), floor(u))``. A principal point of ``(W / 2, H / 2)`` is the image
centre. The renderer reproduces exactly this mapping (see ``renderer.py``).

Rigs look at the origin of a shape normalised to the unit sphere; the world is y-up like ModelNet40 and
the procedural shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RIGS = ("ring", "sphere", "dodecahedron")
DEFAULT_DISTANCE = 2.5
DEFAULT_UP = (0.0, 1.0, 0.0)


@dataclass
class Camera:
    """Intrinsics ``K`` (3x3), extrinsics ``world_to_cam`` (4x4, OpenCV) and image size in pixels."""

    K: np.ndarray
    world_to_cam: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64)
        self.world_to_cam = np.asarray(self.world_to_cam, dtype=np.float64)
        if self.K.shape != (3, 3) or self.world_to_cam.shape != (4, 4):
            raise ValueError(f"Camera needs K (3, 3) and world_to_cam (4, 4), got {self.K.shape} and "
                             f"{self.world_to_cam.shape}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    @property
    def cam_to_world(self) -> np.ndarray:
        """Inverse of ``world_to_cam`` (rigid, so computed exactly from R and t)."""
        return rigid_inverse(self.world_to_cam)

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates."""
        return self.cam_to_world[:3, 3]


def rigid_inverse(transform: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rotation + translation."""
    rotation, translation = transform[:3, :3], transform[:3, 3]
    inverse = np.eye(4)
    inverse[:3, :3] = rotation.T
    inverse[:3, 3] = -rotation.T @ translation
    return inverse


def look_at(eye: np.ndarray, target: np.ndarray = (0.0, 0.0, 0.0), up: np.ndarray = DEFAULT_UP) -> np.ndarray:
    """``world_to_cam`` (OpenCV) of a camera at ``eye`` looking at ``target``, ``up`` pointing up in the image.

    When the viewing direction is parallel to ``up`` (a camera above a pole), another world axis is used
    as up so the rig stays well defined.
    """
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    forward = target - eye
    norm = np.linalg.norm(forward)
    if norm < 1e-12:
        raise ValueError(f"look_at: eye {eye} and target {target} coincide")
    forward /= norm
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6 * max(np.linalg.norm(up), 1e-12):
        fallback = np.eye(3)[np.argmin(np.abs(forward))]
        right = np.cross(forward, fallback)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    world_to_cam = np.eye(4)
    world_to_cam[:3, :3] = np.stack([right, down, forward])
    world_to_cam[:3, 3] = -world_to_cam[:3, :3] @ eye
    return world_to_cam


def intrinsics(fov_deg: float, width: int, height: int) -> np.ndarray:
    """K with square pixels, principal point at the image centre and ``fov_deg`` across the larger side."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    focal = max(width, height) / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def fov_filling_sphere(distance: float, radius: float = 1.0) -> float:
    """Field of view (degrees) in which a sphere of ``radius`` at ``distance`` exactly touches the image edges."""
    if distance <= radius:
        raise ValueError(f"the camera (distance {distance}) must be outside the sphere (radius {radius})")
    return math.degrees(2.0 * math.asin(radius / distance))


def _size(resolution: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(resolution, int | np.integer):
        return int(resolution), int(resolution)
    width, height = resolution
    return int(width), int(height)


def cameras_at(eyes: np.ndarray, fov_deg: float | None = None, resolution: int | tuple[int, int] = 32,
               distance: float = DEFAULT_DISTANCE, target: np.ndarray = (0.0, 0.0, 0.0),
               up: np.ndarray = DEFAULT_UP) -> list[Camera]:
    """One camera per row of ``eyes`` (unit directions, scaled by ``distance``) looking at ``target``.

    ``fov_deg=None`` picks the field of view in which the unit sphere fills the frame at ``distance``.
    """
    width, height = _size(resolution)
    fov = fov_filling_sphere(distance) if fov_deg is None else float(fov_deg)
    K = intrinsics(fov, width, height)
    target = np.asarray(target, dtype=np.float64)
    return [Camera(K.copy(), look_at(target + distance * np.asarray(e), target, up), width, height)
            for e in np.asarray(eyes, dtype=np.float64)]


def ring_directions(num_views: int = 12, elevation_deg: float = 30.0) -> np.ndarray:
    """Unit directions at azimuths 0, 360/n, ... (from +z towards +x) and a common elevation above y = 0."""
    azimuth = np.radians(np.arange(num_views) * 360.0 / num_views)
    elevation = math.radians(elevation_deg)
    return np.stack([math.cos(elevation) * np.sin(azimuth), np.full(num_views, math.sin(elevation)),
                     math.cos(elevation) * np.cos(azimuth)], axis=1)


def fibonacci_directions(num_views: int) -> np.ndarray:
    """``num_views`` nearly uniform unit directions (Fibonacci sphere, y from top to bottom, no pole)."""
    i = np.arange(num_views) + 0.5
    y = 1.0 - 2.0 * i / num_views
    radius = np.sqrt(1.0 - y**2)
    phi = i * math.pi * (3.0 - math.sqrt(5.0))  # golden angle
    return np.stack([radius * np.sin(phi), y, radius * np.cos(phi)], axis=1)


def dodecahedron_directions() -> np.ndarray:
    """The 20 vertices of a regular dodecahedron, as unit directions."""
    phi = (1.0 + math.sqrt(5.0)) / 2.0
    cube = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    rest = []
    for a in (-1, 1):
        for b in (-1, 1):
            rest += [(0.0, a / phi, b * phi), (a / phi, b * phi, 0.0), (a * phi, 0.0, b / phi)]
    vertices = np.array(cube + rest, dtype=np.float64)
    return vertices / np.linalg.norm(vertices, axis=1, keepdims=True)


def ring_rig(num_views: int = 12, elevation_deg: float = 30.0, distance: float = DEFAULT_DISTANCE,
             fov_deg: float | None = None, resolution: int | tuple[int, int] = 32, **kw) -> list[Camera]:
    """MVCNN-style ring (spec §2): azimuth 0, 30, ..., 330 degrees at ``elevation_deg``, looking at the origin."""
    return cameras_at(ring_directions(num_views, elevation_deg), fov_deg, resolution, distance, **kw)


def sphere_rig(num_views: int = 20, distance: float = DEFAULT_DISTANCE, fov_deg: float | None = None,
               resolution: int | tuple[int, int] = 32, **kw) -> list[Camera]:
    """Cameras spread evenly over the sphere (Fibonacci lattice), looking at the origin."""
    return cameras_at(fibonacci_directions(num_views), fov_deg, resolution, distance, **kw)


def dodecahedron_rig(distance: float = DEFAULT_DISTANCE, fov_deg: float | None = None,
                     resolution: int | tuple[int, int] = 32, **kw) -> list[Camera]:
    """20 cameras on the vertices of a dodecahedron (MVCNN's second set-up), looking at the origin."""
    return cameras_at(dodecahedron_directions(), fov_deg, resolution, distance, **kw)


def make_rig(kind: str, **kw) -> list[Camera]:
    """The rig ``kind`` (``ring``, ``sphere`` or ``dodecahedron``) built with the keyword arguments it takes.

    ``num_views`` must be 20 (or absent) for the dodecahedron and ``elevation_deg`` only applies to the ring.
    """
    if kind == "ring":
        return ring_rig(**kw)
    if kind == "sphere":
        kw.pop("elevation_deg", None)
        return sphere_rig(**kw)
    if kind == "dodecahedron":
        kw.pop("elevation_deg", None)
        num_views = kw.pop("num_views", 20)
        if num_views != 20:
            raise ValueError(f"the dodecahedron rig has 20 views, got num_views={num_views}")
        return dodecahedron_rig(**kw)
    raise ValueError(f"unknown rig {kind!r}; expected one of {RIGS}")
