"""Scene-level MVR data (issue #6 item 7): ScanNet RGB-D frame pairs as a voxelised cloud plus two colour views.

The MVR paper describes the SR-UNet pretraining only in prose (``multiview_rendering.md`` §4): frame pairs
with at least 30 % overlap, the cloud of the first depth frame projected into the colour images of both
frames to pair pixels with points. Everything else here is our design ("ours"):

* overlap of frames a → b: the fraction of a's valid depth pixels (every ``overlap_stride``-th) whose 3D point
  lands inside b's image with b's measured depth within ``visibility_tol`` of its projected depth. Pairs
  (a, b) with b at most ``max_frame_gap`` positions after a and an overlap ≥ ``min_overlap`` are the items;
  training swaps the two frames of an item with probability 1/2.
* the student's input: frame a's depth back-projected (world axes, origin at camera a, as
  ``scannet_frames``), thinned to ``points_per_frame`` points, coloured from colour image a, voxelised
  (``voxel_size``; features RGB − 0.5 as for semantic segmentation);
* the pairs: each voxel's centroid is projected into the colour views of a (view 0) and b (view 1), resized
  to ``image_size``; a projection counts when it is inside the image and the voxel is visible there (the
  frame's depth agrees within ``visibility_tol``); ``num_pairs`` rows (view, row, col, voxel) per item are
  drawn uniformly (``data.mvr.sample_object_pairs``; fewer → drawn with replacement, counted).

Colour and depth cameras are treated as co-located (ScanNet's exported frames are registered). Colour
intrinsics come from ``intrinsics_color.txt``, given for the stored colour images unless
``color_calibration_size`` names the (width, height) they were calibrated at (the release's 1296×968 when its
colour images were stored smaller).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from selfsup_pcd.data.errors import DataFormatError
from selfsup_pcd.data.mvr import sample_object_pairs, to_float_images
from selfsup_pcd.data.scannet_frames import ScanNetFramesDataModule, SceneFrames, backproject_depth, read_matrix
from selfsup_pcd.data.voxelize import collate_voxels, voxelize
from selfsup_pcd.data.writers.scannet_frames import read_depth_png

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FramePair:
    scene: int
    a: int
    b: int
    overlap: float


def project(points: np.ndarray, K: np.ndarray, world_to_camera: np.ndarray,
            pixel_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols) as floats and depth z of ``points`` (N, 3) seen by a pinhole camera (OpenCV axes)."""
    cam = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        cols = K[0, 0] * cam[:, 0] / z + K[0, 2] - pixel_offset
        rows = K[1, 1] * cam[:, 1] / z + K[1, 2] - pixel_offset
    return rows, cols, z


def visible(points: np.ndarray, K: np.ndarray, world_to_camera: np.ndarray, depth_m: np.ndarray, tol: float,
            pixel_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask of ``points`` that fall inside the depth image and agree with its depth; their integer (row, col)."""
    rows, cols, z = project(points, K, world_to_camera, pixel_offset)
    h, w = depth_m.shape
    finite = np.isfinite(rows) & np.isfinite(cols)
    r = np.where(finite, np.floor(np.nan_to_num(rows) + 0.5), -1).astype(np.int64)
    c = np.where(finite, np.floor(np.nan_to_num(cols) + 0.5), -1).astype(np.int64)
    inside = (z > 0) & (r >= 0) & (r < h) & (c >= 0) & (c < w)
    ok = np.zeros(len(points), dtype=bool)
    measured = depth_m[r[inside], c[inside]]
    ok[inside] = (measured > 0) & (np.abs(measured - z[inside]) < tol)
    return ok, r, c


def _camera(pose: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """World-to-camera of a camera-to-world ``pose``, for points given relative to ``origin``."""
    shifted = pose.copy()
    shifted[:3, 3] -= origin
    return np.linalg.inv(shifted)


class FramePairViews(Dataset):
    """Items of :class:`ScanNetFrameViewsDataModule`; see the module docstring."""

    def __init__(self, scenes: list[SceneFrames], color_intrinsics: list[np.ndarray], pairs: list[FramePair],
                 voxel_size: float, image_size: tuple[int, int], points_per_frame: int, num_pairs: int,
                 visibility_tol: float, pixel_offset: float, depth_scale: float, train: bool, seed: int) -> None:
        self.scenes, self.color_intrinsics, self.pairs = scenes, color_intrinsics, pairs
        self.voxel_size, self.image_size = voxel_size, tuple(image_size)
        self.points_per_frame, self.num_pairs = points_per_frame, num_pairs
        self.visibility_tol, self.pixel_offset, self.depth_scale = visibility_tol, pixel_offset, depth_scale
        self.train, self.seed = train, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def _generator(self, index: int) -> torch.Generator:
        seed = int(torch.randint(0, 2**62, (1,)).item()) if self.train else self.seed * 1_000_003 + index
        return torch.Generator().manual_seed(seed)

    def _color(self, scene: SceneFrames, i: int) -> np.ndarray:
        path = scene.folder / "color" / f"{scene.frames[i]}.jpg"
        if not path.is_file():
            raise DataFormatError(path, "colour frame is missing (scene-level MVR needs color/<frame>.jpg)")
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        g = self._generator(index)
        a, b = pair.a, pair.b
        if self.train and bool(torch.rand((), generator=g) < 0.5):
            a, b = b, a
        scene = self.scenes[pair.scene]
        fx, fy, cx, cy = scene.intrinsics
        K_depth = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        depth_raw = [read_depth_png(scene.depth_path(i)) for i in (a, b)]
        depth = [d.astype(np.float64) / self.depth_scale for d in depth_raw]
        colors = [self._color(scene, i) for i in (a, b)]
        origin = scene.poses[a, :3, 3]
        points = backproject_depth(depth_raw[0], scene.intrinsics, scene.poses[a], origin,
                                   pixel_offset=self.pixel_offset, depth_scale=self.depth_scale).astype(np.float64)
        if len(points) == 0:
            raise DataFormatError(scene.depth_path(a), "depth frame has no valid pixel")
        if len(points) > self.points_per_frame:
            keep = torch.randperm(len(points), generator=g)[:self.points_per_frame].sort().values.numpy()
            points = points[keep]
        # colour of each point: colour image a at the point's projection
        K_color = self.color_intrinsics[pair.scene]
        cam_a = _camera(scene.poses[a], origin)
        rows, cols, _ = project(points, K_color, cam_a, self.pixel_offset)
        h, w = colors[0].shape[:2]
        rgb = colors[0][np.clip(np.floor(rows + 0.5), 0, h - 1).astype(np.int64),
                        np.clip(np.floor(cols + 0.5), 0, w - 1).astype(np.int64)].astype(np.float32) / 255.0
        vox = voxelize(points, np.concatenate([rgb - 0.5, points], 1).astype(np.float32), self.voxel_size)
        feats, centroids = vox.feats[:, :3], vox.feats[:, 3:].astype(np.float64)

        out_h, out_w = self.image_size
        table = []
        for view, frame in enumerate((a, b)):
            camera = _camera(scene.poses[frame], origin)
            seen, _, _ = visible(centroids, K_depth, camera, depth[view], self.visibility_tol, self.pixel_offset)
            K_view = K_color.copy()
            K_view[0] *= out_w / colors[view].shape[1]
            K_view[1] *= out_h / colors[view].shape[0]
            r, c, _ = project(centroids, K_view, camera, self.pixel_offset)
            r, c = np.floor(r + 0.5).astype(np.int64), np.floor(c + 0.5).astype(np.int64)
            ok = seen & (r >= 0) & (r < out_h) & (c >= 0) & (c < out_w)
            idx = np.nonzero(ok)[0]
            table.append(np.stack([np.full(len(idx), view), r[idx], c[idx], idx], 1))
        table_t = torch.from_numpy(np.concatenate(table).astype(np.int64))
        rows_t, short = sample_object_pairs(table_t, torch.from_numpy(centroids).float(), self.num_pairs, "random",
                                            g, on_shortage="replace")
        if rows_t is None:
            raise DataFormatError(scene.depth_path(a), f"no voxel of this frame is visible in frame "
                                                       f"{scene.frames[b]} (overlap {pair.overlap:.2f})")
        views = np.stack([np.asarray(Image.fromarray(c).resize((out_w, out_h), Image.BILINEAR)) for c in colors])
        return {"coords": vox.coords, "feats": feats, "inverse": vox.inverse, "pairs": rows_t,
                "views": torch.from_numpy(views), "index": index, "pair_shortage": int(short),
                "centroids": centroids.astype(np.float32)}


def collate_frame_views(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    batch = collate_voxels(items)
    batch["pairs"] = torch.stack([item["pairs"] for item in items])
    batch["views"] = torch.stack([item["views"] for item in items])
    batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
    batch["image_size"] = torch.tensor(items[0]["views"].shape[1:3], dtype=torch.long)
    batch["pair_shortage"] = torch.tensor(sum(item["pair_shortage"] for item in items), dtype=torch.long)
    return batch


def frame_overlap(depth_a: np.ndarray, depth_b: np.ndarray, K: np.ndarray, pose_a: np.ndarray, pose_b: np.ndarray,
                  tol: float, stride: int = 8, pixel_offset: float = 0.0) -> float:
    """Fraction of frame a's valid pixels (every ``stride``-th row and column) visible in frame b (metres)."""
    sub = np.zeros_like(depth_a)
    sub[::stride, ::stride] = depth_a[::stride, ::stride]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    points = backproject_depth((sub * 1000).round().astype(np.uint16), (fx, fy, cx, cy), pose_a, np.zeros(3),
                               pixel_offset=pixel_offset).astype(np.float64)
    if len(points) == 0:
        return 0.0
    seen, _, _ = visible(points, K, np.linalg.inv(pose_b), depth_b, tol, pixel_offset)
    return float(seen.mean())


class ScanNetFrameViewsDataModule(ScanNetFramesDataModule):
    """Frame pairs with overlap for scene-level MVR of a voxel student (SR-UNet); scenes and splits as
    :class:`~selfsup_pcd.data.scannet_frames.ScanNetFramesDataModule`."""

    def __init__(self, root: str | Path, voxel_size: float = 0.05, image_size: tuple[int, int] = (120, 160),
                 points_per_frame: int = 40000, num_pairs: int = 1024, min_overlap: float = 0.3,
                 max_frame_gap: int = 3, visibility_tol: float = 0.1, overlap_stride: int = 8,
                 color_calibration_size: tuple[int, int] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("drop_last", False)
        super().__init__(root, points_per_frame=points_per_frame, **kwargs)
        if not 0.0 <= min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap}")
        self.voxel_size, self.image_size = voxel_size, tuple(image_size)
        self.num_pairs, self.min_overlap, self.max_frame_gap = num_pairs, min_overlap, max_frame_gap
        self.visibility_tol, self.overlap_stride = visibility_tol, overlap_stride
        self.color_calibration_size = None if color_calibration_size is None else tuple(color_calibration_size)

    def color_intrinsics(self, scene: SceneFrames) -> np.ndarray:
        """3×3 colour intrinsics for the stored colour images (``intrinsics_color.txt``, rescaled when
        ``color_calibration_size`` says they were calibrated at another size)."""
        path = scene.folder / "intrinsics_color.txt"
        if not path.is_file():
            raise DataFormatError(path, "colour intrinsics are missing (scene-level MVR needs intrinsics_color.txt)")
        K = read_matrix(path)[:3, :3].copy()
        if self.color_calibration_size is not None and scene.frames:
            with Image.open(scene.folder / "color" / f"{scene.frames[0]}.jpg") as image:
                width, height = image.size
            K[0] *= width / self.color_calibration_size[0]
            K[1] *= height / self.color_calibration_size[1]
        return K

    def frame_pairs(self, scenes: list[SceneFrames]) -> list[FramePair]:
        """Every (a, b) with 0 < b − a ≤ ``max_frame_gap`` and overlap ≥ ``min_overlap``."""
        pairs: list[FramePair] = []
        tested = 0
        for s, scene in enumerate(scenes):
            fx, fy, cx, cy = scene.intrinsics
            K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
            depth = [read_depth_png(scene.depth_path(i)).astype(np.float64) / self.depth_scale
                     for i in range(len(scene.frames))]
            for a in range(len(scene.frames)):
                for b in range(a + 1, min(len(scene.frames), a + self.max_frame_gap + 1)):
                    tested += 1
                    overlap = frame_overlap(depth[a], depth[b], K, scene.poses[a], scene.poses[b],
                                            self.visibility_tol, self.overlap_stride, self.pixel_offset)
                    if overlap >= self.min_overlap:
                        pairs.append(FramePair(s, a, b, overlap))
        log.info("scene MVR: %d of %d frame pairs overlap by at least %.0f%%", len(pairs), tested,
                 100 * self.min_overlap)
        return pairs

    def build_dataset(self, split: str) -> FramePairViews:
        split = "val" if split == "test" else split
        splits = self.split_scenes()
        wanted = set(splits["train"] + splits["val"]) if split == "train" and self.pretrain_scenes == "all" \
            else set(splits[split])
        scenes = [s for s in self.scenes() if s.name in wanted and s.frames]
        return FramePairViews(scenes, [self.color_intrinsics(s) for s in scenes], self.frame_pairs(scenes),
                              self.voxel_size, self.image_size, self.points_per_frame, self.num_pairs,
                              self.visibility_tol, self.pixel_offset, self.depth_scale, train=split == "train",
                              seed=self.seed)

    def _loader(self, split: str, shuffle: bool, drop_last: bool, batch_size: int) -> DataLoader:
        loader = super()._loader(split, shuffle, drop_last, batch_size)
        loader.collate_fn = collate_frame_views
        return loader

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        return to_float_images(batch)
