"""ModelNet40 meshes (the Princeton ``ModelNet40.zip`` release, OFF files), for rendering real shapes.

Layout::

    ModelNet40/
      airplane/
        train/airplane_0001.off ... airplane_0626.off
        test/airplane_0627.off ...
      bathtub/ ...                          (40 class folders; ModelNet10 has the same layout)

Many ModelNet OFF files glue the header to the counts line (``OFF490 518 0``); trimesh's OFF reader accepts
both forms (tested). Each mesh is rotated from ModelNet's z-up to the project's y-up frame (``up_axis``),
centred on its area-weighted surface centroid and scaled so its farthest vertex lies on the unit sphere;
``num_points`` points are then sampled on its surface, area-weighted, deterministically per shape and seed
(``MeshFileDataset``, shared with ShapeNet). ``dataset.mesh(i)`` returns the mesh in the points' frame, so the
render cache (``render/cache.py``) renders the real surface instead of point splats. Labels are the ids of
the official 40-name list (also when ``classes`` keeps a subset). A file that cannot be read, or has no
faces, raises one ``DataFormatError`` naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from torch.utils.data import Dataset

from selfsup_pcd.data.base import PointCloudDataModule
from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.modelnet40 import SHAPE_NAMES_40

log = logging.getLogger(__name__)

UP_AXES = ("y", "z")
# z-up -> y-up: a proper rotation (-90 degrees about x): (x, y, z) -> (x, z, -y)
_Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

MODELNET40_LAYOUT = """\
ModelNet40/
  airplane/
    train/airplane_0001.off ...        one OFF mesh per shape ("OFF" header, possibly glued to the counts)
    test/airplane_0627.off ...
  bathtub/ ...                         one folder per class (names of modelnet40_shape_names.txt)"""
MODELNET40_SOURCE = (
    "ModelNet40.zip from the Princeton ModelNet page, https://modelnet.cs.princeton.edu/ (Wu et al., CVPR 2015; "
    "research use only). Without meshes, data=modelnet40 renders the point-cloud releases as splats."
)


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """One triangle mesh from any format trimesh reads (scenes are concatenated, materials skipped)."""
    path = Path(path)
    try:
        mesh = trimesh.load(path, force="mesh", process=False, skip_materials=True)
    except Exception as err:  # trimesh raises many types for malformed files
        raise DataFormatError(path, f"cannot be read as a mesh ({type(err).__name__}: {err})") from err
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise DataFormatError(path, "mesh has no faces")
    if not np.isfinite(mesh.vertices).all():
        raise DataFormatError(path, "mesh has non-finite vertex coordinates")
    return mesh


def normalize_mesh(mesh: trimesh.Trimesh, up_axis: str = "y", normalize: bool = True,
                   path: str | Path = "<mesh>") -> trimesh.Trimesh:
    """Rotates ``up_axis`` to y, then centres on the area-weighted surface centroid and scales the farthest
    used vertex to radius 1 (the renderer's field of view fits the unit sphere)."""
    if up_axis not in UP_AXES:
        raise ValueError(f"up_axis must be one of {UP_AXES}, got {up_axis!r}")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    if up_axis == "z":
        vertices = vertices @ _Z_UP_TO_Y_UP.T
    faces = np.asarray(mesh.faces)
    if normalize:
        corners = vertices[faces]
        areas = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
        if not areas.sum() > 0:
            raise DataFormatError(path, "mesh has zero surface area")
        centre = (corners.mean(axis=1) * areas[:, None]).sum(axis=0) / areas.sum()
        vertices = vertices - centre
        vertices = vertices / np.linalg.norm(vertices[np.unique(faces)], axis=1).max()
    out = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    colors = getattr(mesh.visual, "vertex_colors", None) if mesh.visual.kind == "vertex" else None
    if colors is not None and len(colors) == len(vertices):
        out.visual.vertex_colors = colors
    return out


class MeshFileDataset(Dataset):
    """Meshes on disk as a point-cloud dataset: items ``points`` (N, 3 or 6), ``label``, ``index``, and
    ``mesh(index)`` in the same normalised frame (for the renderer)."""

    def __init__(
        self,
        files: Sequence[str | Path],
        labels: Sequence[int],
        split: str = "train",
        num_points: int = 1024,
        use_normals: bool = False,
        normalize: bool = True,
        up_axis: str = "y",
        seed: int = 0,
    ) -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        if up_axis not in UP_AXES:
            raise ValueError(f"up_axis must be one of {UP_AXES}, got {up_axis!r}")
        self.files = [Path(p) for p in files]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.split, self.num_points, self.use_normals = split, num_points, use_normals
        self.normalize, self.up_axis, self.seed = normalize, up_axis, seed
        self._last: tuple[int, trimesh.Trimesh] | None = None  # the renderer asks for points, then the mesh

    def __len__(self) -> int:
        return len(self.files)

    def _mesh(self, index: int) -> trimesh.Trimesh:
        if self._last is None or self._last[0] != index:
            path = self.files[index]
            self._last = (index, normalize_mesh(load_mesh(path), self.up_axis, self.normalize, path))
        return self._last[1]

    def mesh(self, index: int) -> trimesh.Trimesh:
        """Shape ``index``'s mesh in the frame of its points (a copy)."""
        return self._mesh(index).copy()

    def sample_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, _SPLIT_IDS.get(self.split, 3), index])
                   .generate_state(1, np.uint64)[0] >> np.uint64(1))

    def sample(self, index: int) -> np.ndarray:
        """(num_points, 6) float32: area-weighted surface samples and their face normals (deterministic)."""
        mesh = self._mesh(index)
        points, face = trimesh.sample.sample_surface(mesh, self.num_points,
                                                     seed=np.random.default_rng(self.sample_seed(index)))
        return np.concatenate([points, mesh.face_normals[face]], axis=1).astype(np.float32)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        points = self.sample(index)[:, : 6 if self.use_normals else 3]
        return {"points": torch.from_numpy(np.ascontiguousarray(points)),
                "label": torch.tensor(self.labels[index], dtype=torch.int64),
                "index": torch.tensor(index, dtype=torch.int64)}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_last": None}


def list_modelnet_meshes(root: str | Path, split: str, classes: Sequence[str] | None = None,
                         exclude: Sequence[str] = ()) -> tuple[list[Path], list[int]]:
    """Files and 40-class labels of ``split`` (sorted by class id, then name)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError("ModelNet40 meshes", root, MODELNET40_LAYOUT, MODELNET40_SOURCE)
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    unknown = [name for name in present if name not in SHAPE_NAMES_40]
    if unknown:
        log.warning("%s: ignoring folders that are not ModelNet40 classes: %s", root, unknown)
    wanted = list(classes) if classes else [name for name in SHAPE_NAMES_40 if name in present]
    for name in wanted:
        if name not in SHAPE_NAMES_40:
            raise ValueError(f"unknown ModelNet40 class {name!r}")
    if not wanted:
        raise DatasetLayoutError("ModelNet40 meshes", root / "<class>" / split, MODELNET40_LAYOUT, MODELNET40_SOURCE)
    excluded = set(exclude)
    files, labels = [], []
    for name in wanted:
        folder = root / name / split
        if not folder.is_dir():
            raise DatasetLayoutError("ModelNet40 meshes", folder, MODELNET40_LAYOUT, MODELNET40_SOURCE)
        for path in sorted(folder.glob("*.off")):
            if path.stem not in excluded:
                files.append(path)
                labels.append(SHAPE_NAMES_40.index(name))
    if not files:
        raise DatasetLayoutError("ModelNet40 meshes", root / wanted[0] / split / f"{wanted[0]}_0001.off",
                                 MODELNET40_LAYOUT, MODELNET40_SOURCE)
    return files, labels


class ModelNet40MeshDataModule(PointCloudDataModule):
    """ModelNet40 OFF meshes with the project's batch format; renders as real surfaces (``mesh(i)``)."""

    def __init__(
        self,
        root: str | Path,
        num_points: int = 1024,
        use_normals: bool = False,
        normalize: bool = True,
        up_axis: str = "z",
        classes: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        self.root = Path(root)
        self.num_points, self.use_normals, self.normalize, self.up_axis = num_points, use_normals, normalize, up_axis
        self.classes = list(classes) if classes else None
        self.exclude = list(exclude or [])

    @property
    def class_names(self) -> list[str]:
        return list(SHAPE_NAMES_40)

    def prepare_data(self) -> None:
        for split in ("train", "test"):
            list_modelnet_meshes(self.root, split, self.classes, self.exclude)

    def build_dataset(self, split: str) -> MeshFileDataset:
        files, labels = list_modelnet_meshes(self.root, split, self.classes, self.exclude)
        return MeshFileDataset(files, labels, split=split, num_points=self.num_points, use_normals=self.use_normals,
                               normalize=self.normalize, up_axis=self.up_axis, seed=self.seed)

    def labels(self, split: str) -> np.ndarray:
        """Labels of ``split`` in dataset order, without reading any mesh."""
        split = self.val_split if split == "val" else split
        return np.asarray(list_modelnet_meshes(self.root, split, self.classes, self.exclude)[1], dtype=np.int64)
