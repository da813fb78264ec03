"""ScanNet's ``scannet_frames_25k`` layout (the RGB-D frames STRL pretrains on, ``strl_byol.md`` §1).

```
scannet_frames_25k/
└── scene0000_00/
    ├── color/000000.jpg, 000100.jpg, ...   RGB, JPEG
    ├── depth/000000.png, ...               uint16 PNG, millimetres, 0 = no depth
    ├── pose/000000.txt, ...                4x4 camera-to-world, 4 rows of 4 space-separated numbers
    ├── intrinsics_color.txt                4x4: fx [0,0], fy [1,1], cx [0,2], cy [1,2]
    └── intrinsics_depth.txt
```
Frames are every 100th raw frame of a scan, named by the raw frame number (``000000``, ``000100``, ...).
Numbers are written with 6 decimals, as in the release. In the release the colour intrinsics belong to
the full-resolution colour camera; here colour and depth come from one rendered camera, so both files
hold the same matrix unless ``K_color`` is given. Not written: the release's ``label/`` and
``instance/`` folders (2D label images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from selfsup_pcd.data.errors import DataFormatError
from selfsup_pcd.data.writers.atomic import atomic_dir

FOLDER = "scannet_frames_25k"
FRAME_STEP = 100
JPEG_QUALITY = 95


def frame_name(index: int) -> str:
    """Name of the ``index``-th kept frame: its raw frame number, zero-padded to 6 digits."""
    return f"{index * FRAME_STEP:06d}"


def intrinsics_4x4(K: np.ndarray) -> np.ndarray:
    """The 4x4 matrix ScanNet stores: K in the top-left block, 1 at [3, 3]."""
    out = np.eye(4)
    out[:3, :3] = np.asarray(K, dtype=np.float64)
    return out


def write_matrix_txt(path: Path, matrix: np.ndarray) -> None:
    """4 rows of space-separated numbers with 6 decimals (ScanNet's pose and intrinsics files)."""
    rows = [" ".join(f"{v:.6f}" for v in row) for row in np.asarray(matrix, dtype=np.float64)]
    path.write_text("\n".join(rows) + "\n", encoding="ascii")


def write_depth_png(path: Path, depth_mm: np.ndarray) -> None:
    """16-bit greyscale PNG of uint16 millimetres."""
    if depth_mm.dtype != np.uint16:
        raise ValueError(f"depth must be uint16 millimetres, got {depth_mm.dtype}")
    image = Image.fromarray(np.ascontiguousarray(depth_mm, dtype="<u2"))
    if image.mode != "I;16":  # Pillow maps little-endian uint16 to I;16; anything else would lose bits
        raise RuntimeError(f"Pillow made a {image.mode} image from uint16 depth, expected I;16")
    image.save(path, format="PNG")


def read_depth_png(path: str | Path) -> np.ndarray:
    """(H, W) uint16 millimetres from a 16-bit PNG."""
    path = Path(path)
    with Image.open(path) as image:
        if image.mode not in ("I;16", "I;16B", "I"):
            raise DataFormatError(path, f"depth PNG has mode {image.mode}, expected 16-bit greyscale")
        depth = np.array(image)
    if depth.dtype != np.uint16:
        if depth.min() < 0 or depth.max() > np.iinfo(np.uint16).max:
            raise DataFormatError(path, "depth values do not fit in uint16")
        depth = depth.astype(np.uint16)
    return depth


def write_scannet_frames(
    root: str | Path,
    scene_name: str,
    color: np.ndarray,
    depth_mm: np.ndarray,
    poses: np.ndarray,
    K: np.ndarray,
    K_color: np.ndarray | None = None,
    jpeg_quality: int = JPEG_QUALITY,
) -> Path:
    """Writes one scene's frames to ``root/scannet_frames_25k/<scene_name>`` (atomically) and returns that folder.

    ``color`` (F, H, W, 3) uint8, ``depth_mm`` (F, H, W) uint16, ``poses`` (F, 4, 4) camera-to-world, ``K`` (3, 3).
    """
    color, depth_mm, poses = np.asarray(color), np.asarray(depth_mm), np.asarray(poses, dtype=np.float64)
    frames = len(depth_mm)
    if color.dtype != np.uint8 or color.ndim != 4 or color.shape[-1] != 3:
        raise ValueError(f"color must be (F, H, W, 3) uint8, got {color.shape} {color.dtype}")
    if depth_mm.ndim != 3 or poses.shape != (frames, 4, 4) or len(color) != frames:
        raise ValueError(f"need F frames of color {color.shape}, depth {depth_mm.shape} and poses {poses.shape}")
    final = Path(root) / FOLDER / scene_name
    with atomic_dir(final) as tmp:
        for sub in ("color", "depth", "pose"):
            (tmp / sub).mkdir()
        for i in range(frames):
            name = frame_name(i)
            Image.fromarray(color[i]).save(tmp / "color" / f"{name}.jpg", format="JPEG", quality=jpeg_quality)
            write_depth_png(tmp / "depth" / f"{name}.png", depth_mm[i])
            write_matrix_txt(tmp / "pose" / f"{name}.txt", poses[i])
        write_matrix_txt(tmp / "intrinsics_depth.txt", intrinsics_4x4(K))
        write_matrix_txt(tmp / "intrinsics_color.txt", intrinsics_4x4(K if K_color is None else K_color))
    return final
