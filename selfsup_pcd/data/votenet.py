"""VoteNet detection data: ScanNet v2 and SUN RGB-D in VoteNet's prepared layouts (``writers/votenet.py``).

Batches (dicts of tensors, default collate; ``B`` samples, ``N = num_points``, ``M = MAX_NUM_OBJ = 64``):

=========================  ==============  =======  ==========================================================
key                        shape           dtype    meaning
=========================  ==============  =======  ==========================================================
``points``                 (B, N, 3 + F)   float32  x, y, z, then rgb (``use_color``), then height (``use_height``)
``vote_label``             (B, N, 9)       float32  three votes (dx, dy, dz): box centre - point
``vote_label_mask``        (B, N)          int64    1 where the point belongs to an object (votes valid)
``center_label``           (B, M, 3)       float32  box centres (zero rows past the boxes)
``heading_class_label``    (B, M)          int64    heading bin of the yaw (``data.boxes.heading_to_class``)
``heading_residual_label`` (B, M)          float32  yaw - bin centre (radians)
``size_class_label``       (B, M)          int64    = the semantic class (one mean size per class)
``size_residual_label``    (B, M, 3)       float32  full size - ``mean_sizes[class]``
``sem_cls_label``          (B, M)          int64    semantic class 0..C-1
``box_label_mask``         (B, M)          float32  1 for real boxes, 0 for padding
``gt_boxes``               (B, M, 7)       float32  cx, cy, cz, dx, dy, dz, yaw (full sizes, counter-clockwise)
``index``                  (B,)            int64    sample index in the split (``scene_names(split)``)
=========================  ==============  =======  ==========================================================

``F = 3 * use_color + use_height`` (``num_input_features``). Boxes follow ``selfsup_pcd.data.boxes``
(counter-clockwise yaw, full sizes); ``DetectionMAP.update(pred..., batch["gt_boxes"], batch["sem_cls_label"],
gt_mask=batch["box_label_mask"])`` scores predictions against them; ``decode_boxes`` of the five label tensors
gives back ``gt_boxes`` (heading wrapped to [-π, π)). Datamodule attributes a model needs: ``num_classes``,
``class_names``, ``num_heading_bins`` (ScanNet 1, SUN RGB-D 12), ``mean_sizes`` (C, 3), ``num_input_features``.

How each sample is made (``VoteNetDataset``), VoteNet's recipe unless noted:

1. the scene's points, boxes and votes are read (ScanNet: votes from the instance labels, see below; SUN RGB-D:
   ``votes.npz``); more than 64 boxes keeps the first 64 (warned once per scene);
2. ``num_points`` points are drawn, with replacement only when the scene has fewer (training: fresh each epoch,
   from ``(seed, epoch draw, index)``; evaluation: fixed per sample, from ``(seed, index)``);
3. height = z - the ``floor_percentile``-th percentile of z over all the scene's points (VoteNet:
   ``np.percentile(z, 0.99)``, i.e. about the 1st percentile), before augmentation;
4. training augmentation (``augment``), each flip with probability 1/2, then a rotation about z drawn
   uniformly in ±``rotation_deg``, then a scale in ``scale_range``, applied to points, boxes and votes alike,
   the height scaled with z. ScanNet (VoteNet's ``scannet_detection_dataset.py``): flips of x and y, ±5°, no
   scale; boxes stay axis-aligned: a turned box is replaced by the bounds of its turned footprint (VoteNet's
   ``rotate_aligned_boxes``), which still holds its points. SUN RGB-D (``sunrgbd_detection_dataset.py``): flip
   of x (yaw -> π - yaw), ±30°, scale 0.85-1.15. VoteNet's SUN RGB-D colour jitter is not reproduced;
5. targets: VoteNet's class + residual encoding (``data.boxes.encode_boxes``).

Choices where VoteNet's layout leaves room (documented here, tested in ``tests/data/test_votenet_data.py``):

* **ScanNet votes** point to the centre of the box of the point's instance, for points whose instance's first
  point has one of the 18 classes (VoteNet's test). An instance's box is the file's box of its class whose
  bounds hold all the instance's points (nearest centre first; VoteNet's ``bbox.npy`` are those bounds, over
  all points before its 50k subsampling); an instance with no such box votes to the centre of its points'
  bounds. VoteNet itself takes the bounds of the *sampled* points after augmentation: the same up to sampling.
* **Mean sizes** (size clusters): VoteNet ships fixed per-class means. Here they are computed from the
  training split's boxes (mean full size per class; a class with no training box gets the mean over all
  boxes, with a warning), unless ``mean_sizes`` is given. They are kept in the datamodule's ``state_dict``,
  so a resumed or evaluated run decodes with the sizes it trained with.
* **Headings** are encoded from our counter-clockwise yaw (= -SUN RGB-D's file heading).
* **Colour** (``use_color``, off by default as in VoteNet): ScanNet ``(rgb - MEAN_COLOR_RGB) / 256`` with
  VoteNet's mean colour (0-255), SUN RGB-D ``rgb - 0.5`` (colours 0-1) [recalled from VoteNet's datasets].

Splits: ScanNet's lists ``scannetv2_{train,val}.txt`` (``split_files``; default in the data root, as for
semantic segmentation), SUN RGB-D's folder per split; "test" is "val" for both (VoteNet evaluates on val).
A bad file raises a ``DataFormatError`` naming it; a missing one a ``DatasetLayoutError`` with the layout.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from selfsup_pcd.data.boxes import encode_boxes, flip_boxes, rotate_aligned_boxes, rotate_boxes, rotz, scale_boxes
from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.scene_semseg import EpochSampler, _key
from selfsup_pcd.data.writers.votenet import SCANNET_FOLDER, SCANNET_OBJ_CLASS_IDS, SUNRGBD_CLASSES, sunrgbd_folder

log = logging.getLogger(__name__)

MAX_NUM_OBJ = 64
SPLITS = ("train", "val", "test")
# VoteNet's names of the 18 ScanNet detection classes, in SCANNET_OBJ_CLASS_IDS order (NYU40 39 = "garbagebin").
SCANNET_CLASSES = ["cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
                   "desk", "curtain", "refrigerator", "showercurtain", "toilet", "sink", "bathtub", "garbagebin"]
NYU40_TO_CLASS = {nyu: k for k, nyu in enumerate(SCANNET_OBJ_CLASS_IDS)}
SCANNET_MEAN_COLOR_RGB = np.array([109.8, 97.2, 83.8])  # VoteNet's ScanNet mean colour (0-255) [recalled]
SCANNET_SPLIT_FILES = {"train": "scannetv2_train.txt", "val": "scannetv2_val.txt"}

_SCANNET = "ScanNet v2 (VoteNet detection data)"
SCANNET_LAYOUT = f"""\
<root>/
├── scannetv2_train.txt, scannetv2_val.txt   scene names, one per line (paths configurable: split_files)
└── {SCANNET_FOLDER}/                 (or give this folder itself as root)
    ├── scene0000_00_vert.npy        (N, 6) x, y, z, r, g, b (0-255)
    ├── scene0000_00_sem_label.npy   (N,) NYU40 id
    ├── scene0000_00_ins_label.npy   (N,) instance id (0 = none)
    └── scene0000_00_bbox.npy        (K, 7) centre, full size (axis-aligned), NYU40 id"""
SCANNET_SOURCE = (
    "VoteNet's scannet/batch_load_scannet_data.py (https://github.com/facebookresearch/votenet) run on the ScanNet "
    "v2 release (http://www.scan-net.org/, after signing its terms of use); the lists scannetv2_train.txt / "
    "scannetv2_val.txt are in VoteNet's scannet/meta_data. A small synthetic stand-in: "
    "python -m selfsup_pcd.synth votenet_scannet --out DIR"
)
_SUNRGBD = "SUN RGB-D (VoteNet detection data)"
SUNRGBD_LAYOUT = """\
<root>/
├── sunrgbd_pc_bbox_votes_50k_v1_train/   (v2: sunrgbd_pc_bbox_votes_50k_v2_train; val: ..._val)
│   ├── 000001_pc.npz      key "pc": (N, 6) x, y, z, r, g, b (0-1), upright camera frame
│   ├── 000001_bbox.npy    (K, 8) centre, half sizes, heading (clockwise), class 0-9
│   └── 000001_votes.npz   key "point_votes": (N, 10) in-box mask, 3 votes
└── sunrgbd_pc_bbox_votes_50k_v1_val/"""
SUNRGBD_SOURCE = (
    "VoteNet's sunrgbd/ scripts (extract_split.m, extract_rgbd_data_v1.m or _v2.m, then sunrgbd_data.py) run on "
    "the SUN RGB-D release (https://rgbd.cs.princeton.edu/). A small synthetic stand-in: "
    "python -m selfsup_pcd.synth votenet_sunrgbd --out DIR"
)


# -- one scene as read from disk --------------------------------------------------------------------------
@dataclass
class DetectionScene:
    """Everything a sample is drawn from, in the project's box convention."""

    name: str
    xyz: np.ndarray  # (N, 3) float32
    color: np.ndarray  # (N, 3) float32, normalised as VoteNet feeds it
    boxes: np.ndarray  # (K, 7) float64: centre, full size, counter-clockwise yaw
    classes: np.ndarray  # (K,) int64
    votes: np.ndarray  # (N, 9) float32
    vote_mask: np.ndarray  # (N,) bool


def _checked_points(points: np.ndarray, path: Path, what: str) -> np.ndarray:
    """A scene's (N, 6) x, y, z, r, g, b array, non-empty and finite; errors name the file (``what``: the key)."""
    if points.ndim != 2 or points.shape[1] != 6:
        raise DataFormatError(path, f"{what}has shape {points.shape}, expected (N, 6): x, y, z, r, g, b")
    if len(points) == 0:
        raise DataFormatError(path, "has no points")
    if not np.isfinite(points).all():
        raise DataFormatError(path, "has NaN or inf values")
    return points


def _load_array(path: Path, key: str | None = None) -> np.ndarray:
    """An .npy array, or ``key`` of an .npz; unreadable files and missing keys name the file."""
    try:
        if key is None:
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as f:
            if key not in f:
                raise DataFormatError(path, f"has no array {key!r} (keys: {sorted(f.files)})")
            return f[key]
    except DataFormatError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise DataFormatError(path, f"cannot be read as a NumPy file, truncated or corrupt? ({err})") from None


def _check_rows(path: Path, array: np.ndarray, columns: int, what: str) -> np.ndarray:
    """(K, columns) finite float64; an empty 1-D array is no rows."""
    if array.ndim == 1 and array.size == 0:
        return np.zeros((0, columns))
    if array.ndim != 2 or array.shape[1] != columns:
        got = f"{array.shape[1]} columns" if array.ndim == 2 else f"shape {array.shape}"
        raise DataFormatError(path, f"has {got}, expected {columns} ({what})")
    array = np.asarray(array, dtype=np.float64)
    if not np.isfinite(array).all():
        raise DataFormatError(path, "has NaN or inf values")
    return array


def _check_boxes(path: Path, boxes: np.ndarray) -> None:
    if (boxes[:, 3:6] < 0).any():
        raise DataFormatError(path, f"box {int(np.argmax((boxes[:, 3:6] < 0).any(1)))} has a negative size")


class SceneSource:
    """The scenes of one split of one layout: names, box files (for the mean sizes) and full loads."""

    names: list[str]

    @abstractmethod
    def read_boxes(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (K, 7), classes (K,)) of scene ``k`` only."""

    @abstractmethod
    def load(self, k: int) -> DetectionScene:
        """Scene ``k`` with points, boxes and votes."""


def _require(path: Path, dataset: str, layout: str, source: str, note: str = "") -> None:
    if not path.exists():
        raise DatasetLayoutError(dataset, path, layout + note, source)


# -- ScanNet -----------------------------------------------------------------------------------------------
def read_scene_list(path: str | Path) -> list[str]:
    """Scene names of a ``scannetv2_*.txt`` list (blank lines skipped); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(_SCANNET, path, SCANNET_LAYOUT, SCANNET_SOURCE)
    names = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if "/" in name or any(c.isspace() for c in name):
            raise DataFormatError(path, f"expected one scene name per line, got {name!r}", lineno)
        names.append(name)
    if not names:
        raise DataFormatError(path, "lists no scenes")
    return names


def scannet_vote_targets(xyz: np.ndarray, semantic: np.ndarray, instance: np.ndarray, boxes: np.ndarray,
                         box_nyu40: np.ndarray, tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """(votes (N, 3), mask (N,)) of a whole ScanNet scene; see the module docstring ("ScanNet votes")."""
    votes = np.zeros((len(xyz), 3), dtype=np.float64)
    mask = np.zeros(len(xyz), dtype=bool)
    ids, first, inverse = np.unique(instance, return_index=True, return_inverse=True)
    xyz64 = np.asarray(xyz, dtype=np.float64)
    for k, inst in enumerate(ids):
        label = int(semantic[first[k]])
        if inst == 0 or label not in NYU40_TO_CLASS:
            continue
        members = np.flatnonzero(inverse == k)
        pts = xyz64[members]
        lo, hi = pts.min(0), pts.max(0)
        centre = (lo + hi) / 2
        candidates = np.flatnonzero(box_nyu40 == label)
        if len(candidates):
            candidates = candidates[np.argsort(np.linalg.norm(boxes[candidates, :3] - centre, axis=1))]
            for j in candidates:
                half = boxes[j, 3:6] / 2 + tol
                if np.all(lo >= boxes[j, :3] - half) and np.all(hi <= boxes[j, :3] + half):
                    centre = boxes[j, :3]
                    break
        votes[members] = centre - pts
        mask[members] = True
    return votes, mask


class ScanNetSource(SceneSource):
    """Scenes of ``scannet_train_detection_data`` named in a split list."""

    def __init__(self, folder: Path, names: list[str], list_path: Path) -> None:
        self.folder, self.names = folder, names
        for name in names:
            for suffix in ("vert", "sem_label", "ins_label", "bbox"):
                _require(self.file(name, suffix), _SCANNET, SCANNET_LAYOUT, SCANNET_SOURCE,
                         f"\n({name} is listed in {list_path})")

    def file(self, name: str, suffix: str) -> Path:
        return self.folder / f"{name}_{suffix}.npy"

    def _boxes(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        path = self.file(name, "bbox")
        rows = _check_rows(path, _load_array(path), 7, "centre, full size, NYU40 id")
        _check_boxes(path, rows)
        nyu = rows[:, 6]
        bad = [v for v in nyu if v not in NYU40_TO_CLASS]
        if bad:
            raise DataFormatError(path, f"NYU40 id {bad[0]:g} is not one of the 18 detection classes "
                                        f"{list(SCANNET_OBJ_CLASS_IDS)}")
        boxes = np.concatenate([rows[:, :6], np.zeros((len(rows), 1))], axis=1)
        classes = np.array([NYU40_TO_CLASS[int(v)] for v in nyu], dtype=np.int64)
        return boxes, classes, nyu.astype(np.int64)

    def read_boxes(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        boxes, classes, _ = self._boxes(self.names[k])
        return boxes, classes

    def load(self, k: int) -> DetectionScene:
        name = self.names[k]
        vert_path = self.file(name, "vert")
        vert = _checked_points(_load_array(vert_path), vert_path, "")
        labels = {}
        for suffix in ("sem_label", "ins_label"):
            path = self.file(name, suffix)
            labels[suffix] = _load_array(path)
            if labels[suffix].shape != (len(vert),):
                raise DataFormatError(path, f"has shape {labels[suffix].shape}, but {vert_path.name} has "
                                            f"{len(vert)} points")
        boxes, classes, nyu = self._boxes(name)
        xyz = np.asarray(vert[:, :3], dtype=np.float32)
        votes, mask = scannet_vote_targets(xyz, labels["sem_label"].astype(np.int64),
                                           labels["ins_label"].astype(np.int64), boxes, nyu)
        color = ((vert[:, 3:6] - SCANNET_MEAN_COLOR_RGB) / 256.0).astype(np.float32)
        return DetectionScene(name, xyz, color, boxes, classes, np.tile(votes, (1, 3)).astype(np.float32), mask)


# -- SUN RGB-D ---------------------------------------------------------------------------------------------
class SunRGBDSource(SceneSource):
    """Samples of one ``sunrgbd_pc_bbox_votes_50k_<version>_<split>`` folder (ids of its ``*_pc.npz``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        _require(folder, _SUNRGBD, SUNRGBD_LAYOUT, SUNRGBD_SOURCE)
        self.names = sorted(p.name[: -len("_pc.npz")] for p in folder.glob("*_pc.npz"))
        if not self.names:
            raise DatasetLayoutError(_SUNRGBD, folder / "<id>_pc.npz", SUNRGBD_LAYOUT, SUNRGBD_SOURCE)
        for name in self.names:
            for suffix in ("bbox.npy", "votes.npz"):
                _require(folder / f"{name}_{suffix}", _SUNRGBD, SUNRGBD_LAYOUT, SUNRGBD_SOURCE)

    def read_boxes(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.folder / f"{self.names[k]}_bbox.npy"
        rows = _check_rows(path, _load_array(path), 8, "centre, half sizes, heading, class")
        _check_boxes(path, rows)
        cls = rows[:, 7]
        bad = np.flatnonzero((cls != np.round(cls)) | (cls < 0) | (cls >= len(SUNRGBD_CLASSES)))
        if len(bad):
            raise DataFormatError(path, f"box {bad[0]} has class {cls[bad[0]]:g}, expected an integer in "
                                        f"0..{len(SUNRGBD_CLASSES) - 1}")
        boxes = np.concatenate([rows[:, :3], 2 * rows[:, 3:6], -rows[:, 6:7]], axis=1)
        return boxes, cls.astype(np.int64)

    def load(self, k: int) -> DetectionScene:
        name = self.names[k]
        pc_path, votes_path = self.folder / f"{name}_pc.npz", self.folder / f"{name}_votes.npz"
        pc = _checked_points(_load_array(pc_path, "pc"), pc_path, "'pc' ")
        votes = _load_array(votes_path, "point_votes")
        if votes.shape != (len(pc), 10):
            raise DataFormatError(votes_path, f"'point_votes' has shape {votes.shape}, expected ({len(pc)}, 10) "
                                              f"for the {len(pc)} points of {pc_path.name}")
        boxes, classes = self.read_boxes(k)
        return DetectionScene(name, np.asarray(pc[:, :3], dtype=np.float32),
                              np.asarray(pc[:, 3:6] - 0.5, dtype=np.float32), boxes, classes,
                              np.asarray(votes[:, 1:10], dtype=np.float32), votes[:, 0] > 0.5)


# -- augmentation --------------------------------------------------------------------------------------------
@dataclass
class DetectionAugment:
    """VoteNet's training augmentation of a scene (module docstring, step 4)."""

    flip_x: bool = True
    flip_y: bool = False
    rotation_deg: float = 30.0
    scale_range: tuple[float, float] | None = None
    axis_aligned: bool = False

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """The random parameters of one application."""
        return {
            "flip_x": bool(self.flip_x and rng.random() > 0.5),
            "flip_y": bool(self.flip_y and rng.random() > 0.5),
            "angle": math.radians(rng.uniform(-self.rotation_deg, self.rotation_deg)) if self.rotation_deg else 0.0,
            "scale": float(rng.uniform(*self.scale_range)) if self.scale_range else 1.0,
        }

    def apply(self, xyz: np.ndarray, votes: np.ndarray, boxes: np.ndarray, height: np.ndarray | None,
              flip_x: bool, flip_y: bool, angle: float,
              scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Points (N, 3), votes (N, 9), boxes (K, 7), height (N,) under the given flips, turn and scale."""
        xyz, votes = np.array(xyz, dtype=np.float64), np.array(votes, dtype=np.float64)
        boxes = np.array(boxes, dtype=np.float64).reshape(-1, 7)
        for axis, flip in ((0, flip_x), (1, flip_y)):
            if flip:
                xyz[:, axis] = -xyz[:, axis]
                votes[:, axis::3] = -votes[:, axis::3]
                boxes = flip_boxes(boxes, axis)
        if angle:
            rot = rotz(angle)
            xyz = xyz @ rot.T
            votes = (votes.reshape(-1, 3, 3) @ rot.T).reshape(-1, 9)
            boxes = rotate_aligned_boxes(boxes, angle) if self.axis_aligned else rotate_boxes(boxes, angle)
        if self.axis_aligned:
            boxes[:, 6] = 0.0  # a flipped axis-aligned box is the same box
        if scale != 1.0:
            xyz, votes, boxes = xyz * scale, votes * scale, scale_boxes(boxes, scale)
            height = None if height is None else height * scale
        return xyz, votes, boxes, height


# -- dataset -----------------------------------------------------------------------------------------------
class VoteNetDataset(Dataset):
    """Samples of one split as VoteNet's detection datasets build them (module docstring)."""

    def __init__(self, source: SceneSource, num_points: int, mean_sizes: np.ndarray, num_heading_bins: int,
                 use_color: bool, use_height: bool, floor_percentile: float, augment: DetectionAugment | None,
                 seed: int) -> None:
        self.source, self.num_points, self.mean_sizes = source, num_points, mean_sizes
        self.num_heading_bins, self.use_color, self.use_height = num_heading_bins, use_color, use_height
        self.floor_percentile, self.augment, self.seed = floor_percentile, augment, seed
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.source.names)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, draw = _key(item)
        scene = self.source.load(index)
        train = self.augment is not None
        rng = np.random.default_rng([self.seed, draw, index] if train else [self.seed, index])
        n = len(scene.xyz)
        choice = rng.choice(n, self.num_points, replace=n < self.num_points)
        xyz, votes, vote_mask = scene.xyz[choice], scene.votes[choice], scene.vote_mask[choice]
        height = None
        if self.use_height:
            height = xyz[:, 2].astype(np.float64) - np.percentile(scene.xyz[:, 2], self.floor_percentile)
        boxes, classes = scene.boxes, scene.classes
        if len(boxes) > MAX_NUM_OBJ:
            if index not in self._warned:
                self._warned.add(index)
                log.warning("%s has %d boxes; keeping the first %d", scene.name, len(boxes), MAX_NUM_OBJ)
            boxes, classes = boxes[:MAX_NUM_OBJ], classes[:MAX_NUM_OBJ]
        if train:
            xyz, votes, boxes, height = self.augment.apply(xyz, votes, boxes, height, **self.augment.draw(rng))
        channels = [np.asarray(xyz, dtype=np.float32)]
        if self.use_color:
            channels.append(scene.color[choice])
        if height is not None:
            channels.append(np.asarray(height, dtype=np.float32)[:, None])
        return {"points": torch.from_numpy(np.concatenate(channels, axis=1).astype(np.float32)),
                "vote_label": torch.from_numpy(np.asarray(votes, dtype=np.float32)),
                "vote_label_mask": torch.from_numpy(vote_mask.astype(np.int64)),
                **box_targets(boxes, classes, self.mean_sizes, self.num_heading_bins),
                "index": torch.tensor(index, dtype=torch.int64)}


def box_targets(boxes: np.ndarray, classes: np.ndarray, mean_sizes: np.ndarray,
                num_heading_bins: int) -> dict[str, torch.Tensor]:
    """The box keys of a sample (module docstring), padded to ``MAX_NUM_OBJ``."""
    k = len(boxes)
    enc = encode_boxes(boxes, classes, mean_sizes, num_heading_bins)

    def pad(values: np.ndarray, dtype: np.dtype, *trailing: int) -> torch.Tensor:
        out = np.zeros((MAX_NUM_OBJ, *trailing), dtype=dtype)
        out[:k] = values
        return torch.from_numpy(out)

    return {
        "center_label": pad(enc["center"], np.float32, 3),
        "heading_class_label": pad(enc["heading_class"], np.int64),
        "heading_residual_label": pad(enc["heading_residual"], np.float32),
        "size_class_label": pad(enc["size_class"], np.int64),
        "size_residual_label": pad(enc["size_residual"], np.float32, 3),
        "sem_cls_label": pad(classes, np.int64),
        "box_label_mask": pad(np.ones(k), np.float32),
        "gt_boxes": pad(boxes, np.float32, 7),
    }


# -- datamodules ---------------------------------------------------------------------------------------------
class VoteNetDataModule(pl.LightningDataModule):
    """Shared base: splits, mean sizes, loaders and resumable shuffling; subclasses give the layout.

    ``augment``: VoteNet's training augmentation (``flip_x``, ``flip_y``, ``rotation_deg``, ``scale_range``;
    dataset defaults per subclass). ``mean_sizes``: (C, 3) full sizes per class, or None to compute them from
    the training boxes. ``floor_percentile``: percentile (0-100) of z taken as the floor for the height.
    """

    num_heading_bins: int = 1
    axis_aligned: bool = False

    def __init__(
        self,
        num_points: int = 20_000,
        use_height: bool = False,
        use_color: bool = False,
        floor_percentile: float = 0.99,
        augment: bool = True,
        flip_x: bool = True,
        flip_y: bool = False,
        rotation_deg: float = 30.0,
        scale_range: Sequence[float] | None = None,
        mean_sizes: Sequence[Sequence[float]] | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        val_split: str = "val",
        drop_last: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if num_points < 1:
            raise ValueError(f"num_points must be positive, got {num_points}")
        if val_split not in SPLITS:
            raise ValueError(f"val_split must be one of {SPLITS}, got {val_split!r}")
        if not 0 <= floor_percentile <= 100:
            raise ValueError(f"floor_percentile must be in [0, 100], got {floor_percentile}")
        if scale_range is not None and (len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]):
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
        self.num_points, self.use_height, self.use_color = num_points, use_height, use_color
        self.floor_percentile = floor_percentile
        self.augment = DetectionAugment(flip_x, flip_y, rotation_deg,
                                        tuple(scale_range) if scale_range is not None else None,
                                        self.axis_aligned) if augment else None
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed, self.val_split = num_workers, seed, val_split
        self.drop_last, self.pin_memory = drop_last, pin_memory
        self._mean_sizes: np.ndarray | None = None
        if mean_sizes is not None:
            self._mean_sizes = self._checked_sizes(mean_sizes)
        self._fixed_sizes = mean_sizes is not None
        self._sources: dict[str, SceneSource] = {}
        self._datasets: dict[str, VoteNetDataset] = {}
        self._shuffle_generator = torch.Generator().manual_seed(seed)

    # -- what a layout provides ------------------------------------------------------------------------
    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Names of the detection classes, index = class id."""

    @abstractmethod
    def build_source(self, split: str) -> SceneSource:
        """The scenes of "train" or "val"."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_input_features(self) -> int:
        """Channels of ``points`` after x, y, z."""
        return 3 * self.use_color + int(self.use_height)

    # -- splits and mean sizes ---------------------------------------------------------------------------
    def resolve_split(self, split: str) -> str:
        """'val' -> ``val_split``; 'test' -> 'val' (both datasets evaluate on val)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        split = self.val_split if split == "val" else split
        return "val" if split == "test" else split

    def source(self, split: str) -> SceneSource:
        split = self.resolve_split(split)
        if split not in self._sources:
            self._sources[split] = self.build_source(split)
        return self._sources[split]

    def scene_names(self, split: str) -> list[str]:
        """Scene (or sample) names of ``split``; a batch's ``index`` indexes this list."""
        return list(self.source(split).names)

    def _checked_sizes(self, sizes: Any) -> np.ndarray:
        try:  # lists, arrays or Hydra's ListConfig
            array = np.array([[float(v) for v in row] for row in sizes], dtype=np.float64)
        except (TypeError, ValueError):
            array = np.zeros(0)
        if array.shape != (self.num_classes, 3) or not np.isfinite(array).all() or (array <= 0).any():
            raise ValueError(f"mean_sizes must be {self.num_classes} rows of 3 positive sizes, got {sizes!r:.200}")
        return array

    @property
    def mean_sizes(self) -> np.ndarray:
        """(C, 3) mean full size per class: given, restored from a checkpoint, or from the training boxes."""
        if self._mean_sizes is None:
            self._mean_sizes = compute_mean_sizes(self.source("train"), self.num_classes, self.class_names)
        return self._mean_sizes

    # -- datasets and loaders --------------------------------------------------------------------------------
    def dataset(self, split: str) -> VoteNetDataset:
        """The dataset of ``split``: training sampling and augmentation for "train" only."""
        split = self.resolve_split(split)
        if split not in self._datasets:
            self._datasets[split] = VoteNetDataset(
                self.source(split), self.num_points, self.mean_sizes, self.num_heading_bins, self.use_color,
                self.use_height, self.floor_percentile, self.augment if split == "train" else None, self.seed)
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)
        for split in wanted:
            self.dataset(split)

    def train_dataloader(self) -> DataLoader:
        data = self.dataset("train")
        return DataLoader(data, batch_size=self.batch_size, sampler=EpochSampler(len(data), self._shuffle_generator),
                          drop_last=self.drop_last, num_workers=self.num_workers, pin_memory=self.pin_memory)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Every sample of ``split`` once, in order, without augmentation."""
        return DataLoader(self.dataset(split), batch_size=self.eval_batch_size, shuffle=False, drop_last=False,
                          num_workers=self.num_workers, pin_memory=self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    # -- resumable state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"shuffle_generator": self._shuffle_generator.get_state()}
        if self._mean_sizes is not None:
            state["mean_sizes"] = self._mean_sizes.tolist()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._shuffle_generator.set_state(state_dict["shuffle_generator"])
        if "mean_sizes" in state_dict and not self._fixed_sizes:
            self._mean_sizes = self._checked_sizes(state_dict["mean_sizes"])
            for data in self._datasets.values():
                data.mean_sizes = self._mean_sizes


def compute_mean_sizes(source: SceneSource, num_classes: int, class_names: Sequence[str]) -> np.ndarray:
    """(C, 3) mean full size of each class's boxes over the scenes of ``source``."""
    total, count = np.zeros((num_classes, 3)), np.zeros(num_classes)
    for k in range(len(source.names)):
        boxes, classes = source.read_boxes(k)
        np.add.at(total, classes, boxes[:, 3:6])
        np.add.at(count, classes, 1)
    if count.sum() == 0:
        raise ValueError("the training split has no boxes to compute the mean sizes from; give mean_sizes")
    means = total / np.maximum(count, 1)[:, None]
    missing = np.flatnonzero(count == 0)
    if len(missing):
        log.warning("no training box of %s: their mean size is the mean over all boxes",
                    ", ".join(class_names[c] for c in missing))
        means[missing] = total.sum(0) / count.sum()
    return means


class VoteNetScanNetDataModule(VoteNetDataModule):
    """ScanNet v2 in ``scannet_train_detection_data`` (18 classes, axis-aligned boxes, 1 heading bin).

    ``root``: the folder holding ``scannet_train_detection_data`` (or that folder). ``split_files``:
    ``{"train": path, "val": path}``, each None for ``scannetv2_<split>.txt`` beside the data folder.
    Defaults changed from the base: flips of x and y, ±5°, no scale (VoteNet's ScanNet recipe).
    """

    num_heading_bins = 1
    axis_aligned = True

    def __init__(self, root: str | Path, split_files: Mapping[str, str | Path | None] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("flip_y", True)
        kwargs.setdefault("rotation_deg", 5.0)
        super().__init__(**kwargs)
        root = Path(root).expanduser()
        self.folder = root if root.name == SCANNET_FOLDER else root / SCANNET_FOLDER
        files = dict(split_files or {})
        unknown = set(files) - set(SCANNET_SPLIT_FILES)
        if unknown:
            raise ValueError(f"split_files takes the keys {sorted(SCANNET_SPLIT_FILES)}, got {sorted(unknown)}")
        self.split_files = {s: Path(files.get(s) or self.folder.parent / default).expanduser()
                            for s, default in SCANNET_SPLIT_FILES.items()}

    @property
    def class_names(self) -> list[str]:
        return list(SCANNET_CLASSES)

    def build_source(self, split: str) -> ScanNetSource:
        _require(self.folder, _SCANNET, SCANNET_LAYOUT, SCANNET_SOURCE)
        path = self.split_files[split]
        return ScanNetSource(self.folder, read_scene_list(path), path)


class VoteNetSUNRGBDDataModule(VoteNetDataModule):
    """SUN RGB-D in ``sunrgbd_pc_bbox_votes_50k_<version>_<split>`` (10 classes, 12 heading bins).

    ``root``: the folder holding those folders; ``version``: "v1" (VoteNet's default) or "v2". Defaults:
    flip of x, ±30°, scale 0.85-1.15 (VoteNet's SUN RGB-D recipe).
    """

    num_heading_bins = 12
    axis_aligned = False

    def __init__(self, root: str | Path, version: str = "v1", **kwargs: Any) -> None:
        kwargs.setdefault("scale_range", (0.85, 1.15))
        super().__init__(**kwargs)
        if version not in ("v1", "v2"):
            raise ValueError(f"version must be v1 or v2, got {version!r}")
        self.root, self.version = Path(root).expanduser(), version

    @property
    def class_names(self) -> list[str]:
        return list(SUNRGBD_CLASSES)

    def build_source(self, split: str) -> SunRGBDSource:
        return SunRGBDSource(self.root / sunrgbd_folder(split, self.version))
