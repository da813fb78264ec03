"""ShapeNetPart part segmentation (16 categories, 50 parts), read from either of its native releases.

* ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` (txt, PointNet++ release): one text file per
  shape, rows ``x y z nx ny nz part``. Parsing ~17k text files every run is slow, so each split is parsed
  once into an HDF5 cache in ``cache_dir`` (ragged: shapes have different point counts), written to a
  temporary name and renamed, and rebuilt when a source file changes (fingerprint of names, sizes, mtimes).
* ``shapenet_part_seg_hdf5_data`` (h5, PointNet release): ``hdf5_data/ply_data_*.h5`` read in place.

Part ids are the global ids 0..49, contiguous per category in category order (Airplane 0-3, Bag 4-5, ...,
Table 47-49). Batches: ``points`` (B, N, C) float32 (xyz [+ normals]), ``seg`` (B, N) int64 part ids,
``category`` (B,) int64 (also as ``label``, so classification-style code can read it) and ``index``.
Bad data raises one ``DataFormatError`` naming the file (and the line, for txt); a missing file one
``DatasetLayoutError`` showing the expected layout and where the dataset is published.
"""

from __future__ import annotations

import hashlib
import json
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
from selfsup_pcd.data.modelnet40 import _LazyH5, default_cache_dir, normalize_unit_sphere
from selfsup_pcd.data.transforms import RandomSubsample, ShufflePoints

CACHE_FORMAT_VERSION = 1
FORMATS = ("auto", "h5", "txt")
SAMPLINGS = ("first", "random")
SPLITS = ("train", "val", "test")


class Category(NamedTuple):
    name: str
    synset: str
    num_parts: int


# The standard order (synsetoffset2category.txt, all_object_categories.txt); category id = index.
CATEGORIES = [
    Category("Airplane", "02691156", 4), Category("Bag", "02773838", 2), Category("Cap", "02954340", 2),
    Category("Car", "02958343", 4), Category("Chair", "03001627", 4), Category("Earphone", "03261776", 3),
    Category("Guitar", "03467517", 3), Category("Knife", "03624134", 2), Category("Lamp", "03636649", 4),
    Category("Laptop", "03642806", 2), Category("Motorbike", "03790512", 6), Category("Mug", "03797390", 2),
    Category("Pistol", "03948459", 3), Category("Rocket", "04099429", 3), Category("Skateboard", "04225987", 3),
    Category("Table", "04379243", 3),
]  # fmt: skip
CATEGORY_NAMES = [c.name for c in CATEGORIES]
PARTS_PER_CATEGORY = [c.num_parts for c in CATEGORIES]
NUM_PARTS = sum(PARTS_PER_CATEGORY)  # 50
_PARTS_OF_SYNSET = {c.synset: c.num_parts for c in CATEGORIES}

_DATASET = "ShapeNetPart"
_NOTE = (
    "The Stanford URL is a historic mirror and is often offline; look for a copy of the same zip elsewhere. "
    "ShapeNet is for research use only (cite Yi et al., SIGGRAPH Asia 2016 and Chang et al., 2015)."
)
TXT_SOURCE = (
    "shapenetcore_partanno_segmentation_benchmark_v0_normal.zip, released with PointNet++ (Qi et al., 2017): "
    f"https://shapenet.cs.stanford.edu/media/shapenetcore_partanno_segmentation_benchmark_v0_normal.zip\n{_NOTE}"
)
H5_SOURCE = (
    "shapenet_part_seg_hdf5_data.zip, released with PointNet (Qi et al., 2017): "
    f"https://shapenet.cs.stanford.edu/media/shapenet_part_seg_hdf5_data.zip\n{_NOTE}"
)
TXT_LAYOUT = """\
<root>/                                  (format "txt": shapenetcore_partanno_segmentation_benchmark_v0_normal)
├── synsetoffset2category.txt            "Airplane<TAB>02691156", one category per line; id = line index
├── train_test_split/
│   ├── shuffled_train_file_list.json    ["shape_data/02691156/<shape id>", ...]
│   ├── shuffled_val_file_list.json
│   └── shuffled_test_file_list.json
└── 02691156/<shape id>.txt              one point per line: x y z nx ny nz part (part = global id 0..49)"""
H5_LAYOUT = """\
<root>/  or  <root>/hdf5_data/           (format "h5": shapenet_part_seg_hdf5_data)
├── all_object_categories.txt            "Airplane 02691156", one category per line; label = line index
├── overallid_to_catid_partid.json       optional: [[synset, part number], ...] for part ids 0..49
├── train_hdf5_file_list.txt             h5 files of the split, one per line (resolved by file name)
├── val_hdf5_file_list.txt, test_hdf5_file_list.txt
└── ply_data_train0.h5 ...               data (S,2048,3) float32, label (S,1) category, pid (S,2048) part id"""


# -- category tables --------------------------------------------------------------------------------------
def _category_lines(path: Path, what: str) -> list[tuple[str, str]]:
    """(name, synset) per line of a category file; any defect names the file and line."""
    if not path.is_file():
        layout, source = (TXT_LAYOUT, TXT_SOURCE) if what == "txt" else (H5_LAYOUT, H5_SOURCE)
        raise DatasetLayoutError(_DATASET, path, layout, source)
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not re.fullmatch(r"\d{8}", fields[1]):
                raise DataFormatError(path, f"expected '<Category> <8-digit synset>', got {line.strip()!r}", lineno)
            if fields[1] not in _PARTS_OF_SYNSET:
                raise DataFormatError(path, f"synset {fields[1]} is not a ShapeNetPart category", lineno)
            out.append((fields[0], fields[1]))
    if not out:
        raise DataFormatError(path, "lists no categories")
    return out


class PartTable(NamedTuple):
    """Categories in file order and the global part-id range [start, stop) of each."""

    names: list[str]
    synsets: list[str]
    parts_per_category: list[int]

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.parts_per_category)[:-1]]).astype(np.int64)

    @property
    def stops(self) -> np.ndarray:
        return np.cumsum(self.parts_per_category).astype(np.int64)

    @classmethod
    def from_lines(cls, lines: list[tuple[str, str]]) -> PartTable:
        return cls([n for n, _ in lines], [s for _, s in lines], [_PARTS_OF_SYNSET[s] for _, s in lines])


def _check_part_json(path: Path, table: PartTable) -> None:
    """``overallid_to_catid_partid.json`` must agree with the category order and the part counts."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        synsets = [str(e[0]) for e in entries]
    except (ValueError, TypeError, IndexError, KeyError) as err:
        raise DataFormatError(path, f"not a JSON list of [synset, part] pairs ({err})") from None
    expected = [s for s, n in zip(table.synsets, table.parts_per_category) for _ in range(n)]
    if synsets != expected:
        raise DataFormatError(path, f"part ids do not follow the category order of all_object_categories.txt "
                                    f"with {table.parts_per_category} parts per category")


# -- sources: what a dataset reads one shape from ------------------------------------------------------
class _Source(Protocol):
    ids: list[str]
    categories: np.ndarray

    def path(self, k: int) -> Path: ...

    def num_rows(self, k: int) -> int: ...

    def read(self, k: int, channels: int) -> tuple[np.ndarray, np.ndarray]: ...


# -- txt release --------------------------------------------------------------------------------------------
class TxtEntries(NamedTuple):
    ids: list[str]
    paths: list[Path]
    categories: np.ndarray


def read_txt_shape(path: str | Path, part_range: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows (R, 6) float32, part ids (R,) int64) of one shape file; any defect names the file and line."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns on empty files; handled below
            rows = np.loadtxt(path, dtype=np.float64, ndmin=2, comments=None)
    except ValueError:  # wrong column count, non-numeric text, bad encoding
        raise _locate_txt_error(path, part_range) from None
    if rows.shape[0] == 0:
        raise DataFormatError(path, "file has no points")
    if rows.shape[1] != 7 or not np.isfinite(rows).all():
        raise _locate_txt_error(path, part_range)
    part = rows[:, 6]
    lo, hi = part_range
    if not ((part == np.round(part)) & (part >= lo) & (part < hi)).all():
        raise _locate_txt_error(path, part_range)
    return rows[:, :6].astype(np.float32), part.astype(np.int64)


def _locate_txt_error(path: Path, part_range: tuple[int, int]) -> DataFormatError:
    """Slow line-by-line rescan, only after the fast checks failed, to name the first bad line."""
    lo, hi = part_range
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 7:
                return DataFormatError(path, f"row has {len(fields)} columns, expected 7 (x y z nx ny nz part)",
                                       lineno)
            try:
                values = [float(f) for f in fields]
            except ValueError:
                return DataFormatError(path, f"non-numeric value in {line.strip()!r}", lineno)
            if not np.isfinite(values).all():
                return DataFormatError(path, f"non-finite value in {line.strip()!r}", lineno)
            part = values[6]
            if part != round(part) or not lo <= part < hi:
                return DataFormatError(
                    path, f"part id {fields[6]} is not a part of this shape's category (ids {lo}..{hi - 1})", lineno
                )
    return DataFormatError(path, "cannot be parsed (no bad line found on rescan)")


class TxtLayout:
    """The txt release's category file and split lists."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.table = PartTable.from_lines(_category_lines(root / "synsetoffset2category.txt", "txt"))

    def list_path(self, split: str) -> Path:
        return self.root / "train_test_split" / f"shuffled_{split}_file_list.json"

    def split(self, split: str) -> TxtEntries:
        path = self.list_path(split)
        if not path.is_file():
            raise DatasetLayoutError(_DATASET, path, TXT_LAYOUT, TXT_SOURCE)
        try:
            listed = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(listed, list) or not all(isinstance(x, str) for x in listed):
                raise ValueError("expected a JSON list of strings")
        except ValueError as err:
            raise DataFormatError(path, f"not a JSON list of shape paths ({err})") from None
        category_of = {s: i for i, s in enumerate(self.table.synsets)}
        ids, paths, cats = [], [], []
        for entry in listed:
            parts = entry.strip("/").split("/")
            if len(parts) < 2 or parts[-2] not in category_of:
                raise DataFormatError(path, f"entry {entry!r} is not 'shape_data/<synset>/<shape id>' with a synset "
                                            "of synsetoffset2category.txt")
            synset, shape = parts[-2], parts[-1]
            ids.append(f"{synset}/{shape}")
            paths.append(self.root / synset / f"{shape}.txt")
            cats.append(category_of[synset])
        if not ids:
            raise DataFormatError(path, "lists no shapes")
        return TxtEntries(ids, paths, np.asarray(cats, dtype=np.int64))

    def fingerprint(self, split: str) -> str:
        """Hash of what the cache of ``split`` depends on; also checks that every listed file exists."""
        digest = hashlib.sha256(f"shapenetpart-txt-cache v{CACHE_FORMAT_VERSION}\n".encode())
        digest.update((self.root / "synsetoffset2category.txt").read_bytes())
        digest.update(self.list_path(split).read_bytes())
        entries = self.split(split)
        for shape_id, path in zip(entries.ids, entries.paths):
            try:
                stat = path.stat()
            except FileNotFoundError:
                note = f"\n({shape_id} is listed in {self.list_path(split).name})"
                raise DatasetLayoutError(_DATASET, path, TXT_LAYOUT + note, TXT_SOURCE) from None
            digest.update(f"{shape_id} {stat.st_size} {stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


_CACHE_KEYS = {"points", "seg", "offsets", "category", "id"}


class TxtCache(H5SplitCache):
    """One split of the txt release parsed into HDF5: ``points`` (R, 6), ``seg`` (R,), ``offsets`` (S + 1,)."""

    dataset = "ShapeNetPart"
    keys = frozenset(_CACHE_KEYS)
    format_version = CACHE_FORMAT_VERSION

    def _write(self, f: h5py.File) -> None:
        entries = self.layout.split(self.split)
        starts, stops = self.layout.table.starts, self.layout.table.stops
        points = f.create_dataset("points", shape=(0, 6), maxshape=(None, 6), chunks=(16384, 6), dtype=np.float32)
        seg = f.create_dataset("seg", shape=(0,), maxshape=(None,), chunks=(16384,), dtype=np.int16)
        offsets = np.zeros(len(entries.ids) + 1, dtype=np.int64)
        desc = f"Caching ShapeNetPart {self.split} ({self.path.name})"
        for i, (path, cat) in enumerate(tqdm(list(zip(entries.paths, entries.categories)), desc=desc, unit="shape")):
            rows, part = read_txt_shape(path, (int(starts[cat]), int(stops[cat])))
            offsets[i + 1] = offsets[i] + len(rows)
            points.resize(offsets[i + 1], axis=0)
            seg.resize(offsets[i + 1], axis=0)
            points[offsets[i]:] = rows
            seg[offsets[i]:] = part
        f.create_dataset("offsets", data=offsets)
        f.create_dataset("category", data=entries.categories)
        f.create_dataset("id", data=np.array(entries.ids, dtype=object), dtype=h5py.string_dtype())


class _TxtCacheSource:
    def __init__(self, cache_path: Path, entries: TxtEntries) -> None:
        self.ids, self.categories, self._paths = entries.ids, entries.categories, entries.paths
        self._file = _LazyH5(cache_path)
        with h5py.File(cache_path, "r") as f:
            self._offsets = f["offsets"][:]

    def path(self, k: int) -> Path:
        return self._paths[k]

    def num_rows(self, k: int) -> int:
        return int(self._offsets[k + 1] - self._offsets[k])

    def read(self, k: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
        f = self._file.get()
        lo, hi = self._offsets[k], self._offsets[k + 1]
        return f["points"][lo:hi, :channels], f["seg"][lo:hi].astype(np.int64)


# -- h5 release ----------------------------------------------------------------------------------------------
def h5_dir(root: Path) -> Path:
    """The folder holding the h5 release's files: ``root/hdf5_data`` when present, else ``root``."""
    return root / "hdf5_data" if (root / "hdf5_data").is_dir() else root


class H5Split:
    """The h5 files of one split, checked for keys, shapes, labels and part ids; points read lazily."""

    def __init__(self, root: Path, split: str, table: PartTable) -> None:
        self.dir = h5_dir(root)
        list_path = self.dir / f"{split}_hdf5_file_list.txt"
        if not list_path.is_file():
            raise DatasetLayoutError(_DATASET, list_path, H5_LAYOUT, H5_SOURCE)
        self.files: list[Path] = []
        with open(list_path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                path = self.dir / Path(line.strip()).name
                if not path.is_file():
                    note = f"\n({path.name} is listed in {list_path.name}, line {lineno})"
                    raise DatasetLayoutError(_DATASET, path, H5_LAYOUT + note, H5_SOURCE)
                self.files.append(path)
        if not self.files:
            raise DataFormatError(list_path, "lists no h5 files")
        self.table = table
        per_file = [self._inspect(path) for path in self.files]
        self._points = np.array([p for p, _ in per_file], dtype=np.int64)
        labels = [c for _, c in per_file]
        self.categories = np.concatenate(labels)
        self._file_of = np.repeat(np.arange(len(self.files)), [len(c) for c in labels])
        self._start = np.concatenate([[0], np.cumsum([len(c) for c in labels])[:-1]])
        self.ids = [f"{self.files[f].name}#{k - self._start[f]}" for k, f in enumerate(self._file_of)]
        self._handles = [_LazyH5(path) for path in self.files]

    def _inspect(self, path: Path) -> tuple[int, np.ndarray]:
        """(points per shape, categories) of one file after checking keys, shapes, labels and part ids."""
        try:
            with h5py.File(path, "r") as f:
                for key in ("data", "label", "pid"):
                    if key not in f:
                        raise DataFormatError(path, f"has no dataset {key!r} (keys: {sorted(f)})")
                data, label, pid = f["data"], f["label"], f["pid"]
                if data.ndim != 3 or data.shape[2] != 3:
                    raise DataFormatError(path, f"'data' has shape {data.shape}, expected (S, P, 3)")
                if label.shape not in ((data.shape[0],), (data.shape[0], 1)):
                    raise DataFormatError(path, f"'label' has shape {label.shape}, expected ({data.shape[0]}, 1)")
                if pid.shape != data.shape[:2]:
                    raise DataFormatError(path, f"'pid' has shape {pid.shape} but 'data' has {data.shape}: "
                                                "points and part labels differ in length")
                cats = np.asarray(label[:], dtype=np.int64).reshape(-1)
                bad = np.flatnonzero((cats < 0) | (cats >= len(self.table.names)))
                if len(bad):
                    raise DataFormatError(path, f"shape {bad[0]}: category label {cats[bad[0]]} is not in "
                                                f"0..{len(self.table.names) - 1}")
                parts = np.asarray(pid[:], dtype=np.int64)
                lo, hi = self.table.starts[cats][:, None], self.table.stops[cats][:, None]
                wrong = (parts < lo) | (parts >= hi)
                if wrong.any():
                    s, p = np.argwhere(wrong)[0]
                    raise DataFormatError(
                        path, f"shape {s} (category {self.table.names[cats[s]]}), point {p}: part id {parts[s, p]} "
                              f"is not a part of its category (ids {lo[s, 0]}..{hi[s, 0] - 1})"
                    )
                return int(data.shape[1]), cats
        except OSError as err:
            raise DataFormatError(path, f"cannot be read as HDF5, truncated or corrupt? ({err})") from None

    def check_finite(self, block: int = 512) -> None:
        """Scans every coordinate once (prepare_data)."""
        for path in self.files:
            try:
                with h5py.File(path, "r") as f:
                    values = f["data"]
                    for start in range(0, values.shape[0], block):
                        ok = np.isfinite(values[start : start + block]).all(axis=(1, 2))
                        if not ok.all():
                            raise DataFormatError(path, f"shape {start + int(np.argmin(ok))} has NaN or inf points")
            except OSError as err:
                raise DataFormatError(path, f"cannot be read as HDF5, truncated or corrupt? ({err})") from None

    def path(self, k: int) -> Path:
        return self.files[self._file_of[k]]

    def num_rows(self, k: int) -> int:
        return int(self._points[self._file_of[k]])

    def read(self, k: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
        f, row = self._file_of[k], k - self._start[self._file_of[k]]
        if channels != 3:
            raise DataFormatError(self.files[f], "the h5 release has no normals; set use_normals=false")
        try:
            handle = self._handles[f].get()
            points, seg = handle["data"][row], handle["pid"][row]
        except OSError as err:
            raise DataFormatError(self.files[f], f"cannot read shape {row} ({err})") from None
        if not np.isfinite(points).all():
            raise DataFormatError(self.files[f], f"shape {row} has NaN or inf coordinates")
        return points.astype(np.float32, copy=False), seg.astype(np.int64)


class _Concat:
    """Several sources read as one (``train`` + ``val`` for training)."""

    def __init__(self, sources: Sequence[_Source]) -> None:
        self.sources = list(sources)
        self.ids = [i for s in self.sources for i in s.ids]
        self.categories = np.concatenate([s.categories for s in self.sources])
        sizes = [len(s.ids) for s in self.sources]
        self._which = np.repeat(np.arange(len(sizes)), sizes)
        self._start = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    def _locate(self, k: int) -> tuple[_Source, int]:
        s = self._which[k]
        return self.sources[s], int(k - self._start[s])

    def path(self, k: int) -> Path:
        source, j = self._locate(k)
        return source.path(j)

    def num_rows(self, k: int) -> int:
        source, j = self._locate(k)
        return source.num_rows(j)

    def read(self, k: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
        source, j = self._locate(k)
        return source.read(j, channels)


# -- dataset --------------------------------------------------------------------------------------------
class ShapeNetPartDataset(Dataset):
    """Shapes of one split sampled to ``num_points`` (points and part labels with the same indices)."""

    def __init__(self, source: _Source, num_points: int, use_normals: bool, sampling: str, normalize: bool,
                 seed: int) -> None:
        self.source, self.num_points = source, num_points
        self.channels = 6 if use_normals else 3
        self.sampling, self.normalize, self.seed = sampling, normalize, seed
        self.categories = source.categories
        if sampling == "first":
            for k in range(len(source.ids)):
                rows = source.num_rows(k)
                if rows < num_points:
                    raise DataFormatError(source.path(k), f"{source.ids[k]} has {rows} points, fewer than "
                                                          f"num_points={num_points} (use sampling=random)")

    def __len__(self) -> int:
        return len(self.source.ids)

    def _choice(self, k: int, rows: int) -> np.ndarray:
        """Fixed per shape (seeded by (seed, k)); with replacement only for shapes with too few points."""
        if self.sampling == "first":
            return np.arange(self.num_points)
        rng = np.random.default_rng([self.seed, k])
        if rows >= self.num_points:
            return np.sort(rng.choice(rows, self.num_points, replace=False))
        extra = rng.choice(rows, self.num_points - rows, replace=True)
        return np.concatenate([np.arange(rows), extra])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        points, seg = self.source.read(index, self.channels)
        if len(points) != len(seg):
            raise DataFormatError(self.source.path(index), f"{self.source.ids[index]}: {len(points)} points but "
                                                           f"{len(seg)} part labels")
        keep = self._choice(index, len(points))
        points, seg = points[keep], seg[keep]
        points = normalize_unit_sphere(points) if self.normalize else np.array(points, dtype=np.float32)
        category = torch.tensor(int(self.categories[index]), dtype=torch.int64)
        return {
            "points": torch.from_numpy(points),
            "seg": torch.from_numpy(np.ascontiguousarray(seg, dtype=np.int64)),
            "category": category,
            "label": category,
            "index": torch.tensor(index, dtype=torch.int64),
        }


# -- datamodule ---------------------------------------------------------------------------------------------
def detect_format(root: Path) -> str:
    """'txt' or 'h5', from the files present in ``root``."""
    both = f"{TXT_LAYOUT}\n\nor\n\n{H5_LAYOUT}"
    sources = f"\n- {TXT_SOURCE}\n- {H5_SOURCE}"
    if not root.is_dir():
        raise DatasetLayoutError(_DATASET, root, both, sources)
    if (root / "synsetoffset2category.txt").exists() or (root / "train_test_split").is_dir():
        return "txt"
    if (h5_dir(root) / "all_object_categories.txt").exists() or any(h5_dir(root).glob("ply_data_*.h5")):
        return "h5"
    raise DatasetLayoutError(
        _DATASET, root / "synsetoffset2category.txt (txt layout) or hdf5_data/ (h5 layout)", both, sources
    )


class ShapeNetPartDataModule(PointCloudDataModule):
    """ShapeNetPart in the txt (normal) or h5 (PointNet) release, detected unless ``format`` is given.

    ``train_splits``: the splits training uses (``[train, val]`` is the papers' trainval). ``sampling``:
    "first" rows (the h5 release's 2048 points) or "random" (a fixed subset per shape, seeded by
    ``(seed, shape)``; shapes with fewer points are completed by repeats). Training augmentations act on
    coordinates only: transforms that reorder or drop points would separate points from their labels and are
    refused.
    """

    def __init__(
        self,
        root: str | Path,
        format: str = "auto",
        num_points: int = 2048,
        use_normals: bool = False,
        sampling: str = "random",
        normalize: bool = True,
        train_splits: Sequence[str] = ("train",),
        cache_dir: str | Path | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("val_split", "val")
        super().__init__(**kwargs)
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if num_points < 1:
            raise ValueError(f"num_points must be positive, got {num_points}")
        bad = [s for s in train_splits if s not in SPLITS]
        if bad or not train_splits:
            raise ValueError(f"train_splits must be a non-empty subset of {SPLITS}, got {list(train_splits)}")
        for transform in self.train_transform.transforms:
            if isinstance(transform, ShufflePoints | RandomSubsample):
                raise ValueError(f"{type(transform).__name__} reorders points and would separate them from their "
                                 "part labels; part segmentation accepts coordinate transforms only")
        self.root = Path(root).expanduser()
        self.requested_format = format
        self.num_points, self.use_normals, self.sampling, self.normalize = num_points, use_normals, sampling, normalize
        self.train_splits = list(train_splits)
        self.cache_dir = (Path(cache_dir).expanduser() if cache_dir is not None
                          else default_cache_dir().parent / "shapenetpart")
        self._format: str | None = None
        self._table: PartTable | None = None

    @property
    def format(self) -> str:
        if self._format is None:
            self._format = detect_format(self.root) if self.requested_format == "auto" else self.requested_format
        return self._format

    @property
    def table(self) -> PartTable:
        if self._table is None:
            if self.format == "txt":
                self._table = TxtLayout(self.root).table
            else:
                d = h5_dir(self.root)
                self._table = PartTable.from_lines(_category_lines(d / "all_object_categories.txt", "h5"))
                if (d / "overallid_to_catid_partid.json").is_file():
                    _check_part_json(d / "overallid_to_catid_partid.json", self._table)
        return self._table

    @property
    def class_names(self) -> list[str]:
        return list(self.table.names)

    @property
    def parts_per_category(self) -> list[int]:
        return list(self.table.parts_per_category)

    @property
    def num_parts(self) -> int:
        return sum(self.parts_per_category)

    def _splits_of(self, split: str) -> list[str]:
        return self.train_splits if split == "train" else [split]

    def prepare_data(self) -> None:
        """Checks the layout and builds the txt caches (or scans the h5 files) once, before any setup."""
        wanted = sorted(set(self.train_splits) | {self.val_split, "test"}, key=SPLITS.index)
        for split in wanted:
            if self.format == "txt":
                TxtCache(TxtLayout(self.root), split, self.cache_dir).ensure()
            else:
                H5Split(self.root, split, self.table).check_finite()

    def _source(self, split: str) -> _Source:
        if self.format == "txt":
            layout = TxtLayout(self.root)
            cache = TxtCache(layout, split, self.cache_dir).ensure()
            return _TxtCacheSource(cache, layout.split(split))
        return H5Split(self.root, split, self.table)

    def build_dataset(self, split: str) -> ShapeNetPartDataset:
        parts = self._splits_of(split)
        sources = [self._source(s) for s in parts]
        source = sources[0] if len(sources) == 1 else _Concat(sources)
        return ShapeNetPartDataset(source, self.num_points, self.use_normals, self.sampling, self.normalize,
                                   self.seed)
