"""S3DIS ``Stanford3dDataset_v1.2_Aligned_Version``: one text file per room plus one per annotated object.

```
Stanford3dDataset_v1.2_Aligned_Version/
└── Area_1/
    └── office_1/
        ├── office_1.txt              every point of the room: "x y z r g b" (6 decimals, ints 0-255)
        └── Annotations/
            ├── ceiling_1.txt         the points of one object, same format
            ├── wall_1.txt, wall_2.txt, ...
            └── chair_1.txt, table_1.txt, clutter_1.txt, ...
```
Every point belongs to exactly one annotation; ``<class>_<i>`` numbers the objects of a class within
the room from 1. The 13 class names are S3DIS's (``downstream.md`` §5a); the PointNet/DGCNN block
builders (``indoor3d_util``) read the ``Annotations`` folder and take the class from the file name.
Room names are ``<type>_<n>`` (``office_1``, ``conferenceRoom_1``, ...).

Class mapping from procedural scenes (ours -> S3DIS): floor, wall, ceiling, table, chair and sofa map to
themselves; desk -> table; bookshelf and cabinet -> bookcase; everything else (bed, night_stand, lamp,
toilet, bathtub, box) -> clutter. beam, column, window, door and board do not occur.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selfsup_pcd.data.synthetic.scenes import SCENE_CLASSES
from selfsup_pcd.data.writers.atomic import atomic_dir

FOLDER = "Stanford3dDataset_v1.2_Aligned_Version"
S3DIS_CLASSES = ["ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa", "bookcase",
                 "board", "clutter"]
ROOM_TYPES = ["office", "conferenceRoom", "hallway", "lounge", "pantry", "storage", "copyRoom", "WC", "openspace",
              "lobby"]
S3DIS_CLASS_MAP = {
    "floor": "floor", "wall": "wall", "ceiling": "ceiling", "table": "table", "desk": "table", "chair": "chair",
    "sofa": "sofa", "bookshelf": "bookcase", "cabinet": "bookcase",
}  # fmt: skip  (anything else -> clutter)


def s3dis_labels(semantic: np.ndarray) -> np.ndarray:
    """S3DIS class index (into ``S3DIS_CLASSES``) of each of our semantic ids."""
    table = np.array([S3DIS_CLASSES.index(S3DIS_CLASS_MAP.get(name, "clutter")) for name in SCENE_CLASSES])
    return table[np.asarray(semantic)]


def _rows(xyz: np.ndarray, rgb: np.ndarray) -> str:
    lines = [f"{x:.6f} {y:.6f} {z:.6f} {r:d} {g:d} {b:d}" for (x, y, z), (r, g, b) in
             zip(np.asarray(xyz, dtype=np.float64).tolist(), np.asarray(rgb, dtype=np.int64).tolist())]
    return "\n".join(lines) + ("\n" if lines else "")


def write_s3dis_room(
    root: str | Path,
    area: int,
    room: str,
    xyz: np.ndarray,
    rgb: np.ndarray,
    labels: np.ndarray,
    instance: np.ndarray,
) -> Path:
    """Writes ``root/Stanford3dDataset_v1.2_Aligned_Version/Area_<area>/<room>/`` atomically; returns it.

    ``labels`` index ``S3DIS_CLASSES``; ``instance`` separates objects (any ids: each distinct
    ``(label, instance)`` pair becomes one annotation file, numbered per class in order of first point).
    """
    xyz, rgb = np.asarray(xyz), np.asarray(rgb)
    labels, instance = np.asarray(labels), np.asarray(instance)
    n = len(xyz)
    if xyz.shape != (n, 3) or rgb.shape != (n, 3) or labels.shape != (n,) or instance.shape != (n,):
        raise ValueError(f"need xyz (N,3), rgb (N,3), labels (N,), instance (N,); got {xyz.shape}, {rgb.shape}, "
                         f"{labels.shape}, {instance.shape}")
    if n and (labels.min() < 0 or labels.max() >= len(S3DIS_CLASSES)):
        raise ValueError(f"labels must index the {len(S3DIS_CLASSES)} S3DIS classes")
    if n and (rgb.min() < 0 or rgb.max() > 255):
        raise ValueError("rgb must be integers in 0..255")
    final = Path(root) / FOLDER / f"Area_{area}" / room
    with atomic_dir(final) as tmp:
        (tmp / f"{room}.txt").write_text(_rows(xyz, rgb), encoding="ascii")
        (tmp / "Annotations").mkdir()
        pairs, first = np.unique(np.stack([labels, instance], 1), axis=0, return_index=True)
        counters: dict[str, int] = {}
        for label, inst in pairs[np.argsort(first)]:
            name = S3DIS_CLASSES[int(label)]
            counters[name] = counters.get(name, 0) + 1
            mask = (labels == label) & (instance == inst)
            (tmp / "Annotations" / f"{name}_{counters[name]}.txt").write_text(_rows(xyz[mask], rgb[mask]),
                                                                              encoding="ascii")
    return final
