"""Procedural indoor scenes: a furnished room with per-point semantic and instance labels and 3D boxes.

Scene datasets (ScanNet, S3DIS, SUN RGB-D) are large and licensed for research only, so their readers,
the RGB-D pretraining pipeline and the detection/segmentation heads are tested on these rooms instead,
written to disk in the real layouts by ``selfsup_pcd.data.writers``. A scene is a pure function of its seed.

Frame: z-up, metres; the room spans ``[0, L] x [0, W] x [0, H]`` (floor at z = 0). The structure (floor,
four walls, ceiling) is triangulated on a regular grid so per-vertex labels and colours have some
resolution; furniture is built from primitives in a local frame (footprint centred on the origin, base at
z = 0, back towards local -y), turned by a yaw about z and set on the floor. Wall-hugging classes
(beds, bookshelves, ...) are placed with their back to a wall, which also keeps the tall ones out of the
middle of the room where the camera of ``sequences.py`` moves. Objects' footprints never overlap.

Every object has an oriented box ``(cx, cy, cz, dx, dy, dz, yaw)``: centre, full sizes along its local
x, y, z axes, yaw about z (counter-clockwise, radians). It is the local-frame bounding box of the object's
mesh, so it contains the object exactly and touches it on all six sides.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trimesh
from trimesh.creation import box, cylinder

from selfsup_pcd.data.synthetic import shapes

Rng = np.random.Generator
Parts = list[trimesh.Trimesh]

STRUCTURE_CLASSES = ["floor", "wall", "ceiling"]
FURNITURE_CLASSES = [
    "table", "chair", "sofa", "bed", "desk", "bookshelf", "cabinet", "night_stand", "lamp", "toilet",
    "bathtub", "box",
]  # fmt: skip
SCENE_CLASSES: list[str] = STRUCTURE_CLASSES + FURNITURE_CLASSES  # index = semantic id
FLOOR, WALL, CEILING = 0, 1, 2

ROOM_LENGTH = (4.0, 8.0)
ROOM_HEIGHT = (2.5, 3.0)
STRUCTURE_CELL = 0.25  # grid spacing of floor, walls and ceiling (m)
OBJECT_MAX_EDGE = 0.15  # furniture triangles are split down to this edge length (m)
CLEARANCE = 0.1  # minimum gap between two objects' footprints (m)
WALL_MARGIN = 0.02  # minimum gap between an object and a wall (m)
PLACEMENT_TRIES = 200

# Relative frequency of each furniture class and whether it stands against a wall.
_CLASS_WEIGHT = {
    "table": 1.5, "chair": 2.5, "sofa": 1.0, "bed": 0.8, "desk": 1.0, "bookshelf": 1.0, "cabinet": 1.0,
    "night_stand": 0.8, "lamp": 0.8, "toilet": 0.5, "bathtub": 0.4, "box": 1.5,
}  # fmt: skip
_AGAINST_WALL = {"bed", "bookshelf", "cabinet", "desk", "lamp", "toilet", "bathtub"}
_BASE_COLOUR = {
    "floor": (150, 120, 90), "wall": (215, 205, 185), "ceiling": (235, 235, 230), "table": (140, 90, 50),
    "chair": (60, 90, 150), "sofa": (130, 40, 50), "bed": (220, 220, 240), "desk": (170, 130, 80),
    "bookshelf": (110, 70, 40), "cabinet": (190, 180, 160), "night_stand": (120, 80, 60), "lamp": (240, 220, 120),
    "toilet": (245, 245, 245), "bathtub": (225, 235, 240), "box": (180, 150, 100),
}  # fmt: skip


@dataclass
class SceneObject:
    """One piece of furniture: its class, instance id (>= 1), mesh (world frame) and oriented box."""

    class_id: int
    instance_id: int
    mesh: trimesh.Trimesh
    box: np.ndarray  # (7,) cx, cy, cz, dx, dy, dz, yaw

    @property
    def class_name(self) -> str:
        return SCENE_CLASSES[self.class_id]


@dataclass
class Scene:
    """A furnished room. ``mesh`` holds everything (vertex colours); per-vertex labels index its vertices.

    ``vertex_part`` numbers the pieces: 0 floor, 1-4 walls (y = 0, x = L, y = W, x = 0), 5 ceiling, then
    ``5 + instance_id`` for the objects; writers use it where a dataset annotates each wall separately.
    """

    mesh: trimesh.Trimesh
    objects: list[SceneObject]
    room_size: np.ndarray  # (3,) L, W, H
    vertex_semantic: np.ndarray  # (V,) int64, index into SCENE_CLASSES
    vertex_instance: np.ndarray  # (V,) int64, 0 = structure
    vertex_part: np.ndarray  # (V,) int64
    seed: int

    @property
    def boxes(self) -> np.ndarray:
        """(K, 7) oriented boxes of the objects, in instance order."""
        return np.array([o.box for o in self.objects], dtype=np.float64).reshape(-1, 7)


@dataclass
class ScenePoints:
    """Surface samples of a scene with their colour and labels."""

    xyz: np.ndarray  # (N, 3) float32
    rgb: np.ndarray  # (N, 3) uint8
    semantic: np.ndarray  # (N,) int64
    instance: np.ndarray  # (N,) int64, 0 = structure
    part: np.ndarray  # (N,) int64, see Scene.vertex_part


# -- geometry helpers -------------------------------------------------------------------------------
def _block(sx: float, sy: float, sz: float, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> trimesh.Trimesh:
    """Axis-aligned cuboid of size (sx, sy, sz) whose base centre is at (x, y, z)."""
    mesh = box(extents=[sx, sy, sz])
    mesh.apply_translation([x, y, z + sz / 2])
    return mesh


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def box_corners_2d(box7: np.ndarray) -> np.ndarray:
    """(4, 2) footprint corners of an oriented box (counter-clockwise)."""
    cx, cy, _, dx, dy, _, yaw = box7
    local = np.array([[-dx, -dy], [dx, -dy], [dx, dy], [-dx, dy]]) / 2
    return local @ _rot_z(yaw)[:2, :2].T + [cx, cy]


def footprints_overlap(a: np.ndarray, b: np.ndarray, gap: float = 0.0) -> bool:
    """Whether the footprints of boxes ``a`` and ``b`` come closer than ``gap`` (separating-axis test)."""
    ca, cb = box_corners_2d(a), box_corners_2d(b)
    for yaw in (a[6], b[6]):
        for axis in (np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])):
            pa, pb = ca @ axis, cb @ axis
            if pa.max() + gap <= pb.min() or pb.max() + gap <= pa.min():
                return False
    return True


def points_in_box(xyz: np.ndarray, box7: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """(N,) bool: which points lie inside the oriented box (inflated by ``tol``)."""
    local = (np.asarray(xyz, dtype=np.float64) - box7[:3]) @ _rot_z(box7[6])
    return np.all(np.abs(local) <= np.asarray(box7[3:6]) / 2 + tol, axis=1)


def _grid(origin: np.ndarray, u: np.ndarray, v: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """A rectangle ``origin + s u + t v`` triangulated on a grid; faces wound so that u x v is the normal."""
    nu = max(1, math.ceil(np.linalg.norm(u) / cell))
    nv = max(1, math.ceil(np.linalg.norm(v) / cell))
    s, t = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1), indexing="ij")
    vertices = origin + s.reshape(-1, 1) * u + t.reshape(-1, 1) * v
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return vertices, faces


def _structure(size: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(class id, vertices, faces) of floor, walls y=0, x=L, y=W, x=0, ceiling; normals point inwards."""
    L, W, H = size
    x, y, z = np.eye(3)
    o = np.zeros(3)
    return [
        (FLOOR, *_grid(o, L * x, W * y, STRUCTURE_CELL)),
        (WALL, *_grid(o, H * z, L * x, STRUCTURE_CELL)),
        (WALL, *_grid(L * x, H * z, W * y, STRUCTURE_CELL)),
        (WALL, *_grid(W * y, L * x, H * z, STRUCTURE_CELL)),
        (WALL, *_grid(o, W * y, H * z, STRUCTURE_CELL)),
        (CEILING, *_grid(H * z, W * y, L * x, STRUCTURE_CELL)),
    ]


# -- furniture builders: local frame, metres, back towards -y ------------------------------------------
def _sofa(rng: Rng) -> Parts:
    length, depth = rng.uniform(1.5, 2.4), rng.uniform(0.8, 1.0)
    seat_h, back_h, back_t = rng.uniform(0.38, 0.46), rng.uniform(0.75, 0.95), rng.uniform(0.15, 0.25)
    arm_w, arm_h = rng.uniform(0.12, 0.25), rng.uniform(0.55, 0.7)
    return [
        _block(length - 2 * arm_w, depth - back_t, seat_h, y=back_t / 2),
        _block(length, back_t, back_h, y=-depth / 2 + back_t / 2),
        _block(arm_w, depth, arm_h, x=-length / 2 + arm_w / 2),
        _block(arm_w, depth, arm_h, x=length / 2 - arm_w / 2),
    ]


def _bed(rng: Rng) -> Parts:
    width, length = rng.choice([0.9, 1.4, 1.6, 1.8]) + rng.uniform(0, 0.1), rng.uniform(1.95, 2.2)
    frame_h, mattress = rng.uniform(0.25, 0.4), rng.uniform(0.15, 0.25)
    head_h, head_t = rng.uniform(0.85, 1.2), 0.06
    pillow = _block(width * 0.8, 0.35, 0.12, y=-length / 2 + head_t + 0.25, z=frame_h + mattress)
    return [
        _block(width, length, frame_h),
        _block(width - 0.04, length - head_t - 0.02, mattress, y=head_t / 2, z=frame_h),
        _block(width, head_t, head_h, y=-length / 2 + head_t / 2),
        pillow,
    ]


def _desk(rng: Rng) -> Parts:
    length, depth, height = rng.uniform(1.1, 1.6), rng.uniform(0.6, 0.8), rng.uniform(0.72, 0.77)
    top_t, panel = 0.03, 0.03
    drawer_w = rng.uniform(0.35, 0.45)
    return [
        _block(length, depth, top_t, z=height - top_t),
        _block(drawer_w, depth - 0.02, height - top_t, x=length / 2 - drawer_w / 2),
        _block(panel, depth - 0.02, height - top_t, x=-length / 2 + panel / 2),
        _block(length - drawer_w - panel, panel, (height - top_t) * 0.6, y=-depth / 2 + 0.05,
               z=(height - top_t) * 0.4, x=-drawer_w / 2 + panel / 2),
    ]


def _bookshelf(rng: Rng) -> Parts:
    width, depth, height = rng.uniform(0.6, 1.2), rng.uniform(0.28, 0.4), rng.uniform(1.4, 2.1)
    t = 0.025
    parts = [
        _block(t, depth, height, x=-width / 2 + t / 2),
        _block(t, depth, height, x=width / 2 - t / 2),
        _block(width, t, height, y=-depth / 2 + t / 2),
        _block(width, depth, t, z=height - t),
    ]
    shelves = int(rng.integers(3, 6))
    for k in range(shelves):
        z = k * (height - t) / shelves
        parts.append(_block(width - 2 * t, depth - t, t, y=t / 2, z=z))
        # a row of books on each shelf
        x = -width / 2 + t
        while True:
            w = rng.uniform(0.02, 0.06)
            if x + w > width / 2 - t - 0.05:
                break
            h = rng.uniform(0.15, min(0.3, (height - t) / shelves - t - 0.02))
            d = rng.uniform(0.6, 0.9) * (depth - t)
            parts.append(_block(w, d, h, x=x + w / 2, y=-depth / 2 + t + d / 2, z=z + t))
            x += w + rng.uniform(0.0, 0.03)
    return parts


def _cabinet(rng: Rng) -> Parts:
    width, depth, height = rng.uniform(0.6, 1.2), rng.uniform(0.4, 0.6), rng.uniform(0.8, 1.9)
    door_t = 0.02
    parts = [_block(width, depth - door_t, height, y=-door_t / 2)]
    doors = 2 if width > 0.8 else 1
    door_w = width / doors
    for k in range(doors):
        x = -width / 2 + door_w * (k + 0.5)
        parts.append(_block(door_w - 0.01, door_t, height - 0.02, x=x, y=depth / 2 - door_t / 2, z=0.01))
    return parts


def _night_stand(rng: Rng) -> Parts:
    side, height = rng.uniform(0.4, 0.55), rng.uniform(0.45, 0.65)
    knob = cylinder(radius=0.015, height=0.03, sections=8, transform=trimesh.transformations.rotation_matrix(
        math.pi / 2, [1, 0, 0]))
    knob.apply_translation([0, side / 2 - 0.015, height * 0.7])
    return [_block(side, side - 0.03, height - 0.03, y=-0.015), _block(side + 0.02, side, 0.03, z=height - 0.03),
            knob]


def _toilet(rng: Rng) -> Parts:
    bowl_r, bowl_h = rng.uniform(0.17, 0.21), rng.uniform(0.38, 0.42)
    tank_w, tank_d, tank_h = rng.uniform(0.36, 0.44), rng.uniform(0.15, 0.2), rng.uniform(0.3, 0.4)
    bowl = cylinder(radius=bowl_r, height=bowl_h, sections=20)
    bowl.apply_translation([0, tank_d + bowl_r - 0.05, bowl_h / 2])
    seat = cylinder(radius=bowl_r + 0.02, height=0.03, sections=20)
    seat.apply_translation([0, tank_d + bowl_r - 0.05, bowl_h + 0.015])
    return [_block(tank_w, tank_d, tank_h, y=tank_d / 2, z=bowl_h), bowl, seat,
            _block(tank_w * 0.6, tank_d, bowl_h, y=tank_d / 2)]


def _bathtub(rng: Rng) -> Parts:
    length, width, height, t = rng.uniform(1.5, 1.8), rng.uniform(0.7, 0.8), rng.uniform(0.5, 0.6), 0.08
    return [
        _block(length, width, t),
        _block(length, t, height, y=-width / 2 + t / 2),
        _block(length, t, height, y=width / 2 - t / 2),
        _block(t, width - 2 * t, height, x=-length / 2 + t / 2),
        _block(t, width - 2 * t, height, x=length / 2 - t / 2),
    ]


def _boxes(rng: Rng) -> Parts:
    """Clutter: a small stack of cardboard boxes."""
    parts, z = [], 0.0
    sx, sy = rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6)
    for _ in range(int(rng.integers(1, 4))):
        sz = rng.uniform(0.2, 0.4)
        parts.append(_block(sx, sy, sz, z=z))
        z += sz
        sx, sy = sx * rng.uniform(0.6, 0.95), sy * rng.uniform(0.6, 0.95)
    return parts


def _lamp(rng: Rng) -> Parts:
    """ProceduralShapes' lamp, stretched into a floor lamp."""
    scale = np.diag([1.2, 1.2, rng.uniform(1.4, 1.7), 1.0])
    return [p.apply_transform(scale) for p in shapes._lamp(rng)]


# table and chair come from ProceduralShapes (their builders are z-up and already in metres).
_BUILDERS: dict[str, Callable[[Rng], Parts]] = {
    "table": shapes._table, "chair": shapes._chair, "sofa": _sofa, "bed": _bed, "desk": _desk,
    "bookshelf": _bookshelf, "cabinet": _cabinet, "night_stand": _night_stand, "lamp": _lamp,
    "toilet": _toilet, "bathtub": _bathtub, "box": _boxes,
}  # fmt: skip


def make_furniture(class_name: str, rng: Rng) -> trimesh.Trimesh:
    """One piece of furniture in its local frame: footprint centred on the origin, base at z = 0."""
    merged = trimesh.util.concatenate(_BUILDERS[class_name](rng))
    vertices, faces = trimesh.remesh.subdivide_to_size(merged.vertices, merged.faces, max_edge=OBJECT_MAX_EDGE,
                                                       max_iter=10)
    lo, hi = vertices.min(0), vertices.max(0)
    vertices = vertices - [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]]
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


# -- placement ------------------------------------------------------------------------------------
def _inside_room(box7: np.ndarray, size: np.ndarray, margin: float) -> bool:
    corners = box_corners_2d(box7)
    return bool(np.all(corners >= margin) and np.all(corners <= size[:2] - margin) and box7[5] < size[2])


def _propose(class_name: str, extents: np.ndarray, size: np.ndarray, rng: Rng) -> np.ndarray:
    """A candidate box for an object of local ``extents``: against a wall, or anywhere with random yaw."""
    dx, dy, dz = extents
    if class_name in _AGAINST_WALL:
        # walls as (start point, direction along the wall, inward normal, length)
        L, W = size[:2]
        walls = [((0, 0), (1, 0), (0, 1), L), ((L, 0), (0, 1), (-1, 0), W),
                 ((L, W), (-1, 0), (0, -1), L), ((0, W), (0, -1), (1, 0), W)]
        start, along, normal, length = (np.asarray(w, dtype=np.float64) for w in walls[rng.integers(4)])
        room = dx / 2 + 0.05
        s = rng.uniform(room, max(room, float(length) - room))
        centre = start + s * along + (dy / 2 + rng.uniform(WALL_MARGIN, 0.08)) * normal
        yaw = math.atan2(normal[1], normal[0]) - math.pi / 2  # local +y along the inward normal
    else:
        centre = rng.uniform([0, 0], size[:2])
        yaw = rng.uniform(-math.pi, math.pi)
    yaw = math.remainder(yaw, 2 * math.pi)
    return np.array([centre[0], centre[1], dz / 2, dx, dy, dz, yaw])


def _place(mesh: trimesh.Trimesh, box7: np.ndarray) -> trimesh.Trimesh:
    transform = np.eye(4)
    transform[:3, :3] = _rot_z(box7[6])
    transform[:2, 3] = box7[:2]
    return mesh.copy().apply_transform(transform)


def _colours(class_name: str, count: int, rng: Rng) -> np.ndarray:
    """RGBA per vertex: the class colour, shifted per instance, with a little per-vertex noise."""
    base = np.asarray(_BASE_COLOUR[class_name], dtype=np.float64) + rng.normal(0, 10) + rng.normal(0, 4, 3)
    rgb = base + rng.normal(0, 4, (count, 1)) + rng.normal(0, 1.5, (count, 3))
    rgba = np.full((count, 4), 255, dtype=np.uint8)
    rgba[:, :3] = np.clip(np.round(rgb), 0, 255)
    return rgba


def make_scene(seed: int, num_objects: tuple[int, int] = (4, 10)) -> Scene:
    """A furnished room, a pure function of ``seed``.

    The number of objects is drawn from ``num_objects`` (inclusive); an object that finds no free spot
    after ``PLACEMENT_TRIES`` candidates is left out, so crowded small rooms can hold fewer.
    """
    low, high = num_objects
    if not 0 <= low <= high:
        raise ValueError(f"num_objects must be (low, high) with 0 <= low <= high, got {num_objects}")
    rng = np.random.default_rng([seed, 0x5CE9E])
    size = np.array([*rng.uniform(*ROOM_LENGTH, size=2), rng.uniform(*ROOM_HEIGHT)])

    names = list(_CLASS_WEIGHT)
    weights = np.array([_CLASS_WEIGHT[n] for n in names])
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(low, high + 1))):
        class_name = names[rng.choice(len(names), p=weights / weights.sum())]
        local = make_furniture(class_name, rng)
        extents = local.vertices.max(0) - local.vertices.min(0)
        for _ in range(PLACEMENT_TRIES):
            box7 = _propose(class_name, extents, size, rng)
            if _inside_room(box7, size, WALL_MARGIN) and not any(
                footprints_overlap(box7, o.box, CLEARANCE) for o in objects
            ):
                objects.append(SceneObject(SCENE_CLASSES.index(class_name), len(objects) + 1,
                                           _place(local, box7), box7))
                break

    vertices, faces, colours, semantic, instance, part = [], [], [], [], [], []
    offset = 0

    def add(v: np.ndarray, f: np.ndarray, class_id: int, inst: int, piece: int) -> None:
        nonlocal offset
        vertices.append(v)
        faces.append(f + offset)
        colours.append(_colours(SCENE_CLASSES[class_id], len(v), rng))
        semantic.append(np.full(len(v), class_id, dtype=np.int64))
        instance.append(np.full(len(v), inst, dtype=np.int64))
        part.append(np.full(len(v), piece, dtype=np.int64))
        offset += len(v)

    for piece, (class_id, v, f) in enumerate(_structure(size)):
        add(v, f, class_id, 0, piece)
    for obj in objects:
        add(np.asarray(obj.mesh.vertices), np.asarray(obj.mesh.faces), obj.class_id, obj.instance_id,
            5 + obj.instance_id)
        obj.mesh.visual.vertex_colors = colours[-1]
    mesh = trimesh.Trimesh(vertices=np.concatenate(vertices), faces=np.concatenate(faces),
                           vertex_colors=np.concatenate(colours), process=False)
    return Scene(mesh, objects, size, np.concatenate(semantic), np.concatenate(instance), np.concatenate(part), seed)


# -- sampling -------------------------------------------------------------------------------------
def sample_scene(scene: Scene, num_points: int, seed: int) -> ScenePoints:
    """Area-weighted surface samples with interpolated vertex colours and the labels of their triangle."""
    mesh = scene.mesh
    xyz, face_index = trimesh.sample.sample_surface(mesh, num_points, seed=np.random.default_rng(seed))
    corners = np.asarray(mesh.faces)[face_index]
    bary = trimesh.triangles.points_to_barycentric(np.asarray(mesh.vertices)[corners], xyz)
    bary = np.clip(bary, 0.0, 1.0)
    bary /= bary.sum(axis=1, keepdims=True)
    vertex_rgb = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(np.float64)
    rgb = np.einsum("nk,nkc->nc", bary, vertex_rgb[corners])
    first = corners[:, 0]
    return ScenePoints(
        xyz=np.asarray(xyz, dtype=np.float32),
        rgb=np.clip(np.round(rgb), 0, 255).astype(np.uint8),
        semantic=scene.vertex_semantic[first],
        instance=scene.vertex_instance[first],
        part=scene.vertex_part[first],
    )


def sample_scene_points(
    scene: Scene, num_points: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(xyz (N,3) float32, rgb (N,3) uint8, semantic (N,), instance (N,))``; instance 0 = structure."""
    points = sample_scene(scene, num_points, seed)
    return points.xyz, points.rgb, points.semantic, points.instance
