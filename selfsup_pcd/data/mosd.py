"""mOSD (modified Object Segmentation Database): real Kinect table-top scans, table vs object segmentation.

The files are organised 640 x 480 PCD clouds (``label x y z rgba``, ``binary_compressed``; read by
``selfsup_pcd.data.pcd``). Invalid pixels (z = NaN; in ``learn25`` x and y are -0.0 there instead of NaN)
are dropped. Labels: 1-9 -> "table", >= 20 -> "object" (the first object's parts are 20, 21, ..., the
second's 30, ...). Label 0 marks exactly the invalid pixels in every file checked, so the "background" of the
dataset's README has no valid point and there are two classes; a valid point with label 0 or 10-19 (none in
the files) would be unlabelled (``IGNORE_INDEX``) with a warning.

Frame: the camera frame (x right, y down, z forward) is turned into x right, y forward, z up (x, z, -y), so
the base's defaults (up axis z, blocks on the x-y plane) cut the scene into columns seen from above. The
camera looks down at the table, so the table is tilted by the camera's pitch in this frame, not levelled.

Default split of the 12 shared ``learn`` files (3 of each OSD category): test = learn12 (boxes), learn28
(occluded objects), learn43 (cylindric objects), one of each of three categories; train = the other 9, which
include all three stacked-box scenes. Validation runs on the test scenes unless ``val_scenes`` is given.
Blocks default to 0.5 m with stride 0.25 (table-top scenes span about 1.5 m), voxels to 2 cm.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.pcd import read_pcd, unpack_rgb
from selfsup_pcd.data.scene_semseg import IGNORE_INDEX, SceneCloud, SceneSemsegDataModule

log = logging.getLogger(__name__)

MOSD_CLASSES = ["table", "object"]
DEFAULT_TEST = ("learn12", "learn28", "learn43")
DEFAULT_TRAIN = ("learn0", "learn6", "learn17", "learn20", "learn23", "learn25", "learn31", "learn33", "learn38")
_DATASET = "mOSD"
_LAYOUT = """\
<root>/                      e.g. shared/data/mosd/learn
└── learn0.pcd, learn6.pcd, ...   PCD v0.7: FIELDS label x y z rgba (organised 640 x 480)"""
_SOURCE = ("PointCloudLibrary/data repository on GitHub, segmentation/mOSD/{learn,test}/ (BSD-style; cite "
           "Richtsfeld et al., IROS 2012); 12 learn files are in shared/data/mosd/learn.")


def mosd_labels(raw: np.ndarray) -> np.ndarray:
    """Class index (0 table, 1 object) of raw mOSD labels; IGNORE_INDEX for 0 and 10-19."""
    raw = np.asarray(raw, dtype=np.int64)
    out = np.full(raw.shape, IGNORE_INDEX, dtype=np.int64)
    out[(raw >= 1) & (raw <= 9)] = 0
    out[raw >= 20] = 1
    return out


def read_mosd_scene(path: str | Path, name: str | None = None) -> SceneCloud:
    """The valid points of one mOSD file in the z-up frame (module docstring), labels table/object."""
    path = Path(path)
    cloud = read_pcd(path)
    missing = [f for f in ("label", "x", "y", "z") if f not in cloud.fields]
    colour = next((f for f in ("rgba", "rgb") if f in cloud.fields), None)
    if missing or colour is None:
        raise DataFormatError(path, f"lacks the fields {missing + ([] if colour else ['rgba'])} of an mOSD file "
                                    f"(has {cloud.fields})")
    camera = np.stack([cloud["x"], cloud["y"], cloud["z"]], 1).astype(np.float32)
    valid = np.isfinite(camera).all(1)
    raw = cloud["label"][valid]
    labels = mosd_labels(raw)
    unlabelled = int((labels == IGNORE_INDEX).sum())
    if unlabelled:
        warnings.warn(f"{path}: {unlabelled} valid points have label 0 or 10-19 (neither table nor object); "
                      "they are left unlabelled", stacklevel=2)
    x, y, z = camera[valid].T
    xyz = np.stack([x, z, -y], 1)  # right, forward, up
    rgb = unpack_rgb(cloud[colour][valid]).astype(np.float32) / 255.0
    return SceneCloud(name or path.stem, np.ascontiguousarray(xyz), rgb, labels)


class MOSDDataModule(SceneSemsegDataModule):
    """mOSD table-top scenes; ``train_scenes``/``test_scenes``/``val_scenes`` are file stems in ``root``.

    ``max_points``: keep a fixed random subset of at most this many points per scene (seeded; quick runs and
    tests), applied before blocks or voxels so ``room_labels`` describe the same points.
    """

    def __init__(
        self,
        root: str | Path,
        train_scenes: Sequence[str] = DEFAULT_TRAIN,
        test_scenes: Sequence[str] = DEFAULT_TEST,
        val_scenes: Sequence[str] | None = None,
        max_points: int | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("val_split", "val" if val_scenes else "test")
        kwargs.setdefault("block_size", 0.5)
        kwargs.setdefault("block_stride", 0.25)
        kwargs.setdefault("voxel_size", 0.02)
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.split_scenes = {"train": list(train_scenes), "test": list(test_scenes),
                             "val": list(val_scenes) if val_scenes else []}
        if self.val_split == "val" and not val_scenes:
            raise ValueError("val_split='val' needs val_scenes")
        for a, b in (("train", "test"), ("train", "val")):
            shared = set(self.split_scenes[a]) & set(self.split_scenes[b])
            if shared:
                raise ValueError(f"scenes {sorted(shared)} are in both {a} and {b}")
        if max_points is not None and max_points < 1:
            raise ValueError(f"max_points must be positive, got {max_points}")
        self.max_points = max_points

    @property
    def class_names(self) -> list[str]:
        return list(MOSD_CLASSES)

    def scene_path(self, name: str) -> Path:
        path = self.root / (name if name.endswith(".pcd") else f"{name}.pcd")
        if not path.is_file():
            raise DatasetLayoutError(_DATASET, path, _LAYOUT, _SOURCE)
        return path

    def load_scenes(self, split: str) -> list[SceneCloud]:
        names = self.split_scenes[split]
        scenes = []
        for k, name in enumerate(names):
            scene = read_mosd_scene(self.scene_path(name), Path(name).stem)
            if self.max_points is not None and len(scene.xyz) > self.max_points:
                rng = np.random.default_rng([self.seed, k, len(scene.xyz)])
                keep = np.sort(rng.choice(len(scene.xyz), self.max_points, replace=False))
                scene = SceneCloud(scene.name, scene.xyz[keep], scene.rgb[keep], scene.labels[keep])
            scenes.append(scene)
        log.info("mOSD %s: %d scenes, %d points (%s)", split, len(scenes), sum(len(s.xyz) for s in scenes),
                 ", ".join(names))
        return scenes
