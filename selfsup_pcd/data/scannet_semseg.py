"""ScanNet v2 semantic segmentation (the 20 benchmark classes) from the released scene meshes.

Reads ``scans/<scene>/<scene>_vh_clean_2.ply`` (vertex ``x,y,z``, ``red,green,blue``, triangle faces) and
``<scene>_vh_clean_2.labels.ply`` (the same vertices with a ``ushort label``, the NYU40 id). Every mesh vertex
is one point: xyz in metres, rgb in [0, 1], normals averaged from the faces around the vertex (trimesh),
label the benchmark class of its NYU40 id (``NYU40_TO_BENCHMARK``) or ``IGNORE_INDEX`` for every other id,
0 (unannotated) and ids outside NYU40 included. The latter covers the stray ids 50 and 149 of
scene0270_00/02 and scene0384_00, which the SR-UNet converter (``downstream.md`` §5b) sets to 0 by hand.

Splits come from ScanNet's lists ``scannetv2_train.txt`` and ``scannetv2_val.txt`` (one scene per line;
paths configurable, default: in the data root). The test split is the validation split: the labels of
ScanNet's test scenes are not public. The PLY files are parsed once per scene into ``<cache_dir>/<root
name>-<hash>/<scene>.npz`` (written atomically, rebuilt when either PLY's size or mtime changes), so
later epochs and runs read arrays only. The NYU40 ids are cached, the mapping applied on load.

PLY parsing uses the project's ``writers.ply.read_ply`` (binary little-endian, as ScanNet ships): trimesh's
loader keeps extra vertex properties such as ``label`` only in a private metadata key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from tqdm import tqdm

from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.scene_semseg import SceneCloud, SceneSemsegDataModule
from selfsup_pcd.data.voxelize import IGNORE_INDEX
from selfsup_pcd.data.writers.atomic import atomic_file
from selfsup_pcd.data.writers.ply import read_ply

CACHE_FORMAT_VERSION = 1
FOLDER = "scans"
SPLIT_FILES = {"train": "scannetv2_train.txt", "val": "scannetv2_val.txt"}
SPLITS = ("train", "val", "test")

# The ScanNet benchmark's 20 classes: (NYU40 id, name), class index = position.
BENCHMARK_CLASSES: list[tuple[int, str]] = [
    (1, "wall"), (2, "floor"), (3, "cabinet"), (4, "bed"), (5, "chair"), (6, "sofa"), (7, "table"), (8, "door"),
    (9, "window"), (10, "bookshelf"), (11, "picture"), (12, "counter"), (14, "desk"), (16, "curtain"),
    (24, "refrigerator"), (28, "shower curtain"), (33, "toilet"), (34, "sink"), (36, "bathtub"),
    (39, "otherfurniture"),
]  # fmt: skip
CLASS_NAMES = [name for _, name in BENCHMARK_CLASSES]
NYU40_TO_BENCHMARK: dict[int, int] = {nyu: k for k, (nyu, _) in enumerate(BENCHMARK_CLASSES)}

_DATASET = "ScanNet v2 semantic segmentation"
LAYOUT = f"""\
<root>/
├── scannetv2_train.txt, scannetv2_val.txt   scene names, one per line (paths configurable: split_files)
└── {FOLDER}/
    └── scene0000_00/
        ├── scene0000_00_vh_clean_2.ply          vertex x,y,z (float), red,green,blue (uchar); faces
        └── scene0000_00_vh_clean_2.labels.ply   the same vertices + label (ushort, NYU40 id)"""
SOURCE = (
    "the ScanNet v2 release (Dai et al., CVPR 2017; download script after signing the ScanNet terms of use, "
    "http://www.scan-net.org/): `download-scannet.py --type _vh_clean_2.ply` and `--type _vh_clean_2.labels.ply`. "
    "The split lists scannetv2_train.txt / scannetv2_val.txt are in ScanNet's repository "
    "(https://github.com/ScanNet/ScanNet, folder Tasks/Benchmark)."
)


# -- labels ---------------------------------------------------------------------------------------------
def nyu40_to_benchmark(nyu40: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(N,) int64 benchmark class (0..19) of each NYU40 id; ``ignore_index`` for every other id."""
    ids = np.asarray(nyu40, dtype=np.int64)
    table = np.full(41, ignore_index, dtype=np.int64)
    for nyu, k in NYU40_TO_BENCHMARK.items():
        table[nyu] = k
    inside = (ids >= 0) & (ids <= 40)
    return np.where(inside, table[np.clip(ids, 0, 40)], ignore_index)


# -- one scene --------------------------------------------------------------------------------------------
@dataclass
class ScanNetScan:
    """One parsed scene as stored in the cache: per-vertex arrays, labels as NYU40 ids."""

    name: str
    xyz: np.ndarray  # (N, 3) float32
    rgb: np.ndarray  # (N, 3) uint8
    nyu40: np.ndarray  # (N,) uint16
    normals: np.ndarray  # (N, 3) float32, unit length (0 for vertices outside every face)


def scene_files(folder: Path) -> tuple[Path, Path]:
    """(mesh PLY, labels PLY) of a scene folder."""
    return folder / f"{folder.name}_vh_clean_2.ply", folder / f"{folder.name}_vh_clean_2.labels.ply"


def _fields(path: Path, vertices: np.ndarray, wanted: Iterable[str]) -> None:
    missing = [f for f in wanted if f not in (vertices.dtype.names or ())]
    if missing:
        raise DataFormatError(path, f"vertex element lacks {missing} (has {list(vertices.dtype.names or ())})")


def read_scan(folder: str | Path) -> ScanNetScan:
    """Parses a scene folder's two PLY files; errors name the file at fault."""
    folder = Path(folder)
    mesh_path, labels_path = scene_files(folder)
    for path in (mesh_path, labels_path):
        if not path.is_file():
            raise DatasetLayoutError(_DATASET, path, LAYOUT, SOURCE)
    vertices, faces = read_ply(mesh_path)
    _fields(mesh_path, vertices, ("x", "y", "z", "red", "green", "blue"))
    labelled, _ = read_ply(labels_path)
    _fields(labels_path, labelled, ("x", "y", "z", "label"))
    xyz = np.stack([vertices[a] for a in "xyz"], axis=1).astype(np.float32)
    if len(labelled) != len(vertices):
        raise DataFormatError(labels_path, f"has {len(labelled)} vertices, {mesh_path.name} has {len(vertices)}")
    labelled_xyz = np.stack([labelled[a] for a in "xyz"], axis=1).astype(np.float32)
    if not np.allclose(labelled_xyz, xyz, atol=1e-4):
        raise DataFormatError(labels_path, f"vertices differ from those of {mesh_path.name}")
    if not np.isfinite(xyz).all():
        raise DataFormatError(mesh_path, "has NaN or inf vertex coordinates")
    rgb = np.stack([vertices[c] for c in ("red", "green", "blue")], axis=1).astype(np.uint8)
    if faces is not None and len(faces) and (faces.min() < 0 or faces.max() >= len(xyz)):
        raise DataFormatError(mesh_path, f"faces index vertices outside 0..{len(xyz) - 1}")
    if faces is None or len(faces) == 0:
        normals = np.zeros_like(xyz)
    else:
        normals = np.asarray(trimesh.Trimesh(vertices=xyz, faces=faces, process=False).vertex_normals,
                             dtype=np.float32)
    return ScanNetScan(folder.name, xyz, rgb, np.array(labelled["label"], dtype=np.uint16), normals)


# -- splits -----------------------------------------------------------------------------------------------
def read_split_list(path: str | Path) -> list[str]:
    """Scene names of a ``scannetv2_*.txt`` list (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(_DATASET, path, LAYOUT, SOURCE)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for lineno, name in enumerate(names, 1):
        if "/" in name or any(c.isspace() for c in name):
            raise DataFormatError(path, f"expected one scene name per line, got {name!r}", lineno)
    if not names:
        raise DataFormatError(path, "lists no scenes")
    return names


class ScanNetScenes:
    """The released layout under ``root``: split lists, scene folders and the per-scene cache."""

    def __init__(self, root: str | Path, cache_dir: str | Path,
                 split_files: Mapping[str, str | Path | None] | None = None) -> None:
        self.root = Path(root).expanduser()
        files = dict(split_files or {})
        self.split_files = {s: Path(files.get(s) or self.root / default).expanduser()
                            for s, default in SPLIT_FILES.items()}
        resolved = self.root.resolve()
        tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
        self.cache_dir = Path(cache_dir).expanduser() / f"{resolved.name}-{tag}"

    @property
    def scans_dir(self) -> Path:
        return self.root / FOLDER

    def split_file(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.split_files["val" if split == "test" else split]

    def scene_names(self, split: str) -> list[str]:
        """Scenes of ``split`` in list order ('test' = 'val'); every listed scene must have both PLY files."""
        path = self.split_file(split)
        names = read_split_list(path)
        for name in names:
            folder = self.scans_dir / name
            missing = [p for p in (folder, *scene_files(folder)) if not p.exists()]
            if missing:
                note = f"\n({name} is listed in {path})"
                raise DatasetLayoutError(_DATASET, missing[0], LAYOUT + note, SOURCE)
        return names

    # -- cache --------------------------------------------------------------------------------------------
    def cache_path(self, name: str) -> Path:
        return self.cache_dir / f"{name}.npz"

    def fingerprint(self, name: str) -> str:
        """What a scene's cache depends on: format version, sizes and mtimes of its two PLY files."""
        parts = [f"scannet-semseg v{CACHE_FORMAT_VERSION}"]
        for path in scene_files(self.scans_dir / name):
            stat = path.stat()
            parts.append(f"{path.name} {stat.st_size} {stat.st_mtime_ns}")
        return "\n".join(parts)

    def _cached_fingerprint(self, name: str) -> str | None:
        try:
            with np.load(self.cache_path(name), allow_pickle=False) as f:
                return str(f["fingerprint"])
        except (OSError, KeyError, ValueError):  # absent, truncated or from another version: rebuild
            return None

    def _cached(self, name: str, fingerprint: str) -> ScanNetScan | None:
        try:
            with np.load(self.cache_path(name), allow_pickle=False) as f:
                if str(f["fingerprint"]) != fingerprint:
                    return None
                return ScanNetScan(name, f["xyz"], f["rgb"], f["nyu40"], f["normals"])
        except (OSError, KeyError, ValueError):
            return None

    def _write(self, scan: ScanNetScan, fingerprint: str) -> None:
        path = self.cache_path(scan.name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"cannot write the ScanNet cache in {path.parent} ({err}); pass a writable cache_dir") \
                from err
        with atomic_file(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz"
            np.savez(fh, xyz=scan.xyz, rgb=scan.rgb, nyu40=scan.nyu40, normals=scan.normals,
                     fingerprint=np.array(fingerprint))

    def load(self, name: str) -> ScanNetScan:
        """One scene from the cache, parsing its PLY files first when the cache is absent or stale."""
        fingerprint = self.fingerprint(name)
        scan = self._cached(name, fingerprint)
        if scan is None:
            scan = read_scan(self.scans_dir / name)
            self._write(scan, fingerprint)
        return scan

    def ensure_cached(self, names: Iterable[str], desc: str = "Caching ScanNet scenes") -> int:
        """Parses every scene of ``names`` whose cache is absent or stale (progress bar); returns how many."""
        stale = [n for n in names if self._cached_fingerprint(n) != self.fingerprint(n)]
        for name in tqdm(stale, desc=f"{desc} ({self.cache_dir})", unit="scene", disable=not stale):
            self._write(read_scan(self.scans_dir / name), self.fingerprint(name))
        return len(stale)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/selfsup_pcd/scannet_semseg`` (``~/.cache`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "selfsup_pcd" / "scannet_semseg"


# -- datamodule ----------------------------------------------------------------------------------------------
class ScanNetSemSegDataModule(SceneSemsegDataModule):
    """ScanNet v2, 20 classes, on the scene meshes' vertices (see the module docstring).

    ``split_files``: ``{"train": path, "val": path}``, each None for ``<root>/scannetv2_<split>.txt``.
    Normals are attached to the scenes only when ``features="normals"`` (they cost 12 bytes a point in
    memory, and every scene of a split is held there). The remaining arguments are the base's
    (``SceneSemsegDataModule``); defaults changed here: ``mode="voxels"``, ``voxel_size=0.02`` (§5b),
    ``val_split="val"``.
    """

    def __init__(
        self,
        root: str | Path,
        split_files: Mapping[str, str | Path | None] | None = None,
        cache_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "voxels")
        kwargs.setdefault("voxel_size", 0.02)
        kwargs.setdefault("val_split", "val")
        super().__init__(**kwargs)
        self.layout = ScanNetScenes(root, default_cache_dir() if cache_dir is None else cache_dir, split_files)

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES)

    def prepare_data(self) -> None:
        """Checks the lists and scene files of both splits and parses every uncached scene once."""
        for split in ("train", "val"):
            self.layout.ensure_cached(self.layout.scene_names(split), desc=f"Caching ScanNet {split} scenes")

    def load_scenes(self, split: str) -> list[SceneCloud]:
        names = self.layout.scene_names(split)
        self.layout.ensure_cached(names, desc=f"Caching ScanNet {split} scenes")
        with_normals = self.features == "normals"
        scenes = []
        for name in names:
            scan = self.layout.load(name)
            scenes.append(SceneCloud(
                name=name,
                xyz=np.asarray(scan.xyz, dtype=np.float32),
                rgb=scan.rgb.astype(np.float32) / 255.0,
                labels=nyu40_to_benchmark(scan.nyu40),
                normals=np.asarray(scan.normals, dtype=np.float32) if with_normals else None,
            ))
        return scenes
