"""Torch dataset and datamodule over ProceduralShapes, for tests and smoke runs that need no download."""

from __future__ import annotations

import time

import numpy as np
import torch
import trimesh
from torch.utils.data import Dataset
from tqdm import tqdm

from selfsup_pcd.data.base import PointCloudDataModule
from selfsup_pcd.data.synthetic.shapes import CLASS_NAMES, make_mesh, sample_points

SPLIT_IDS = {"train": 0, "test": 1}


def shape_seed(seed: int, split: str, class_id: int, i: int) -> int:
    """Seed of one shape: a hash of all four, so train and test never share a shape."""
    state = np.random.SeedSequence([seed, SPLIT_IDS[split], class_id, i]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))  # 63 bits: a plain non-negative int


class ProceduralShapesDataset(Dataset):
    """``shapes_per_class`` shapes of every class, sampled once in ``__init__`` and kept in memory."""

    def __init__(
        self,
        split: str = "train",
        shapes_per_class: int = 40,
        num_points: int = 1024,
        use_normals: bool = False,
        normalize: bool = True,
        seed: int = 0,
    ) -> None:
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {tuple(SPLIT_IDS)}, got {split!r}")
        self.split, self.num_points, self.use_normals, self.normalize = (
            split,
            num_points,
            use_normals,
            normalize,
        )
        num_classes = len(CLASS_NAMES)
        self.labels = np.repeat(np.arange(num_classes, dtype=np.int64), shapes_per_class)
        self.seeds = np.array(
            [shape_seed(seed, split, c, i) for c in range(num_classes) for i in range(shapes_per_class)],
            dtype=np.uint64,
        )
        self._points = np.empty((len(self.labels), num_points, 6), dtype=np.float32)
        # Per shape: centre and scale that took the mesh into the frame of its points (see ``mesh``).
        self._centre = np.zeros((len(self.labels), 3), dtype=np.float64)
        self._scale = np.ones(len(self.labels), dtype=np.float64)
        started = time.perf_counter()
        for k in tqdm(range(len(self.labels)), desc=f"ProceduralShapes {split}", unit="shape", delay=2.0):
            mesh = make_mesh(int(self.labels[k]), int(self.seeds[k]))
            xyz, normals = sample_points(mesh, num_points, int(self.seeds[k]))
            if normalize:
                self._centre[k] = xyz.mean(axis=0)
                self._scale[k] = max(float(np.linalg.norm(xyz - self._centre[k], axis=1).max()), 1e-12)
                xyz = ((xyz - self._centre[k]) / self._scale[k]).astype(np.float32)
            self._points[k, :, :3], self._points[k, :, 3:] = xyz, normals
        self.build_seconds = time.perf_counter() - started

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        channels = 6 if self.use_normals else 3
        return {
            "points": torch.from_numpy(np.ascontiguousarray(self._points[index, :, :channels])),
            "label": torch.tensor(self.labels[index], dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }

    def mesh(self, index: int) -> trimesh.Trimesh:
        """The mesh shape ``index`` was sampled from, in the same frame as its points (for rendering)."""
        mesh = make_mesh(int(self.labels[index]), int(self.seeds[index]))
        mesh.apply_translation(-self._centre[index])
        mesh.apply_scale(1.0 / self._scale[index])
        return mesh


class ProceduralShapesDataModule(PointCloudDataModule):
    """ProceduralShapes with the project's batch format; ``val`` maps to ``val_split`` (test by default)."""

    def __init__(
        self,
        num_points: int = 1024,
        use_normals: bool = False,
        train_per_class: int = 40,
        test_per_class: int = 20,
        normalize: bool = True,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        self.num_points, self.use_normals, self.normalize = num_points, use_normals, normalize
        self.per_class = {"train": train_per_class, "test": test_per_class}

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES)

    def build_dataset(self, split: str) -> ProceduralShapesDataset:
        return ProceduralShapesDataset(
            split=split,
            shapes_per_class=self.per_class[split],
            num_points=self.num_points,
            use_normals=self.use_normals,
            normalize=self.normalize,
            seed=self.seed,
        )

    def labels(self, split: str) -> np.ndarray:
        """Labels of ``split`` in dataset order, without generating any shape."""
        split = self.val_split if split == "val" else split
        return np.repeat(np.arange(len(CLASS_NAMES), dtype=np.int64), self.per_class[split])
