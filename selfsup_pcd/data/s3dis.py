"""S3DIS semantic segmentation (13 classes) from the raw ``Stanford3dDataset_v1.2_Aligned_Version`` release.

Each room is the concatenation of its ``Annotations/<class>_<i>.txt`` files ("x y z r g b" per line, read in
sorted file-name order), labelled by the class in the file name, as ``indoor3d_util`` builds it. Annotation
files of a class outside the 13 (the real release has ``stairs`` in Area 1 ... ) become ``clutter`` as in
``indoor3d_util`` (``unknown_classes="clutter"``) or are left unlabelled (``"ignore"``: ``IGNORE_INDEX``, the
PointContrast loader's choice); either way a log line counts them.

Parsing text is slow (a room takes about a second), so every room is parsed once into ``xyz.npy`` (float32),
``rgb.npy`` (float32 in [0, 1]) and ``labels.npy`` (int64) in ``cache_dir/<release>-<hash of its path>/Area_k/
<room>/`` — about 32 bytes per point, ~9 GB for the whole release — written atomically and rebuilt only when
an annotation file (name, size, mtime) or the class option changes. The arrays are memory-mapped, so
DataLoader workers share them.

Text defects: a number with stray characters (the real release has a control character inside a number of
``Area_5/office_19/Annotations/ceiling_1.txt``) is repaired by dropping the characters that cannot be part of a
number, with a ``DataRepairWarning`` naming file and line and showing both texts; a value still unreadable, a
line without exactly 6 values, a non-finite coordinate or a colour outside 0-255 raises ``DataFormatError``
naming file and line.

Splits: ``test_area`` (default 5) is "test"; "train" is every other area present (or ``train_areas``). There
is no validation split in the release: validation runs on the test area (``val_split="test"``, what the
original PointNet/DGCNN/PointContrast codes do; report the last epoch, §7 quirk 1) unless ``val_area`` names an
area held out of training (then ``val_split="val"``). 6-fold cross-validation = six runs, test_area 1..6.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.modelnet40 import default_cache_dir
from selfsup_pcd.data.scene_semseg import IGNORE_INDEX, SceneCloud, SceneSemsegDataModule
from selfsup_pcd.data.writers.atomic import atomic_dir
from selfsup_pcd.data.writers.s3dis import FOLDER, S3DIS_CLASSES

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
AREAS = (1, 2, 3, 4, 5, 6)
UNKNOWN_CLASSES = ("clutter", "ignore")
_DATASET = "S3DIS"
_LAYOUT = f"""\
<root>/{FOLDER}/   (or that folder itself as root)
├── Area_1/ ... Area_6/
│   └── office_1/ conferenceRoom_1/ hallway_1/ ...
│       └── Annotations/
│           └── <class>_<i>.txt      one point per line: x y z r g b (metres, colours 0-255)"""
_SOURCE = ("Stanford3dDataset_v1.2_Aligned_Version.zip from the S3DIS download form "
           "(http://buildingparser.stanford.edu/dataset.html; research use, cite Armeni et al., CVPR 2016).")
_NUMBER_CHARS = re.compile(rb"[^0-9eE+\-.]")


class DataRepairWarning(UserWarning):
    """A data file had a defect that was repaired while reading it."""


# -- text -----------------------------------------------------------------------------------------------------
def _rows_ok(rows: np.ndarray) -> bool:
    """6 columns, finite, colours in 0-255: otherwise the line scan names the first bad line."""
    if rows.shape[1] != 6 or not np.isfinite(rows).all():
        return False
    return bool(rows[:, 3:].min() >= 0 and rows[:, 3:].max() <= 255)


def read_points_txt(path: str | Path) -> np.ndarray:
    """(N, 6) float64 rows "x y z r g b" of one S3DIS text file (repairs and errors: module docstring)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns on empty files
            rows = np.loadtxt(path, dtype=np.float64, ndmin=2, comments=None)
        if rows.size == 0:
            return np.zeros((0, 6))
        if _rows_ok(rows):
            return rows
    except ValueError:  # a bad value or a wrong column count: the line scan finds and reports it
        pass
    return _scan(path)


def _scan(path: Path) -> np.ndarray:
    """Line-by-line parse (only after the fast one failed): repairs stray characters, names bad lines."""
    rows = []
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 6:
                raise DataFormatError(path, f"line has {len(tokens)} values, expected 6 (x y z r g b): "
                                            f"{_show(line)}", lineno)
            values = []
            for token in tokens:
                try:
                    values.append(float(token))
                    continue
                except ValueError:
                    pass
                repaired = _NUMBER_CHARS.sub(b"", token)
                try:
                    values.append(float(repaired))
                except ValueError:
                    raise DataFormatError(path, f"value {_show(token)} is not a number (even without its "
                                                f"non-numeric characters): {_show(line)}", lineno) from None
                fixed = line.replace(token, repaired)
                warnings.warn(f"{path}:{lineno}: repaired the number {_show(token)} to {_show(repaired)} (dropped "
                              f"stray characters); line {_show(line)} read as {_show(fixed)}", DataRepairWarning,
                              stacklevel=2)
            if not np.isfinite(values).all():
                raise DataFormatError(path, f"non-finite value: {_show(line)}", lineno)
            if min(values[3:]) < 0 or max(values[3:]) > 255:
                raise DataFormatError(path, f"colour outside 0-255: {_show(line)}", lineno)
            rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def _show(text: bytes) -> str:
    return repr(text.strip().decode("latin-1"))


def annotation_class(path: Path) -> str:
    """The class named by an annotation file ``<class>_<i>.txt``."""
    return path.stem.rsplit("_", 1)[0] if "_" in path.stem else path.stem


# -- rooms and their cache -------------------------------------------------------------------------------
def find_release(root: str | Path) -> Path:
    """The folder holding ``Area_*``: ``root/Stanford3dDataset_v1.2_Aligned_Version`` or ``root`` itself."""
    root = Path(root).expanduser()
    for candidate in (root / FOLDER, root):
        if candidate.is_dir() and any(candidate.glob("Area_*")):
            return candidate
    raise DatasetLayoutError(_DATASET, root / FOLDER / "Area_*", _LAYOUT, _SOURCE)


def area_rooms(release: Path, area: int) -> list[Path]:
    """Room folders of one area (those with an Annotations folder), sorted by name."""
    folder = release / f"Area_{area}"
    if not folder.is_dir():
        raise DatasetLayoutError(_DATASET, folder, _LAYOUT, _SOURCE)
    rooms = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "Annotations").is_dir())
    if not rooms:
        raise DatasetLayoutError(_DATASET, folder / "<room>/Annotations", _LAYOUT, _SOURCE)
    return rooms


def _annotations(room: Path) -> list[Path]:
    return sorted(p for p in (room / "Annotations").glob("*.txt") if p.is_file())


def parse_room(room: Path, unknown_classes: str = "clutter") -> tuple[np.ndarray, np.ndarray, np.ndarray, Counter]:
    """(xyz float32, rgb float32 in [0, 1], labels int64, files of unknown classes per class) of one room."""
    xyz, rgb, labels, unknown = [], [], [], Counter()
    for path in _annotations(room):
        name = annotation_class(path)
        if name in S3DIS_CLASSES:
            label = S3DIS_CLASSES.index(name)
        else:
            unknown[name] += 1
            label = S3DIS_CLASSES.index("clutter") if unknown_classes == "clutter" else IGNORE_INDEX
        rows = read_points_txt(path)
        xyz.append(rows[:, :3])
        rgb.append(rows[:, 3:])
        labels.append(np.full(len(rows), label, dtype=np.int64))
    if not xyz:
        raise DataFormatError(room / "Annotations", "holds no <class>_<i>.txt files")
    return (np.concatenate(xyz).astype(np.float32), (np.concatenate(rgb) / 255.0).astype(np.float32),
            np.concatenate(labels), unknown)


class RoomCache:
    """One room's parsed arrays in the cache, rebuilt when its annotation files change."""

    ARRAYS = ("xyz", "rgb", "labels")

    def __init__(self, room: Path, cache_root: Path, unknown_classes: str) -> None:
        self.room, self.unknown_classes = room, unknown_classes
        self.path = cache_root / room.parent.name / room.name

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"s3dis room v{CACHE_FORMAT_VERSION} {self.unknown_classes}\n".encode())
        for path in _annotations(self.room):
            stat = path.stat()
            digest.update(f"{path.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def meta(self) -> dict | None:
        try:
            return json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_current(self, fingerprint: str) -> bool:
        meta = self.meta()
        return (meta is not None and meta.get("fingerprint") == fingerprint
                and all((self.path / f"{a}.npy").is_file() for a in self.ARRAYS))

    def build(self, fingerprint: str) -> None:
        xyz, rgb, labels, unknown = parse_room(self.room, self.unknown_classes)
        with atomic_dir(self.path) as tmp:
            for name, array in zip(self.ARRAYS, (xyz, rgb, labels)):
                np.save(tmp / f"{name}.npy", array)
            meta = {"fingerprint": fingerprint, "points": len(xyz), "unknown_classes": dict(unknown),
                    "source": str(self.room.resolve()), "format_version": CACHE_FORMAT_VERSION}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    def load(self, name: str) -> SceneCloud:
        xyz, rgb, labels = (np.load(self.path / f"{a}.npy", mmap_mode="r") for a in self.ARRAYS)
        return SceneCloud(name, xyz, rgb, labels)


# -- datamodule -----------------------------------------------------------------------------------------------
class S3DISDataModule(SceneSemsegDataModule):
    """S3DIS rooms for block (PointNet/DGCNN) or voxel (SR-UNet) segmentation; see the module docstring."""

    def __init__(
        self,
        root: str | Path,
        test_area: int = 5,
        val_area: int | None = None,
        train_areas: Sequence[int] | None = None,
        unknown_classes: str = "clutter",
        cache_dir: str | Path | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("val_split", "val" if val_area is not None else "test")
        super().__init__(**kwargs)
        if test_area not in AREAS or (val_area is not None and val_area not in AREAS):
            raise ValueError(f"test_area and val_area must be one of {AREAS}, got {test_area}, {val_area}")
        if val_area == test_area:
            raise ValueError(f"val_area and test_area are both {test_area}")
        if unknown_classes not in UNKNOWN_CLASSES:
            raise ValueError(f"unknown_classes must be one of {UNKNOWN_CLASSES}, got {unknown_classes!r}")
        held_out = {test_area} | ({val_area} if val_area is not None else set())
        if train_areas is not None and (set(train_areas) & held_out or not set(train_areas) <= set(AREAS)):
            raise ValueError(f"train_areas {list(train_areas)} must be areas of {AREAS} other than the test/val "
                             f"areas {sorted(held_out)}")
        if self.val_split == "val" and val_area is None:
            raise ValueError("S3DIS has no validation split: set val_area, or val_split='test' (the originals)")
        self.root = Path(root).expanduser()
        self.test_area, self.val_area, self.unknown_classes = test_area, val_area, unknown_classes
        self.requested_train_areas = None if train_areas is None else sorted(set(train_areas))
        self.cache_dir = (Path(cache_dir).expanduser() if cache_dir is not None
                          else default_cache_dir().parent / "s3dis")

    @property
    def class_names(self) -> list[str]:
        return list(S3DIS_CLASSES)

    @property
    def release(self) -> Path:
        return find_release(self.root)

    @property
    def cache_root(self) -> Path:
        release = self.release.resolve()
        return self.cache_dir / f"{release.name}-{hashlib.sha256(str(release).encode()).hexdigest()[:12]}"

    def areas(self, split: str) -> list[int]:
        """The areas of a split ("val" is only defined with ``val_area``)."""
        split = self.resolve_split(split)
        if split == "test":
            return [self.test_area]
        if split == "val":
            if self.val_area is None:
                raise ValueError("S3DIS has no validation split: set val_area, or val_split='test'")
            return [self.val_area]
        if self.requested_train_areas is not None:
            return list(self.requested_train_areas)
        present = sorted(int(p.name.split("_")[1]) for p in self.release.glob("Area_[1-6]") if p.is_dir())
        held_out = {self.test_area, self.val_area}
        return [a for a in present if a not in held_out]

    def rooms(self, split: str) -> list[tuple[str, RoomCache]]:
        """(name "Area_k_<room>", cache) of every room of a split, in order."""
        out = []
        for area in self.areas(split):
            for room in area_rooms(self.release, area):
                out.append((f"Area_{area}_{room.name}", RoomCache(room, self.cache_root, self.unknown_classes)))
        if not out:
            raise DatasetLayoutError(_DATASET, self.release / "Area_<k> (training areas)", _LAYOUT, _SOURCE)
        return out

    def ensure_cache(self, split: str) -> list[tuple[str, RoomCache]]:
        """Parses the split's stale or missing rooms into the cache (progress bar over them); logs unknowns."""
        rooms = self.rooms(split)
        todo = [(cache, fp) for _, cache in rooms if not cache.is_current(fp := cache.fingerprint())]
        if todo:
            try:
                self.cache_root.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OSError(f"cannot write the S3DIS cache in {self.cache_root} ({err}); pass a writable "
                              "cache_dir") from err
            desc = f"Caching S3DIS {split} rooms ({self.cache_root})"
            for cache, fp in tqdm(todo, desc=desc, unit="room"):
                cache.build(fp)
        unknown: Counter = Counter()
        for _, cache in rooms:
            unknown.update((cache.meta() or {}).get("unknown_classes", {}))
        if unknown:
            target = "clutter" if self.unknown_classes == "clutter" else f"ignored (label {IGNORE_INDEX})"
            detail = ", ".join(f"{name}: {count}" for name, count in sorted(unknown.items()))
            log.info("S3DIS %s (areas %s): %d annotation files of classes outside the 13 (%s) -> %s", split,
                     self.areas(split), sum(unknown.values()), detail, target)
        return rooms

    def prepare_data(self) -> None:
        """Builds the caches of every split once (rank 0, before setup)."""
        for split in dict.fromkeys(["train", self.resolve_split("val"), "test"]):
            self.ensure_cache(split)

    def load_scenes(self, split: str) -> list[SceneCloud]:
        return [cache.load(name) for name, cache in self.ensure_cache(split)]
