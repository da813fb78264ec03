"""ProceduralShapes: a small classification dataset the project generates itself.

Real datasets are large and licensed for research only, so tests, smoke runs and rendering checks use
these meshes instead. Every class is a parametric assembly of trimesh primitives whose part sizes vary
per shape; a smooth random deformation (taper, twist, bend, low-frequency displacement), an anisotropic
scale and a random heading then make instances of one class differ while keeping the class recognisable.
Everything is a pure function of ``(class_id, seed)``, so a shape can be rebuilt (e.g. to render it)
from its seed alone. Shapes are y-up, like ModelNet40 (whose augmentations rotate about y).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import trimesh
from trimesh.creation import annulus, box, capsule, cone, cylinder, icosphere, torus

Parts = list[trimesh.Trimesh]
Rng = np.random.Generator

# Edges are split down to this length before deforming, so bends and twists show on flat faces too.
_MAX_EDGE = 0.12


def _at(mesh: trimesh.Trimesh, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> trimesh.Trimesh:
    mesh.apply_translation([x, y, z])
    return mesh


def _rot_x(angle: float) -> np.ndarray:
    return trimesh.transformations.rotation_matrix(angle, [1, 0, 0])


def _rot_y(angle: float) -> np.ndarray:
    return trimesh.transformations.rotation_matrix(angle, [0, 1, 0])


# -- class builders: z-up, roughly within [-0.7, 0.7]^3 -----------------------------------------------
def _box(rng: Rng) -> Parts:
    return [box(extents=[1.0, rng.uniform(0.55, 1.0), rng.uniform(0.35, 0.9)])]


def _sphere(rng: Rng) -> Parts:
    return [icosphere(subdivisions=3, radius=0.5)]


def _cylinder(rng: Rng) -> Parts:
    return [cylinder(radius=rng.uniform(0.22, 0.38), height=rng.uniform(0.9, 1.3), sections=24)]


def _cone(rng: Rng) -> Parts:
    return [_at(cone(radius=rng.uniform(0.3, 0.5), height=rng.uniform(0.9, 1.3), sections=24), z=-0.5)]


def _capsule(rng: Rng) -> Parts:
    return [capsule(height=rng.uniform(0.5, 0.9), radius=rng.uniform(0.2, 0.3), count=[16, 16])]


def _torus(rng: Rng) -> Parts:
    return [torus(major_radius=0.5, minor_radius=rng.uniform(0.1, 0.2), major_sections=32, minor_sections=12)]


def _legs(rng: Rng, half_x: float, half_y: float, height: float, thick: float) -> Parts:
    inset = rng.uniform(0.0, 0.08)
    return [
        _at(
            box(extents=[thick, thick, height]),
            sx * (half_x - inset - thick / 2),
            sy * (half_y - inset - thick / 2),
            height / 2,
        )
        for sx in (-1, 1)
        for sy in (-1, 1)
    ]


def _table(rng: Rng) -> Parts:
    length, width = rng.uniform(1.0, 1.4), rng.uniform(0.6, 1.0)
    height, top = rng.uniform(0.55, 0.85), rng.uniform(0.04, 0.08)
    legs = _legs(rng, length / 2, width / 2, height, rng.uniform(0.05, 0.09))
    return [_at(box(extents=[length, width, top]), z=height + top / 2), *legs]


def _chair(rng: Rng) -> Parts:
    side, seat_h, seat_t = rng.uniform(0.45, 0.6), rng.uniform(0.4, 0.5), rng.uniform(0.04, 0.07)
    back_h, back_t = rng.uniform(0.45, 0.65), rng.uniform(0.04, 0.07)
    legs = _legs(rng, side / 2, side / 2, seat_h, rng.uniform(0.04, 0.07))
    seat = _at(box(extents=[side, side, seat_t]), z=seat_h + seat_t / 2)
    back = _at(box(extents=[back_t, side, back_h]), x=-side / 2 + back_t / 2, z=seat_h + seat_t + back_h / 2)
    return [seat, back, *legs]


def _mug(rng: Rng) -> Parts:
    r_out, height = rng.uniform(0.28, 0.38), rng.uniform(0.7, 1.0)
    r_in = r_out - rng.uniform(0.04, 0.07)
    wall = annulus(r_min=r_in, r_max=r_out, height=height, sections=24)
    bottom = _at(cylinder(radius=r_in, height=0.05, sections=24), z=-height / 2 + 0.025)
    handle = torus(major_radius=rng.uniform(0.15, 0.22), minor_radius=0.035, major_sections=16, minor_sections=8)
    handle.apply_transform(_rot_x(np.pi / 2))
    return [wall, bottom, _at(handle, x=r_out, z=rng.uniform(-0.1, 0.1))]


def _stairs(rng: Rng) -> Parts:
    steps, width = int(rng.integers(3, 6)), rng.uniform(0.5, 0.9)
    depth, rise = 1.2 / steps, rng.uniform(0.8, 1.2) / steps
    return [
        _at(box(extents=[depth, width, rise * (i + 1)]), x=-0.6 + depth * (i + 0.5), z=rise * (i + 1) / 2)
        for i in range(steps)
    ]


def _lamp(rng: Rng) -> Parts:
    pole_h = rng.uniform(0.7, 1.0)
    base = cylinder(radius=rng.uniform(0.18, 0.28), height=0.05, sections=24)
    pole = _at(cylinder(radius=rng.uniform(0.02, 0.035), height=pole_h, sections=12), z=pole_h / 2)
    shade_h = rng.uniform(0.25, 0.4)
    shade = cone(radius=rng.uniform(0.22, 0.35), height=shade_h, sections=24)
    return [base, pole, _at(shade, z=pole_h - shade_h * 0.6)]


def _dumbbell(rng: Rng) -> Parts:
    half, bell = rng.uniform(0.3, 0.5), rng.uniform(0.14, 0.24)
    bar = cylinder(radius=rng.uniform(0.04, 0.07), height=2 * half, sections=12, transform=_rot_y(np.pi / 2))
    return [
        bar,
        _at(icosphere(subdivisions=2, radius=bell), x=-half),
        _at(icosphere(subdivisions=2, radius=bell), x=half),
    ]


_BUILDERS: dict[str, Callable[[Rng], Parts]] = {
    "box": _box,
    "sphere": _sphere,
    "cylinder": _cylinder,
    "cone": _cone,
    "capsule": _capsule,
    "torus": _torus,
    "table": _table,
    "chair": _chair,
    "mug": _mug,
    "stairs": _stairs,
    "lamp": _lamp,
    "dumbbell": _dumbbell,
}
CLASS_NAMES: list[str] = list(_BUILDERS)


# -- shape variation ------------------------------------------------------------------------------
def _deform(vertices: np.ndarray, rng: Rng) -> np.ndarray:
    """Smooth non-rigid deformation; smooth so the part structure that defines the class survives."""
    v = vertices - (vertices.min(0) + vertices.max(0)) / 2
    h = v[:, 2] / max(np.abs(v[:, 2]).max(), 1e-6)  # height in [-1, 1]
    taper = 1.0 + rng.uniform(-0.25, 0.25) * h
    v[:, :2] *= taper[:, None]
    twist = rng.uniform(-0.5, 0.5) * h
    cos, sin = np.cos(twist), np.sin(twist)
    v[:, :2] = np.stack([cos * v[:, 0] - sin * v[:, 1], sin * v[:, 0] + cos * v[:, 1]], axis=1)
    bend_dir = rng.uniform(0, 2 * np.pi)
    bend = rng.uniform(-0.15, 0.15) * h**2
    v[:, 0] += bend * np.cos(bend_dir)
    v[:, 1] += bend * np.sin(bend_dir)
    for _ in range(3):  # low-frequency displacement field
        freq = rng.normal(size=3) * 1.5
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        amp = rng.uniform(0.01, 0.035)
        v += amp * np.sin(v @ freq + rng.uniform(0, 2 * np.pi))[:, None] * direction
    return v


def _orientation(rng: Rng) -> np.ndarray:
    """Random heading about the up axis plus a small tilt, then z-up -> y-up."""
    yaw = trimesh.transformations.rotation_matrix(rng.uniform(0, 2 * np.pi), [0, 0, 1])[:3, :3]
    tilt_axis = np.array([*rng.normal(size=2), 0.0])
    tilt = trimesh.transformations.rotation_matrix(rng.uniform(0, 0.2), tilt_axis)[:3, :3]
    z_to_y = _rot_x(-np.pi / 2)[:3, :3]
    return z_to_y @ tilt @ yaw


def make_mesh(class_id: int, seed: int) -> trimesh.Trimesh:
    """One shape of class ``class_id``: a pure function of ``(class_id, seed)``, centred on its bounds."""
    if not 0 <= class_id < len(CLASS_NAMES):
        raise ValueError(f"class_id must be in [0, {len(CLASS_NAMES)}), got {class_id}")
    rng = np.random.default_rng([class_id, seed])
    parts = _BUILDERS[CLASS_NAMES[class_id]](rng)
    merged = trimesh.util.concatenate(parts)
    vertices, faces = trimesh.remesh.subdivide_to_size(merged.vertices, merged.faces, max_edge=_MAX_EDGE, max_iter=8)
    vertices = _deform(vertices, rng)
    vertices = vertices * rng.uniform(0.75, 1.25, size=3)
    vertices = vertices @ _orientation(rng).T
    vertices -= (vertices.min(0) + vertices.max(0)) / 2
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


def sample_points(mesh: trimesh.Trimesh, num_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted surface samples and their (face) normals, both (num_points, 3) float32."""
    points, face_index = trimesh.sample.sample_surface(mesh, num_points, seed=np.random.default_rng(seed))
    normals = mesh.face_normals[face_index]
    return np.asarray(points, dtype=np.float32), np.asarray(normals, dtype=np.float32)
