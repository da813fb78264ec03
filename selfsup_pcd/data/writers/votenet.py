"""VoteNet's prepared detection data: ScanNet ``scannet_train_detection_data`` and SUN RGB-D ``*_votes_50k``.

```
scannet_train_detection_data/                    (VoteNet scannet/batch_load_scannet_data.py)
├── scene0000_00_vert.npy        (N, 6) float32: x, y, z, r, g, b (colour 0-255), N <= 50,000
├── scene0000_00_sem_label.npy   (N,) uint32 NYU40 id (0 = unannotated)
├── scene0000_00_ins_label.npy   (N,) uint32 instance id (0 = none)
└── scene0000_00_bbox.npy        (K, 7) float64: centre, full size (axis-aligned), NYU40 id

sunrgbd_pc_bbox_votes_50k_v1_train/              (VoteNet sunrgbd/sunrgbd_data.py; also _val, and _v2_)
├── 000001_pc.npz                key "pc": (N, 6) float64: x, y, z, r, g, b (colour 0-1), upright camera frame
├── 000001_bbox.npy              (K, 8) float64: centre, half sizes (l, w, h), heading angle, class 0-9
└── 000001_votes.npz             key "point_votes": (N, 10) float64: in-box mask, then 3 votes (dx, dy, dz)
```

Known (checked against VoteNet's extraction scripts): file names and keys; ScanNet boxes are the
axis-aligned bounds of each instance's points, kept only for the 18 detection classes
(``SCANNET_OBJ_CLASS_IDS``); ScanNet colours are 0-255, SUN RGB-D colours 0-1; SUN RGB-D sizes are
*half* sizes; SUN RGB-D's heading is measured from +x towards -y (clockwise seen from above: a box's
corners are ``rotz(-heading) @ corners + centre``), so heading = -yaw for our counter-clockwise yaw; a vote
is ``box centre - point`` for every point inside an object's oriented box; a point in one box repeats that
vote in all three slots, a second box overwrites slot 2, a third (and later ones) slot 3.
Recalled from the scripts rather than a data file: the dtypes (float32 vertices, uint32 labels, float64
boxes and votes), the 10 SUN RGB-D classes in ``SUNRGBD_CLASSES`` order, ``%06d`` sample ids.
The SUN RGB-D "upright depth" frame: origin at the camera, z up (gravity), y forward (the horizontal
viewing direction), x to the right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selfsup_pcd.data.writers.atomic import atomic_file

SCANNET_FOLDER = "scannet_train_detection_data"
SCANNET_OBJ_CLASS_IDS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)  # NYU40 ids
SCANNET_MAX_POINTS = 50_000
SUNRGBD_CLASSES = ["bed", "table", "sofa", "chair", "toilet", "desk", "dresser", "night_stand", "bookshelf",
                   "bathtub"]
SUNRGBD_POINTS = 50_000
# Procedural scene classes -> SUN RGB-D class; the others (floor, wall, ceiling, lamp, box) get no box.
SUNRGBD_CLASS_MAP = {
    "bed": "bed", "table": "table", "sofa": "sofa", "chair": "chair", "toilet": "toilet", "desk": "desk",
    "cabinet": "dresser", "night_stand": "night_stand", "bookshelf": "bookshelf", "bathtub": "bathtub",
}  # fmt: skip


def sunrgbd_folder(split: str, version: str = "v1") -> str:
    """``sunrgbd_pc_bbox_votes_50k_<version>_<split>``."""
    if split not in ("train", "val") or version not in ("v1", "v2"):
        raise ValueError(f"split must be train|val and version v1|v2, got {split!r}, {version!r}")
    return f"sunrgbd_pc_bbox_votes_50k_{version}_{split}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


# -- ScanNet ------------------------------------------------------------------------------------------
def scannet_instance_boxes(xyz: np.ndarray, semantic: np.ndarray, instance: np.ndarray,
                           class_ids: tuple[int, ...] = SCANNET_OBJ_CLASS_IDS) -> np.ndarray:
    """(K, 7) axis-aligned boxes of the instances (> 0) whose NYU40 class is in ``class_ids``, by instance id.

    As VoteNet: the bounds of the instance's points, labelled with the class of its first point.
    """
    boxes = []
    for inst in np.unique(instance[instance > 0]):
        mask = instance == inst
        label = int(semantic[np.argmax(mask)])
        if label not in class_ids:
            continue
        lo, hi = xyz[mask].min(0), xyz[mask].max(0)
        boxes.append([*((lo + hi) / 2), *(hi - lo), label])
    return np.array(boxes, dtype=np.float64).reshape(-1, 7)


def write_votenet_scannet(root: str | Path, scene_name: str, vert: np.ndarray, semantic: np.ndarray,
                          instance: np.ndarray, bbox: np.ndarray | None = None) -> Path:
    """Writes the four ``<scene>_*.npy`` files into ``root/scannet_train_detection_data``; returns that folder.

    ``vert`` (N, 6) xyz + rgb 0-255, ``semantic`` NYU40 ids, ``instance`` ids (0 = none); ``bbox`` defaults
    to ``scannet_instance_boxes`` of the points.
    """
    vert = np.asarray(vert, dtype=np.float32)
    n = len(vert)
    if vert.shape != (n, 6) or np.shape(semantic) != (n,) or np.shape(instance) != (n,):
        raise ValueError(f"need vert (N,6), semantic (N,), instance (N,); got {vert.shape}, "
                         f"{np.shape(semantic)}, {np.shape(instance)}")
    semantic, instance = np.asarray(semantic).astype(np.uint32), np.asarray(instance).astype(np.uint32)
    if bbox is None:
        bbox = scannet_instance_boxes(vert[:, :3], semantic, instance)
    bbox = np.asarray(bbox, dtype=np.float64).reshape(-1, 7)
    folder = Path(root) / SCANNET_FOLDER
    _save_npy(folder / f"{scene_name}_vert.npy", vert)
    _save_npy(folder / f"{scene_name}_sem_label.npy", semantic)
    _save_npy(folder / f"{scene_name}_ins_label.npy", instance)
    _save_npy(folder / f"{scene_name}_bbox.npy", bbox)
    return folder


# -- SUN RGB-D ----------------------------------------------------------------------------------------
def _rotz(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def sunrgbd_box(box7: np.ndarray, class_index: int) -> np.ndarray:
    """Our ``(cx, cy, cz, dx, dy, dz, yaw)`` (full sizes, counter-clockwise yaw) as a SUN RGB-D (8,) row."""
    box7 = np.asarray(box7, dtype=np.float64)
    return np.array([*box7[:3], *(box7[3:6] / 2), -box7[6], class_index], dtype=np.float64)


def in_sunrgbd_box(xyz: np.ndarray, box8: np.ndarray) -> np.ndarray:
    """(N,) bool: points inside a SUN RGB-D box (corners ``rotz(-heading) @ (+-l, +-w, +-h) + centre``)."""
    local = (np.asarray(xyz, dtype=np.float64)[:, :3] - box8[:3]) @ _rotz(-box8[6])
    return np.all(np.abs(local) <= box8[3:6], axis=1)


def sunrgbd_votes(xyz: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, 10) votes as VoteNet's extraction computes them (module docstring), boxes in file order."""
    n = len(xyz)
    votes = np.zeros((n, 10))
    filled = np.zeros(n, dtype=np.int64)  # next slot, capped at 2
    for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 8):
        inside = np.flatnonzero(in_sunrgbd_box(xyz, box))
        offset = box[:3] - xyz[inside, :3]
        votes[inside, 0] = 1.0
        first = filled[inside] == 0
        for slot in range(3):
            votes[inside[first], 1 + 3 * slot: 4 + 3 * slot] = offset[first]
        later = inside[~first]
        cols = 1 + 3 * filled[later][:, None] + np.arange(3)
        votes[later[:, None], cols] = offset[~first]
        filled[inside] = np.minimum(2, filled[inside] + 1)
    return votes


def write_votenet_sunrgbd(root: str | Path, split: str, sample_id: int, pc: np.ndarray, boxes: np.ndarray,
                          version: str = "v1") -> Path:
    """Writes ``<id>_pc.npz``, ``<id>_bbox.npy`` and ``<id>_votes.npz`` of one sample; returns the folder.

    ``pc`` (N, 6) xyz + rgb in [0, 1] in the upright camera frame; ``boxes`` (K, 8) SUN RGB-D rows
    (``sunrgbd_box``). The votes are computed here from the points and boxes.
    """
    pc = np.asarray(pc, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 8)
    if pc.ndim != 2 or pc.shape[1] != 6:
        raise ValueError(f"pc must be (N, 6), got {pc.shape}")
    if len(pc) and (pc[:, 3:].min() < 0 or pc[:, 3:].max() > 1):
        raise ValueError("SUN RGB-D colours must be in [0, 1]")
    if len(boxes) and not np.isin(boxes[:, 7], np.arange(len(SUNRGBD_CLASSES))).all():
        raise ValueError(f"box classes must be 0..{len(SUNRGBD_CLASSES) - 1}")
    folder = Path(root) / sunrgbd_folder(split, version)
    _save_npz(folder / f"{sample_id:06d}_pc.npz", pc=pc)
    _save_npy(folder / f"{sample_id:06d}_bbox.npy", boxes)
    _save_npz(folder / f"{sample_id:06d}_votes.npz", point_votes=sunrgbd_votes(pc[:, :3], boxes))
    return folder
