"""ModelNet40 classification data, read from either of its two native layouts.

* ``modelnet40_normal_resampled`` (txt, PointNet++ release): one text file per shape. Parsing ~12k text files
  every run is slow, so each split is parsed once into an HDF5 cache (one file per split, in ``cache_dir``,
  never next to the data, which may be read-only). The cache stores a fingerprint of its sources and is
  rebuilt when they change; it is written to a temporary name and renamed, so an error or a kill never
  leaves a half-written cache under the final name.
* ``modelnet40_ply_hdf5_2048`` (h5, PointNet release): read in place.

HDF5 files are opened lazily, once per process, so DataLoader workers (fork or spawn) each get their own
handle. Bad data raises one ``DataFormatError`` naming the file (and line), a missing file or folder one
``DatasetLayoutError`` showing the expected layout and where the dataset is published.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from selfsup_pcd.data.base import PointCloudDataModule
from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.h5_cache import H5SplitCache

# Bump when the cache content or layout changes: old caches are then rebuilt.
CACHE_FORMAT_VERSION = 1
FORMATS = ("auto", "h5", "txt")
SAMPLINGS = ("first", "random", "fps")
CACHE_SPLITS = ("train", "test")

# The official order (``modelnet40_shape_names.txt``); the label id is the index.
SHAPE_NAMES_40 = [
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone",
    "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp",
    "laptop", "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink",
    "sofa", "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
]  # fmt: skip

_DATASET = "ModelNet40"
_MIRROR_NOTE = (
    "This Stanford URL is a historic mirror and is often offline; look for a copy of the same zip "
    "(same name, same file count) elsewhere. ModelNet is for research use only (cite Wu et al., CVPR 2015)."
)
TXT_SOURCE = (
    "modelnet40_normal_resampled.zip, released with PointNet++ (Qi et al., 2017): "
    f"https://shapenet.cs.stanford.edu/media/modelnet40_normal_resampled.zip\n{_MIRROR_NOTE}"
)
H5_SOURCE = (
    "modelnet40_ply_hdf5_2048.zip, released with PointNet (Qi et al., 2017): "
    f"https://shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip\n{_MIRROR_NOTE}"
)
TXT_LAYOUT = """\
<root>/                                (format "txt": modelnet40_normal_resampled)
├── modelnet40_shape_names.txt         40 class names; label = line index (airplane = 0)
├── modelnet40_train.txt               one shape id per line, e.g. airplane_0001
├── modelnet40_test.txt
├── airplane/
│   ├── airplane_0001.txt              one point per line: x,y,z,nx,ny,nz
│   └── ...
└── ... one folder per class"""
H5_LAYOUT = """\
<root>/                                (format "h5": modelnet40_ply_hdf5_2048)
├── train_files.txt                    h5 files of the split, one per line (resolved by file name)
├── test_files.txt
├── shape_names.txt                    optional: 40 class names, label = line index
├── ply_data_train0.h5 ... ply_data_train4.h5    datasets data (N,2048,3) float32, label (N,1) int
└── ply_data_test0.h5, ply_data_test1.h5         (optional: normal (N,2048,3))"""

_CACHE_KEYS = {"points", "num_rows", "label", "id"}
_ID_PATTERN = re.compile(r"^(?P<cls>.+)_(?P<num>\d+)$")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/selfsup_pcd/modelnet40`` (``~/.cache`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "selfsup_pcd" / "modelnet40"


def detect_format(root: str | Path) -> str:
    """'txt' or 'h5', from the files present in ``root``."""
    root = Path(root)
    both = f"{TXT_LAYOUT}\n\nor\n\n{H5_LAYOUT}"
    sources = f"\n- {TXT_SOURCE}\n- {H5_SOURCE}"
    if not root.is_dir():
        raise DatasetLayoutError(_DATASET, root, both, sources)
    if (root / "modelnet40_shape_names.txt").exists() or (root / "modelnet40_train.txt").exists():
        return "txt"
    if (root / "train_files.txt").exists() or any(root.glob("ply_data_*.h5")):
        return "h5"
    raise DatasetLayoutError(
        _DATASET, root / "modelnet40_train.txt (txt layout) or train_files.txt (h5 layout)", both, sources
    )


# -- small helpers -----------------------------------------------------------------------------------
def _read_list(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines of a list file as (1-based line number, stripped text)."""
    with open(path, encoding="utf-8") as fh:
        return [(n, line.strip()) for n, line in enumerate(fh, 1) if line.strip()]


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centres xyz on their centroid and scales them into the unit ball; normals stay (directions)."""
    out = np.array(points, dtype=np.float32, copy=True)
    xyz = out[:, :3]
    xyz -= xyz.mean(axis=0)
    radius = float(np.linalg.norm(xyz, axis=1).max())
    if radius > 0:
        xyz /= radius
    return out


def farthest_point_sampling(xyz: np.ndarray, num_points: int, start: int = 0) -> np.ndarray:
    """Indices of ``num_points`` points chosen greedily farthest from those already chosen, from ``start``."""
    xyz = np.asarray(xyz, dtype=np.float64)
    chosen = np.empty(num_points, dtype=np.int64)
    chosen[0] = start
    nearest = np.full(len(xyz), np.inf)
    for j in range(1, num_points):
        diff = xyz - xyz[chosen[j - 1]]
        np.minimum(nearest, np.einsum("ij,ij->i", diff, diff), out=nearest)
        chosen[j] = int(nearest.argmax())
    return chosen


class _LazyH5:
    """An HDF5 file opened on first use in each process (h5py handles survive neither fork nor pickle)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def get(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise DataFormatError(self.path, f"cannot be read as HDF5 ({err})") from None
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        return {"path": self.path, "_file": None, "_pid": None}


# -- txt format (modelnet40_normal_resampled) ----------------------------------------------------------
def read_txt_points(path: str | Path) -> np.ndarray:
    """All rows of one shape file as (R, 6) float32; any defect raises one error with its line number."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns on empty files; handled below
            rows = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2, comments=None)
    except ValueError:  # includes UnicodeDecodeError
        raise _locate_txt_error(path) from None
    if rows.shape[0] == 0:
        raise DataFormatError(path, "file has no points")
    if rows.shape[1] != 6 or not np.isfinite(rows).all():
        raise _locate_txt_error(path)
    return rows


def _locate_txt_error(path: Path) -> DataFormatError:
    """Slow line-by-line rescan, only after the fast parser failed, to name the first bad line."""
    with open(path, encoding="utf-8", errors="replace") as fh, np.errstate(over="ignore"):
        for lineno, line in enumerate(fh, 1):
            text = line.strip()
            if not text:
                continue
            fields = text.split(",")
            if len(fields) != 6:
                return DataFormatError(path, f"row has {len(fields)} columns, expected 6 (x,y,z,nx,ny,nz)", lineno)
            for column, field in enumerate(fields, 1):
                try:
                    value = np.float32(float(field))
                except ValueError:
                    return DataFormatError(path, f"non-numeric value {field.strip()!r} in column {column}", lineno)
                if not np.isfinite(value):
                    return DataFormatError(path, f"non-finite value {field.strip()!r} in column {column}", lineno)
    return DataFormatError(path, "cannot be parsed as comma-separated floats x,y,z,nx,ny,nz")


class TxtSplit(NamedTuple):
    ids: list[str]
    labels: np.ndarray
    paths: list[Path]
    lines: list[int]  # line of each id in the split list, for error messages


class TxtLayout:
    """The txt tree: class names, split lists and the file of each shape id."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _require(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            raise DatasetLayoutError(_DATASET, path, TXT_LAYOUT, TXT_SOURCE)
        return path

    def class_names(self) -> list[str]:
        path = self._require("modelnet40_shape_names.txt")
        names = [name for _, name in _read_list(path)]
        if not names:
            raise DataFormatError(path, "lists no class names")
        return names

    def split(self, split: str) -> TxtSplit:
        """Ids, labels and files of ``split``, in list order; checks the ids, not the files."""
        list_path = self._require(f"modelnet40_{split}.txt")
        label_of = {name: i for i, name in enumerate(self.class_names())}
        entries = TxtSplit([], [], [], [])
        for lineno, shape_id in _read_list(list_path):
            match = _ID_PATTERN.match(shape_id)
            if match is None:
                raise DataFormatError(list_path, f"shape id {shape_id!r} is not <class>_<number>", lineno)
            cls = match["cls"]
            if cls not in label_of:
                raise DataFormatError(
                    list_path, f"class {cls!r} of {shape_id!r} is not in modelnet40_shape_names.txt", lineno
                )
            entries.ids.append(shape_id)
            entries.labels.append(label_of[cls])
            entries.paths.append(self.root / cls / f"{shape_id}.txt")
            entries.lines.append(lineno)
        if not entries.ids:
            raise DataFormatError(list_path, "lists no shapes")
        return entries._replace(labels=np.asarray(entries.labels, dtype=np.int64))

    def fingerprint(self, split: str) -> str:
        """Hash of what the cache of ``split`` depends on; also checks that every listed file exists."""
        digest = hashlib.sha256(f"modelnet40-txt-cache v{CACHE_FORMAT_VERSION}\n".encode())
        list_name = f"modelnet40_{split}.txt"
        for name in ("modelnet40_shape_names.txt", list_name):
            digest.update(self._require(name).read_bytes())
        entries = self.split(split)
        for shape_id, path, lineno in zip(entries.ids, entries.paths, entries.lines):
            try:
                stat = path.stat()
            except FileNotFoundError:
                missing = path if path.parent.is_dir() else path.parent
                note = f"\n({path.name} is listed in {list_name}, line {lineno})"
                raise DatasetLayoutError(_DATASET, missing, TXT_LAYOUT + note, TXT_SOURCE) from None
            digest.update(f"{shape_id} {stat.st_size} {stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


class TxtCache(H5SplitCache):
    """The one-time HDF5 cache of one txt split: ``points`` (S, R, 6), ``num_rows``, ``label``, ``id``."""

    dataset = "ModelNet40"
    keys = frozenset(_CACHE_KEYS)
    format_version = CACHE_FORMAT_VERSION

    def _write(self, f: h5py.File) -> None:
        entries = self.layout.split(self.split)
        ids = entries.ids
        num_rows = np.zeros(len(ids), dtype=np.int64)
        points = None
        desc = f"Caching ModelNet40 {self.split} ({self.path.name})"
        with tqdm(entries.paths, desc=desc, unit="shape") as bar:
            for i, path in enumerate(bar):
                rows = read_txt_points(path)
                points = self._store(f, points, i, rows, len(ids))
                num_rows[i] = len(rows)
        f.create_dataset("num_rows", data=num_rows)
        f.create_dataset("label", data=entries.labels)
        f.create_dataset("id", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())

    @staticmethod
    def _store(f: h5py.File, points: h5py.Dataset | None, i: int, rows: np.ndarray, count: int) -> h5py.Dataset:
        """Writes shape ``i``; rows per file are known only once read, and later files may have more."""
        if points is None:
            points = f.create_dataset(
                "points", shape=(count, len(rows), 6), maxshape=(count, None, 6),
                chunks=(1, min(len(rows), 16384), 6), dtype=np.float32,
            )  # fmt: skip
        if len(rows) > points.shape[1]:
            points.resize(len(rows), axis=1)
        points[i, : len(rows)] = rows
        return points


# -- sources: what a dataset reads one shape from ----------------------------------------------------
class _Source(Protocol):
    labels: np.ndarray
    ids: list[str]

    def path(self, k: int) -> Path: ...

    def num_rows(self) -> np.ndarray: ...

    def read(self, k: int, channels: int) -> np.ndarray: ...


class _TxtCacheSource:
    def __init__(self, cache_path: Path, ids: list[str], labels: np.ndarray, paths: list[Path]) -> None:
        self.ids, self.labels, self._paths = ids, labels, paths
        self._file = _LazyH5(cache_path)
        with h5py.File(cache_path, "r") as f:
            self._num_rows = f["num_rows"][:]

    def path(self, k: int) -> Path:
        return self._paths[k]

    def num_rows(self) -> np.ndarray:
        return self._num_rows

    def read(self, k: int, channels: int) -> np.ndarray:
        return self._file.get()["points"][k, : self._num_rows[k], :channels]


class H5Split:
    """The h5 files of one split, checked for keys and shapes; points are read lazily."""

    def __init__(self, root: Path, split: str, use_normals: bool) -> None:
        self.root, self.split, self.use_normals = root, split, use_normals
        list_name = f"{split}_files.txt"
        list_path = root / list_name
        if not list_path.is_file():
            raise DatasetLayoutError(_DATASET, list_path, H5_LAYOUT, H5_SOURCE)
        self.files: list[Path] = []
        for lineno, entry in _read_list(list_path):
            path = root / Path(entry).name  # the zip lists data/modelnet40_ply_hdf5_2048/<name>
            if not path.is_file():
                note = f"\n({path.name} is listed in {list_name}, line {lineno})"
                raise DatasetLayoutError(_DATASET, path, H5_LAYOUT + note, H5_SOURCE)
            self.files.append(path)
        if not self.files:
            raise DataFormatError(list_path, "lists no h5 files")
        per_file = [self._inspect(path) for path in self.files]
        self._rows = np.array([rows for rows, _ in per_file], dtype=np.int64)
        file_labels = [labels for _, labels in per_file]
        self.labels = np.concatenate(file_labels)
        self._file_of = np.repeat(np.arange(len(self.files)), [len(x) for x in file_labels])
        self._start = np.concatenate([[0], np.cumsum([len(x) for x in file_labels])[:-1]])
        self.ids = [f"{self.files[f].name}#{k - self._start[f]}" for k, f in enumerate(self._file_of)]
        self._handles = [_LazyH5(path) for path in self.files]

    def _inspect(self, path: Path) -> tuple[int, np.ndarray]:
        """(points per shape, labels) of one file, after checking its keys and shapes."""
        try:
            with h5py.File(path, "r") as f:
                for key in ("data", "label"):
                    if key not in f:
                        raise DataFormatError(path, f"has no dataset {key!r} (keys: {sorted(f)})")
                data, label = f["data"], f["label"]
                if data.ndim != 3 or data.shape[2] != 3:
                    raise DataFormatError(path, f"'data' has shape {data.shape}, expected (N, P, 3)")
                if label.shape not in ((data.shape[0],), (data.shape[0], 1)):
                    raise DataFormatError(path, f"'label' has shape {label.shape}, expected ({data.shape[0]}, 1)")
                if self.use_normals:
                    if "normal" not in f:
                        raise DataFormatError(
                            path,
                            "has no 'normal' dataset but use_normals=True; set use_normals=False or use the "
                            "txt format (modelnet40_normal_resampled), which has normals",
                        )
                    if f["normal"].shape != data.shape:
                        raise DataFormatError(path, f"'normal' has shape {f['normal'].shape}, expected {data.shape}")
                labels = np.asarray(label[:], dtype=np.int64).reshape(-1)
                return int(data.shape[1]), labels
        except OSError as err:
            raise DataFormatError(path, f"cannot be read as HDF5, truncated or corrupt? ({err})") from None

    def check_finite(self, block: int = 512) -> None:
        """Scans every coordinate once (prepare_data); per-item reads check again cheaply."""
        keys = ("data", "normal") if self.use_normals else ("data",)
        for path in self.files:
            try:
                with h5py.File(path, "r") as f:
                    for key in keys:
                        values = f[key]
                        for start in range(0, values.shape[0], block):
                            ok = np.isfinite(values[start : start + block]).all(axis=(1, 2))
                            if not ok.all():
                                row = start + int(np.argmin(ok))
                                raise DataFormatError(path, f"shape {row} of {key!r} has NaN or inf coordinates")
            except OSError as err:
                raise DataFormatError(path, f"cannot be read as HDF5, truncated or corrupt? ({err})") from None

    def path(self, k: int) -> Path:
        return self.files[self._file_of[k]]

    def num_rows(self) -> np.ndarray:
        return self._rows[self._file_of]

    def read(self, k: int, channels: int) -> np.ndarray:
        f, row = self._file_of[k], k - self._start[self._file_of[k]]
        try:
            handle = self._handles[f].get()
            points = handle["data"][row]
            if channels == 6:
                points = np.concatenate([points, handle["normal"][row]], axis=1)
        except OSError as err:
            raise DataFormatError(self.files[f], f"cannot read shape {row} ({err})") from None
        if not np.isfinite(points).all():
            raise DataFormatError(self.files[f], f"shape {row} has NaN or inf coordinates")
        return points.astype(np.float32, copy=False)


# -- dataset --------------------------------------------------------------------------------------
class ModelNet40Dataset(Dataset):
    """Shapes ``indices`` of one split, each sampled to ``num_points`` and optionally normalised."""

    def __init__(
        self,
        source: _Source,
        indices: np.ndarray,
        num_points: int,
        use_normals: bool,
        sampling: str,
        normalize: bool,
        seed: int,
    ) -> None:
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        self.num_points, self.channels = num_points, 6 if use_normals else 3
        self.sampling, self.normalize, self.seed = sampling, normalize, seed
        self.labels = source.labels[self.indices]
        self.ids = [source.ids[k] for k in self.indices]
        self._fps_memo: dict[int, np.ndarray] = {}
        rows = source.num_rows()[self.indices]
        short = np.flatnonzero(rows < num_points)
        if len(short):
            k = int(self.indices[short[0]])
            others = f" (and {len(short) - 1} more files)" if len(short) > 1 else ""
            message = f"{source.ids[k]} has {rows[short[0]]} points, fewer than num_points={num_points}"
            raise DataFormatError(source.path(k), message + others)

    def __len__(self) -> int:
        return len(self.indices)

    def _select(self, k: int, points: np.ndarray) -> np.ndarray:
        if self.sampling == "first":
            return points[: self.num_points]
        if self.sampling == "random":  # fixed per shape; training-time resampling is RandomSubsample
            rng = np.random.default_rng([self.seed, k])
            return points[np.sort(rng.choice(len(points), self.num_points, replace=False))]
        if k not in self._fps_memo:
            self._fps_memo[k] = farthest_point_sampling(points[:, :3], self.num_points).astype(np.int32)
        return points[self._fps_memo[k]]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k = int(self.indices[index])
        points = self._select(k, self.source.read(k, self.channels))
        points = normalize_unit_sphere(points) if self.normalize else np.array(points, dtype=np.float32)
        return {
            "points": torch.from_numpy(points),
            "label": torch.tensor(self.labels[index], dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }


# -- datamodule -----------------------------------------------------------------------------------
class ModelNet40DataModule(PointCloudDataModule):
    """ModelNet40 in the txt (normal resampled) or h5 (ply_hdf5_2048) layout, detected unless given.

    ``classes`` keeps only the named classes; labels keep their 40-class ids so heads and metrics stay
    comparable with full runs. ``sampling``: "first" rows (the papers' loaders), "random" (a fixed subset
    per shape, seeded by ``(seed, shape)``) or "fps" (farthest point sampling from row 0, memoised).
    """

    def __init__(
        self,
        root: str | Path,
        format: str = "auto",
        num_points: int = 1024,
        use_normals: bool = False,
        sampling: str = "first",
        normalize: bool = True,
        classes: Sequence[str] | None = None,
        cache_dir: str | Path | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if num_points < 1:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.root = Path(root).expanduser()
        self.requested_format = format
        self.num_points, self.use_normals, self.sampling, self.normalize = (
            num_points,
            use_normals,
            sampling,
            normalize,
        )
        self.classes = list(classes) if classes is not None else None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self._format: str | None = None
        self._class_names: list[str] | None = None

    @property
    def format(self) -> str:
        """'txt' or 'h5' (detected on first use, as the root may not exist when the config is built)."""
        if self._format is None:
            self._format = detect_format(self.root) if self.requested_format == "auto" else self.requested_format
        return self._format

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            if self.format == "txt":
                self._class_names = TxtLayout(self.root).class_names()
            elif (self.root / "shape_names.txt").is_file():
                self._class_names = [name for _, name in _read_list(self.root / "shape_names.txt")]
            else:
                self._class_names = list(SHAPE_NAMES_40)
        return self._class_names

    def _kept_classes(self) -> np.ndarray | None:
        if self.classes is None:
            return None
        unknown = [name for name in self.classes if name not in self.class_names]
        if unknown:
            raise ValueError(f"unknown ModelNet40 classes {unknown}; known: {self.class_names}")
        return np.array([self.class_names.index(name) for name in self.classes], dtype=np.int64)

    def prepare_data(self) -> None:
        """Checks the layout and builds the txt caches (or scans the h5 files) once, before any setup."""
        for split in CACHE_SPLITS:
            if self.format == "txt":
                TxtCache(TxtLayout(self.root), split, self.cache_dir).ensure()
            else:
                H5Split(self.root, split, self.use_normals).check_finite()

    def _source(self, split: str) -> _Source:
        if self.format == "txt":
            layout = TxtLayout(self.root)
            cache_path = TxtCache(layout, split, self.cache_dir).ensure()
            entries = layout.split(split)
            return _TxtCacheSource(cache_path, entries.ids, entries.labels, entries.paths)
        source = H5Split(self.root, split, self.use_normals)
        bad = np.flatnonzero((source.labels < 0) | (source.labels >= len(self.class_names)))
        if len(bad):
            k = int(bad[0])
            raise DataFormatError(source.path(k), f"label {source.labels[k]} of {source.ids[k]} is not a class id")
        return source

    def _indices(self, labels: np.ndarray) -> np.ndarray:
        kept = self._kept_classes()
        return np.arange(len(labels)) if kept is None else np.flatnonzero(np.isin(labels, kept))

    def build_dataset(self, split: str) -> ModelNet40Dataset:
        source = self._source(split)
        return ModelNet40Dataset(
            source,
            self._indices(source.labels),
            num_points=self.num_points,
            use_normals=self.use_normals,
            sampling=self.sampling,
            normalize=self.normalize,
            seed=self.seed,
        )

    def labels(self, split: str) -> np.ndarray:
        """Labels of ``split`` in dataset order (after ``classes``), read without loading any points."""
        split = self.val_split if split == "val" else split
        if self.format == "txt":
            labels = TxtLayout(self.root).split(split).labels
        else:
            labels = H5Split(self.root, split, use_normals=False).labels
        return labels[self._indices(labels)]
