"""ShapeNet point clouds from STRL's ``shapenet57448xyzonly.npz`` (``strl_byol.md`` §1): unlabelled shapes
for self-supervised pretraining.

The file holds one array, ``data`` (57,448 × 2048 × 3 float, not normalised). Every shape is a training
shape, as in the original. Validation is either a held-out fraction of the shapes (``val_fraction``) or
another datamodule's evaluation split (``val_data``, e.g. ModelNet40 test as STRL validated; spec quirk 12:
the validation loss only monitors). Batches are ``points`` (B, N, 3) and ``index``; the views are made by
the pretraining method.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from selfsup_pcd.data.base import PointCloudDataModule
from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError

FILE_NAME = "shapenet57448xyzonly.npz"
LAYOUT = f"""\
<root>/{FILE_NAME}     numpy .npz with array `data`: (num_shapes, points, 3) float (x, y, z)"""
SOURCE = (
    f"{FILE_NAME}, the ShapeNetCore-55 point clouds STRL pretrains on (57,448 shapes x 2,048 points; "
    "placed by STRL's instructions in BYOL/data/). ShapeNet is for research use under its terms of use."
)


def resolve_npz(path: str | Path) -> Path:
    """The npz file itself, given the file or the folder that holds it."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise DatasetLayoutError("ShapeNet (npz)", path, LAYOUT, SOURCE)
    return path


def load_npz_points(path: str | Path, key: str = "data") -> np.ndarray:
    """(S, N, 3) float32 points of the npz array ``key``; bad content raises naming the file."""
    path = resolve_npz(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if key not in archive.files:
                raise DataFormatError(path, f"has no array {key!r} (arrays: {archive.files})")
            data = archive[key]
    except (OSError, ValueError) as err:
        if isinstance(err, DataFormatError):
            raise
        raise DataFormatError(path, f"cannot be read as a numpy .npz ({err})") from None
    if data.ndim != 3 or data.shape[-1] < 3 or not np.issubdtype(data.dtype, np.number):
        raise DataFormatError(path, f"array {key!r} must be (shapes, points, 3) numbers, got {data.shape} {data.dtype}")
    data = np.ascontiguousarray(data[..., :3], dtype=np.float32)
    bad = ~np.isfinite(data).all(axis=(1, 2))
    if bad.any():
        raise DataFormatError(path, f"array {key!r}: shape {int(np.flatnonzero(bad)[0])} has non-finite coordinates "
                                    f"({int(bad.sum())} shapes in all)")
    return data


class ShapeNetPointsDataset(Dataset):
    """Shapes of the npz, in file order; ``num_points`` keeps the first N points of each (None: all)."""

    def __init__(self, points: np.ndarray, num_points: int | None = None) -> None:
        if num_points is not None and num_points > points.shape[1]:
            raise ValueError(f"num_points={num_points} exceeds the {points.shape[1]} points per shape")
        self.points, self.num_points = points, num_points

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pts = self.points[index, : self.num_points]
        return {"points": torch.from_numpy(np.array(pts)), "index": torch.tensor(index, dtype=torch.int64)}


class ShapeNetNPZDataModule(PointCloudDataModule):
    """Unlabelled ShapeNet shapes for pretraining (no classes: ``num_classes`` is 0).

    ``val_data``: a datamodule whose evaluation split (its ``val_split``) is used for validation; otherwise
    the last ``val_fraction`` of a seeded permutation of the shapes is held out (0: no validation data).
    """

    def __init__(
        self,
        path: str | Path,
        key: str = "data",
        num_points: int | None = None,
        val_fraction: float = 0.0,
        val_data: PointCloudDataModule | None = None,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.path, self.key, self.num_points = Path(path).expanduser(), key, num_points
        self.val_fraction, self.val_data = val_fraction, val_data
        self._points: np.ndarray | None = None

    @property
    def class_names(self) -> list[str]:
        return []

    def prepare_data(self) -> None:
        resolve_npz(self.path)
        if self.val_data is not None:
            self.val_data.prepare_data()

    def points(self) -> np.ndarray:
        """All shapes of the file, loaded once per process."""
        if self._points is None:
            self._points = load_npz_points(self.path, self.key)
        return self._points

    def _split_indices(self) -> tuple[np.ndarray, np.ndarray]:
        total = len(self.points())
        held = int(round(self.val_fraction * total)) if self.val_data is None else 0
        order = np.random.default_rng(self.seed).permutation(total)
        return np.sort(order[: total - held]), np.sort(order[total - held :])

    def build_dataset(self, split: str) -> Dataset:
        if split == "train":
            train, _ = self._split_indices()
            return Subset(ShapeNetPointsDataset(self.points(), self.num_points), train.tolist())
        if self.val_data is not None:
            return self.val_data.dataset(self.val_data.val_split)
        _, held = self._split_indices()
        return Subset(ShapeNetPointsDataset(self.points(), self.num_points), held.tolist())

    def val_dataloader(self):
        if len(self.dataset("val")) == 0:
            return []
        return super().val_dataloader()
