"""Render cache: a whole dataset split rendered into one HDF5 file (views, depth, cameras, points, pairs).

Layout of ``<out_dir>/<split>.h5`` (S shapes, V views, H x W pixels, N points with C channels):

=================  ======================  ====================================================================
``views``          (S, V, H, W, 3) uint8   shaded RGB (``renderer.py``)
``depth``          (S, V, H, W) float16    metric z-depth, 0 = background
``K``              (S, V, 3, 3) float64    intrinsics, OpenCV; pixel (row, col) centred at (col+.5, row+.5)
``world_to_cam``   (S, V, 4, 4) float64    extrinsics, OpenCV (x right, y down, z forward)
``points``         (S, N, C) float32       the dataset's points (xyz [+ normals]); pairs index these rows
``label``          (S,) int64              class label
``pairs``          (M, 4) int32            correspondences ``view, row, col, point_idx`` of all shapes
``pairs_offset``   (S + 1,) int64          shape i's pairs are ``pairs[pairs_offset[i]:pairs_offset[i + 1]]``
``done``           (S,) bool               shape written completely
=================  ======================  ====================================================================

Root attributes: ``format``, ``format_version``, ``split``, ``dataset``, ``config`` (JSON of the render and
data settings), ``fingerprint`` (hash of what determines the content), ``backend``, ``complete``.
Pairs are computed from the float16 depth as stored, so they can be re-derived from the file exactly.

Building is parallel (worker processes render, each with its own lazily created Renderer; the parent
writes), resumable and crash-safe: the file is built as ``<split>.partial.h5`` and renamed when complete.
Shapes are written in index order; for each one the arrays and its pairs are written and flushed
*before* its ``done`` flag is set and flushed, so a kill at any moment leaves every shape either
complete and marked or unmarked. A rerun reopens the partial file, cuts ``pairs`` back to the end of the
last marked shape and continues from there.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
from collections import deque
from collections.abc import Generator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from selfsup_pcd.render import backend
from selfsup_pcd.render.cameras import make_rig
from selfsup_pcd.render.correspondences import PAIR_COLUMNS, correspondences, object_diameter
from selfsup_pcd.render.renderer import RenderResult, shared_renderer

log = logging.getLogger(__name__)

FORMAT = "selfsup_pcd/render-cache"
FORMAT_VERSION = 1
PER_SHAPE = ("views", "depth", "K", "world_to_cam", "points", "label")


class RenderCacheError(RuntimeError):
    """A render cache that cannot be used as it is (other settings, other format, unreadable)."""


@dataclass(frozen=True)
class RenderSettings:
    """Everything that determines the rendered content (part of the fingerprint)."""

    rig: str = "ring"
    num_views: int = 12
    elevation_deg: float = 30.0
    distance: float = 2.5
    fov_deg: float | None = None
    resolution: int = 32
    supersample: int = 1
    background: tuple[int, int, int] = (0, 0, 0)
    light_intensity: float = 3.0
    ambient: float = 0.3
    vis_tolerance: float = 0.015  # fraction of each shape's diameter
    slope_correction: bool = True
    splat_radius: float = 0.04
    up: tuple[float, float, float] = field(default=(0.0, 1.0, 0.0))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RenderSettings:
        """Settings from a config block, ignoring keys that do not affect the content (workers, paths...)."""
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        for key in ("background", "up"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def cameras(self) -> list:
        return make_rig(self.rig, num_views=self.num_views, elevation_deg=self.elevation_deg,
                        distance=self.distance, fov_deg=self.fov_deg, resolution=self.resolution, up=self.up)


def fingerprint(settings: RenderSettings, source: Mapping[str, Any]) -> str:
    """Hash of the render settings, the data source description and the format version."""
    payload = json.dumps({"format_version": FORMAT_VERSION, "render": asdict(settings), "source": source},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# -- one shape -----------------------------------------------------------------------------------
def shape_record(dataset: Any, index: int, settings: RenderSettings) -> dict[str, Any]:
    """Renders shape ``index``: ``dataset.mesh(index)`` when the dataset has meshes, else point splats."""
    item = dataset[index]
    points = np.asarray(item["points"], dtype=np.float32)
    if points.ndim != 2 or points.shape[1] < 3:
        raise RenderCacheError(f"shape {index}: points must be (N, >=3), got {points.shape}")
    xyz = points[:, :3].astype(np.float64)
    renderer = shared_renderer(settings.resolution, settings.resolution, background=settings.background,
                               light_intensity=settings.light_intensity, ambient=settings.ambient,
                               supersample=settings.supersample)
    cameras = settings.cameras()
    tolerance = settings.vis_tolerance * object_diameter(xyz)
    if callable(getattr(dataset, "mesh", None)):
        result: RenderResult = renderer.render_mesh(dataset.mesh(index), cameras)
    else:
        normals = points[:, 3:6].astype(np.float64) if points.shape[1] >= 6 else None
        result = renderer.render_points(xyz, cameras, radius=settings.splat_radius, normals=normals)
        tolerance += settings.splat_radius  # splats stand up to one radius in front of their point
    depth = result.depth.astype(np.float16)
    pairs = correspondences(xyz, depth.astype(np.float32), result.K, result.world_to_cam, tolerance,
                            slope_correction=settings.slope_correction)
    return {"index": index, "views": result.rgb, "depth": depth, "K": result.K,
            "world_to_cam": result.world_to_cam, "points": points, "label": int(item["label"]), "pairs": pairs}


_worker_state: dict[str, Any] = {}


def _init_worker(dataset: Any, settings: RenderSettings) -> None:
    """Pool initializer: keeps the dataset; asks Linux to kill this worker when the parent dies.

    Workers are the parallelism, so llvmpipe renders in the calling thread (``LP_NUM_THREADS=0``, unless
    set by the user): no oversubscription, and no threads that a fork could not copy.
    """
    os.environ.setdefault("LP_NUM_THREADS", "0")
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    _worker_state.update(dataset=dataset, settings=settings)


def _render_in_worker(index: int) -> dict[str, Any]:
    return shape_record(_worker_state["dataset"], index, _worker_state["settings"])


def default_start_method() -> str:
    """fork on Linux (workers share the parent's dataset without pickling or re-importing), else spawn."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _records(dataset: Any, indices: list[int], settings: RenderSettings, workers: int,
             start_method: str | None) -> Generator[dict[str, Any], None, None]:
    """Records of ``indices`` in order; rendered in ``workers`` processes (0: in this process)."""
    if workers <= 0 or not indices:
        for index in indices:
            yield shape_record(dataset, index, settings)
        return
    context = mp.get_context(start_method or default_start_method())
    with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                initargs=(dataset, settings)) as pool:
        pending: deque[cf.Future] = deque()
        queue = iter(indices)
        window = 4 * workers  # bounded read-ahead: results are written in order, memory stays small
        for index in queue:
            pending.append(pool.submit(_render_in_worker, index))
            if len(pending) >= window:
                break
        while pending:
            record = pending.popleft().result()
            next_index = next(queue, None)
            if next_index is not None:
                pending.append(pool.submit(_render_in_worker, next_index))
            yield record


# -- the file ------------------------------------------------------------------------------------
def paths_for(out_dir: str | Path, split: str) -> tuple[Path, Path]:
    """(final, partial) file names of ``split``."""
    out_dir = Path(out_dir)
    return out_dir / f"{split}.h5", out_dir / f"{split}.partial.h5"


def _create(path: Path, first: dict[str, Any], num_shapes: int, attrs: Mapping[str, Any]) -> h5py.File:
    """A new partial file with datasets shaped after the first rendered shape."""
    f = h5py.File(path, "w")
    for key, value in attrs.items():
        f.attrs[key] = value
    for name in PER_SHAPE:
        value = np.asarray(first[name])
        per_shape = value.shape
        chunks = (1, *per_shape) if per_shape else None
        compression = "lzf" if name in ("views", "depth") else None
        f.create_dataset(name, shape=(num_shapes, *per_shape), dtype=value.dtype, chunks=chunks,
                         compression=compression)
    pairs = f.create_dataset("pairs", shape=(0, 4), maxshape=(None, 4), dtype=np.int32, chunks=(8192, 4),
                             compression="lzf")
    pairs.attrs["columns"] = ",".join(PAIR_COLUMNS)
    f.create_dataset("pairs_offset", data=np.zeros(num_shapes + 1, dtype=np.int64))
    f.create_dataset("done", data=np.zeros(num_shapes, dtype=bool))
    f.flush()
    return f


def _write(f: h5py.File, record: dict[str, Any]) -> None:
    """Writes one shape; its ``done`` flag is set only after everything else is flushed."""
    i = record["index"]
    for name in PER_SHAPE:
        value = np.asarray(record[name])
        if f[name].shape[1:] != value.shape:
            raise RenderCacheError(f"{f.filename}: shape {i} has {name} of shape {value.shape}, the file expects "
                                   f"{f[name].shape[1:]} (every shape must have the same number of points)")
        f[name][i] = value
    start = int(f["pairs_offset"][i])
    pairs = record["pairs"]
    f["pairs"].resize(start + len(pairs), axis=0)
    f["pairs"][start:] = pairs
    f["pairs_offset"][i + 1] = start + len(pairs)
    f.flush()
    f["done"][i] = True
    f.flush()


def _resume_point(f: h5py.File) -> int:
    """Index of the first unfinished shape; checks that finished shapes form a prefix."""
    done = f["done"][:]
    first = int(np.argmin(done)) if not done.all() else len(done)
    if done[first:].any():
        raise RenderCacheError(f"{f.filename}: finished shapes are not a prefix (done flags {np.nonzero(done)[0]}); "
                               "delete the file to rebuild it")
    f["pairs"].resize(int(f["pairs_offset"][first]), axis=0)
    f.flush()
    return first


def _check_existing(path: Path, expected: str, overwrite: bool) -> bool:
    """True when ``path`` holds the expected content; removes it (overwrite) or raises when it differs."""
    try:
        with h5py.File(path, "r") as f:
            found = str(f.attrs.get("fingerprint", ""))
            complete = bool(f.attrs.get("complete", False))
            stored = str(f.attrs.get("config", "{}"))
    except OSError as err:
        if path.name.endswith(".partial.h5"):
            log.warning("%s cannot be read (%s); it is an unfinished build, starting it over", path, err)
            path.unlink()
            return False
        raise RenderCacheError(f"{path} exists but cannot be read as HDF5 ({err}); delete it or set "
                               "render.overwrite=true") from err
    if found == expected and (complete or path.name.endswith(".partial.h5")):
        return True
    if overwrite:
        log.warning("%s was rendered with other settings (fingerprint %s, expected %s); overwriting", path, found,
                    expected)
        path.unlink()
        return False
    raise RenderCacheError(f"{path} was rendered with other settings (fingerprint {found}, expected {expected}).\n"
                           f"stored config: {stored}\nUse another render.out_dir, or set render.overwrite=true to "
                           "replace it")


def build(dataset: Any, out_dir: str | Path, split: str, settings: RenderSettings,
          source: Mapping[str, Any] | None = None, workers: int = 0, start_method: str | None = None,
          overwrite: bool = False, progress: bool = True) -> Path:
    """Renders every shape of ``dataset`` into ``<out_dir>/<split>.h5`` (resuming a partial build)."""
    source = dict(source or {})
    source.setdefault("num_shapes", len(dataset))
    expected = fingerprint(settings, source)
    final, partial = paths_for(out_dir, split)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        if _check_existing(final, expected, overwrite):
            log.info("%s is up to date (fingerprint %s)", final, expected)
            return final
        if partial.exists():
            partial.unlink()
    num_shapes = len(dataset)
    if num_shapes == 0:
        raise RenderCacheError(f"split {split!r} of the dataset is empty; nothing to render into {final}")
    resume = partial.exists() and _check_existing(partial, expected, overwrite)
    start = 0
    if resume:
        with h5py.File(partial, "r") as f:
            stored_shapes, done = f["done"].shape[0], f["done"][:]
            stored_backend = f.attrs.get("backend")
        if stored_shapes != num_shapes:
            raise RenderCacheError(f"{partial} holds {stored_shapes} shapes, the dataset {num_shapes}; delete it")
        start = int(np.argmin(done)) if not done.all() else num_shapes
    attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "split": split,
             "dataset": str(source.get("name", type(dataset).__name__)), "fingerprint": expected,
             "config": json.dumps({"render": asdict(settings), "source": source}, sort_keys=True, default=str),
             "backend": backend.configure(), "pixel_convention": "pixel (row, col) centred at (col+0.5, row+0.5)",
             "complete": False}
    if resume and stored_backend != attrs["backend"]:
        log.warning("%s was started with the %s back end, continuing with %s (silhouette pixels may differ)",
                    partial, stored_backend, attrs["backend"])
    if start:
        log.info("resuming %s at shape %d / %d", partial, start, num_shapes)
    # Workers start (and fork) before the file is opened, so no child ever holds an open handle to it.
    records = _records(dataset, list(range(start, num_shapes)), settings, workers, start_method)
    first = next(records, None)
    f = h5py.File(partial, "r+") if resume else None
    try:
        if f is not None:
            _resume_point(f)
        bar = tqdm(total=num_shapes, initial=start, desc=f"render {split}", unit="shape", disable=not progress)
        with bar:
            for record in ([] if first is None else itertools.chain([first], records)):
                if f is None:
                    f = _create(partial, record, num_shapes, attrs)
                _write(f, record)
                bar.update(1)
        f.attrs["complete"] = True
        f.flush()
    finally:
        records.close()
        if f is not None:
            f.close()
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, final)
    log.info("rendered %d shapes of %s into %s", num_shapes, split, final)
    return final


# -- reading -------------------------------------------------------------------------------------
def open_cache(path: str | Path) -> h5py.File:
    """A finished render cache, opened read-only (raises when it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"render cache {path} does not exist (python -m selfsup_pcd.render builds it)")
    f = h5py.File(path, "r")
    if f.attrs.get("format") != FORMAT or not bool(f.attrs.get("complete", False)):
        f.close()
        raise RenderCacheError(f"{path} is not a complete {FORMAT} file")
    return f


def read_shape(f: h5py.File, index: int) -> dict[str, np.ndarray]:
    """All arrays of one shape, pairs included."""
    start, stop = f["pairs_offset"][index:index + 2]
    shape = {name: f[name][index] for name in PER_SHAPE}
    shape["pairs"] = f["pairs"][start:stop]
    return shape
