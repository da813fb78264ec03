"""Teacher-feature cache of MVR: the frozen 2D trunk's feature maps of every rendered view, computed once.

The original re-runs its frozen ResNet-50 on the 12 views of every object at every step. With the trunk
frozen and its BatchNorm in eval mode the maps are a fixed function of the images, so they are computed
once per (render cache, teacher weights) and read back by the datamodule instead of the images; the
trainable pixel head and the frozen global branch (``t``, ``g``) then run on them (cheap: a 4×4 map per
view at 32×32). The global target is therefore recomputed from the cached maps each step (avg-pool, ``t``,
max over the chosen views, ``g``) rather than stored: exact for any view subset, and a few milliseconds.

File: ``<render_dir>/<split>.teacher_<key>.h5`` with ``feats`` (S, V, C, h, w) in ``dtype`` (float16 by
default: a quarter of float32's size; float32/float64 for exact comparisons), one chunk per shape. ``key``
hashes the trunk weights, the teacher's input normalisation, the render cache's fingerprint, the dtype and
this format's version, so another teacher (or another render) never reuses the file. Written to
``.partial.h5`` and renamed when complete (a kill leaves no file under the final name).

CLI (e.g. to prepare a cache before a sweep)::

    python -m selfsup_pcd.methods.mvr_teacher_cache RENDER_CACHE.h5 --teacher TEACHER.pt [--dtype float16]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from selfsup_pcd.models.image import MultiViewTeacher

log = logging.getLogger(__name__)

FORMAT = "selfsup_pcd/mvr-teacher-features"
FORMAT_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}


def trunk_hash(teacher: MultiViewTeacher) -> str:
    """SHA-256 of what determines the trunk's maps in eval mode: its parameters and BN running statistics
    (names, dtypes, shapes, values) and the input normalisation."""
    digest = hashlib.sha256()
    digest.update(repr((teacher.arch, teacher.small_stem, teacher.input_norm)).encode())
    for name, value in sorted(teacher.f.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(value.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(teacher: MultiViewTeacher, render_cache: str | Path, dtype: str) -> str:
    """Key of the feature cache of ``teacher`` on ``render_cache`` stored in ``dtype``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    with h5py.File(render_cache, "r") as f:
        fingerprint = str(f.attrs.get("fingerprint", ""))
    payload = f"{FORMAT_VERSION}|{trunk_hash(teacher)}|{fingerprint}|{dtype}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def feature_cache_path(render_cache: str | Path, key: str) -> Path:
    """``<render_dir>/<split>.teacher_<key>.h5`` beside ``<render_dir>/<split>.h5``."""
    render_cache = Path(render_cache)
    return render_cache.with_name(f"{render_cache.stem}.teacher_{key}.h5")


def is_complete(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT and f.attrs.get("key") == key and bool(f.attrs.get("complete"))
    except OSError:
        return False


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


@torch.no_grad()
def trunk_maps(teacher: MultiViewTeacher, views: np.ndarray, device: torch.device) -> Tensor:
    """uint8 views (S, V, H, W, 3) -> trunk maps (S, V, C, h, w) on the CPU, in the teacher's dtype."""
    dtype = next(teacher.parameters()).dtype
    images = torch.from_numpy(views).to(device).permute(0, 1, 4, 2, 3).to(dtype).div_(255.0)
    feats = teacher.trunk_features(images.flatten(0, 1))
    return feats.view(*images.shape[:2], *feats.shape[1:]).cpu()


def build_teacher_features(
    teacher: MultiViewTeacher,
    render_cache: str | Path,
    dtype: str = "float16",
    shapes_per_batch: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Path:
    """The feature cache of ``teacher`` on ``render_cache`` (built when missing); returns its path.

    The trunk runs in eval mode (BatchNorm with running statistics) whatever mode the teacher is in,
    and its mode is restored afterwards.
    """
    key = cache_key(teacher, render_cache, dtype)
    final = feature_cache_path(render_cache, key)
    if is_complete(final, key):
        log.info("teacher features up to date: %s", final)
        return final
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    partial = final.with_name(final.stem + ".partial.h5")
    was_training = teacher.training
    teacher.eval()
    try:
        with h5py.File(render_cache, "r") as src, h5py.File(partial, "w") as out:
            views = src["views"]
            num_shapes = views.shape[0]
            first = trunk_maps(teacher, views[:1], device)
            feats = out.create_dataset("feats", shape=(num_shapes, *first.shape[1:]), dtype=DTYPES[dtype],
                                       chunks=(1, *first.shape[1:]))
            out.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "key": key, "dtype": dtype,
                              "trunk_hash": trunk_hash(teacher), "render_cache": str(Path(render_cache).resolve()),
                              "render_fingerprint": str(src.attrs.get("fingerprint", "")),
                              "teacher": repr(teacher.config()), "complete": False})
            bar = tqdm(total=num_shapes, desc=f"teacher features {Path(render_cache).stem}", unit="shape",
                       disable=not progress)
            with bar:
                for start, stop in _chunks(num_shapes, shapes_per_batch):
                    feats[start:stop] = trunk_maps(teacher, views[start:stop], device).numpy().astype(DTYPES[dtype])
                    bar.update(stop - start)
            out.attrs["complete"] = True
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        teacher.train(was_training)
    log.info("teacher features of %d shapes written to %s", num_shapes, final)
    return final


def main(argv: list[str] | None = None) -> None:
    """Builds the cache from the command line (teacher file in any format ``load_teacher`` reads)."""
    from selfsup_pcd.models.image import teacher_from_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("render_cache", type=Path)
    parser.add_argument("--teacher", type=Path, default=None, help="teacher weights (omit: random init, seeded)")
    parser.add_argument("--arch", default=None, help="teacher architecture (our teacher files carry their own)")
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("--shapes-per-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.manual_seed(args.seed)
    kwargs = {"arch": args.arch} if args.arch else {}
    if args.teacher is not None:
        teacher = teacher_from_file(args.teacher, **kwargs)
    else:
        teacher = MultiViewTeacher(**kwargs)
        log.warning("no --teacher: random-init teacher (seed %d)", args.seed)
    path = build_teacher_features(teacher, args.render_cache, args.dtype, args.shapes_per_batch)
    print(path)


if __name__ == "__main__":
    main()
