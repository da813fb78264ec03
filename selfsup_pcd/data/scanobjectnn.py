"""ScanObjectNN object classification (15 classes, real scans), read from its native h5 files.

Variants (``variant``):

* ``obj_only``  — ``main_split_nobg/{training,test}_objectdataset.h5`` (objects without background);
* ``obj_bg``    — ``main_split/{training,test}_objectdataset.h5`` (objects with background);
* ``pb_t50_rs`` — ``main_split/{training,test}_objectdataset_augmentedrot_scale75.h5`` (the hardest
  perturbed variant: translation, rotation and scaling of the boxes, 50 % background).

Each file holds ``data`` (S, 2048, 3) float32, ``label`` (S,) class ids and ``mask`` (S, 2048) per-point
object/background flags (checked for shape, not used for classification). Shapes are read lazily (the
PB_T50_RS train file is ~280 MB). Sampling and normalisation are those of ModelNet40 (``first`` 1024 points,
centred on the unit sphere, as selfsup's loader). Bad files raise one ``DataFormatError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from selfsup_pcd.data.base import PointCloudDataModule
from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.modelnet40 import SAMPLINGS, ModelNet40Dataset, _LazyH5

# The official label order of the h5 files.
CLASS_NAMES = [
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table",
    "bed", "pillow", "sink", "sofa", "toilet",
]  # fmt: skip
VARIANTS = {
    "obj_only": ("main_split_nobg", "objectdataset"),
    "obj_bg": ("main_split", "objectdataset"),
    "pb_t50_rs": ("main_split", "objectdataset_augmentedrot_scale75"),
}
_FILE_PREFIX = {"train": "training", "test": "test"}
_DATASET = "ScanObjectNN"
SOURCE = (
    "h5_files.zip of ScanObjectNN (Uy et al., ICCV 2019), https://hkust-vgd.github.io/scanobjectnn/ "
    "(download by request to the authors; research use only)."
)
LAYOUT = """\
<root>/                                        (h5_files/ of the release)
├── main_split/                                with background
│   ├── training_objectdataset.h5, test_objectdataset.h5                        OBJ_BG
│   └── training_objectdataset_augmentedrot_scale75.h5, test_..._scale75.h5     PB_T50_RS
└── main_split_nobg/                           without background
    └── training_objectdataset.h5, test_objectdataset.h5                        OBJ_ONLY
each file: data (S,2048,3) float32, label (S,) class id 0..14, mask (S,2048)"""


def variant_file(root: str | Path, variant: str, split: str) -> Path:
    """Path of the h5 file of ``variant`` (obj_only, obj_bg, pb_t50_rs) and ``split`` (train, test)."""
    folder, stem = VARIANTS[variant]
    return Path(root) / folder / f"{_FILE_PREFIX[split]}_{stem}.h5"


class H5File:
    """One ScanObjectNN h5 file, checked for keys, shapes and labels; shapes are read lazily."""

    def __init__(self, path: Path, num_classes: int) -> None:
        self.file_path = path
        try:
            with h5py.File(path, "r") as f:
                for key in ("data", "label"):
                    if key not in f:
                        raise DataFormatError(path, f"has no dataset {key!r} (keys: {sorted(f)})")
                data, label = f["data"], f["label"]
                if data.ndim != 3 or data.shape[2] < 3:
                    raise DataFormatError(path, f"'data' has shape {data.shape}, expected (S, P, 3)")
                if label.shape not in ((data.shape[0],), (data.shape[0], 1)):
                    raise DataFormatError(path, f"'label' has shape {label.shape} but 'data' holds {data.shape[0]} "
                                                "shapes")
                if "mask" in f and f["mask"].shape != data.shape[:2]:
                    raise DataFormatError(path, f"'mask' has shape {f['mask'].shape}, expected {data.shape[:2]}")
                self.labels = np.asarray(label[:], dtype=np.int64).reshape(-1)
                self._rows = int(data.shape[1])
        except OSError as err:
            raise DataFormatError(path, f"cannot be read as HDF5, truncated or corrupt? ({err})") from None
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= num_classes))
        if len(bad):
            raise DataFormatError(path, f"shape {bad[0]} has label {self.labels[bad[0]]}, not a class id "
                                        f"0..{num_classes - 1}")
        self.ids = [f"{path.name}#{k}" for k in range(len(self.labels))]
        self._handle = _LazyH5(path)

    def check_finite(self, block: int = 512) -> None:
        try:
            with h5py.File(self.file_path, "r") as f:
                values = f["data"]
                for start in range(0, values.shape[0], block):
                    ok = np.isfinite(values[start : start + block, :, :3]).all(axis=(1, 2))
                    if not ok.all():
                        raise DataFormatError(self.file_path, f"shape {start + int(np.argmin(ok))} has NaN or inf "
                                                              "coordinates")
        except OSError as err:
            raise DataFormatError(self.file_path, f"cannot be read as HDF5, truncated or corrupt? ({err})") from None

    # the protocol ModelNet40Dataset reads from
    def path(self, k: int) -> Path:
        return self.file_path

    def num_rows(self) -> np.ndarray:
        return np.full(len(self.labels), self._rows, dtype=np.int64)

    def read(self, k: int, channels: int) -> np.ndarray:
        if channels != 3:
            raise DataFormatError(self.file_path, "ScanObjectNN has no normals; set use_normals=false")
        try:
            points = self._handle.get()["data"][k, :, :3]
        except OSError as err:
            raise DataFormatError(self.file_path, f"cannot read shape {k} ({err})") from None
        if not np.isfinite(points).all():
            raise DataFormatError(self.file_path, f"shape {k} has NaN or inf coordinates")
        return points.astype(np.float32, copy=False)


class ScanObjectNNDataModule(PointCloudDataModule):
    """ScanObjectNN ``variant`` (obj_only | obj_bg | pb_t50_rs); batches as ModelNet40's (points, label, index).

    There is no validation split (``val_split`` defaults to test, as in the papers).
    """

    def __init__(
        self,
        root: str | Path,
        variant: str = "obj_bg",
        num_points: int = 1024,
        sampling: str = "first",
        normalize: bool = True,
        use_normals: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        variant = variant.lower()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if use_normals:
            raise ValueError("ScanObjectNN has no normals; set use_normals=false")
        self.root = Path(root).expanduser()
        self.variant, self.num_points, self.sampling, self.normalize = variant, num_points, sampling, normalize

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES)

    def file(self, split: str) -> H5File:
        path = variant_file(self.root, self.variant, split)
        if not path.is_file():
            missing = path if path.parent.is_dir() else path.parent
            raise DatasetLayoutError(_DATASET, missing, LAYOUT + f"\n(variant {self.variant})", SOURCE)
        return H5File(path, len(CLASS_NAMES))

    def prepare_data(self) -> None:
        for split in ("train", "test"):
            self.file(split).check_finite()

    def build_dataset(self, split: str) -> ModelNet40Dataset:
        source = self.file(split)
        return ModelNet40Dataset(source, np.arange(len(source.labels)), num_points=self.num_points,
                                 use_normals=False, sampling=self.sampling, normalize=self.normalize, seed=self.seed)

    def labels(self, split: str) -> np.ndarray:
        """Labels of ``split`` in dataset order, read without loading any points."""
        return self.file(self.val_split if split == "val" else split).labels
