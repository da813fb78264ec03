"""Shared base of the scene semantic-segmentation datamodules (S3DIS, ScanNet, mOSD; ``downstream.md`` §5).

A subclass only lists its classes and loads the scenes of a split as ``SceneCloud``s (whole rooms with
per-point labels); this base turns them into batches for the two kinds of networks:

* ``mode="blocks"`` (PointNet/DGCNN, §5a): the room is cut into ``block_size`` squares on the plane
  normal to ``up_axis`` every ``block_stride``. Each sample is ``num_points`` points of one block:
  ``points`` (N, 9) = block-centred horizontal coordinates and the up coordinate of the room shifted to
  min 0 (channels in x, y, z order), RGB in [0, 1], then x, y, z / room max (the shifted room's extent);
  ``labels`` (N,), ``room`` (index into the split's scene list) and ``point_index`` (N,) (the points'
  indices in that room). Training blocks with fewer than ``min_block_points`` points are dropped and the
  others get a fresh sample every epoch (with replacement only when short). Evaluation blocks (stride
  ``eval_stride``) keep every point: a block's points, in a fixed shuffled order, are split into chunks of
  ``num_points`` and the last chunk is padded with repeats, so a task can vote per original point.
  Block-centred means relative to the centre of the block's grid square (``indoor3d_util`` centres on the
  sampled points' minimum plus half a block, which differs only for blocks not filled to their edges).
* ``mode="voxels"`` (SR-UNet, §5b): one whole scene per sample, augmented for training (scale, rotation about
  the up axis, colour translation and jitter), voxelised by ``selfsup_pcd.data.voxelize.voxelize`` and collated
  by ``collate_voxels``. ``features``: "rgb" (centred: RGB - 0.5, PointContrast's colour normalisation),
  "ones" or "normals" (sources with normals only).

Randomness is reproducible and resumable: the train sampler draws the epoch's order and a per-epoch seed from
the datamodule's generator (saved in checkpoints), and each sample's draws come from ``(seed, epoch seed,
index)``, so worker count and process do not change what a batch holds.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from selfsup_pcd.data.voxelize import IGNORE_INDEX, collate_voxels, voxelize

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MODES = ("blocks", "voxels")
FEATURES = ("rgb", "ones", "normals")
LABEL_MODES = ("majority", "ignore")
BLOCK_CHANNELS = 9


@dataclass
class SceneCloud:
    """One labelled scene as its dataset stores it (all original points, original order)."""

    name: str  # e.g. "Area_1_office_1", "scene0000_00", "learn0"
    xyz: np.ndarray  # (N, 3) float32, metres
    rgb: np.ndarray  # (N, 3) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64 class index, IGNORE_INDEX where unlabelled
    normals: np.ndarray | None = None  # (N, 3) float32 when the source has them (ScanNet meshes)

    def __post_init__(self) -> None:
        n = len(self.xyz)
        if self.xyz.shape != (n, 3) or self.rgb.shape != (n, 3) or self.labels.shape != (n,):
            raise ValueError(f"{self.name}: need xyz (N,3), rgb (N,3), labels (N,); got {self.xyz.shape}, "
                             f"{self.rgb.shape}, {self.labels.shape}")
        if self.normals is not None and self.normals.shape != (n, 3):
            raise ValueError(f"{self.name}: normals have shape {self.normals.shape}, expected ({n}, 3)")


# -- block grid --------------------------------------------------------------------------------------------
class RoomBlocks:
    """The block grid of one room: points bucketed into ``stride`` cells so a block is a few contiguous ranges.

    Blocks along an axis start at ``i * stride`` (room min = 0), ``i < max(1, ceil((extent - size) / stride)
    + 1)`` as in ``indoor3d_util``; the last block of each axis also keeps points on its far edge, so every
    point lies in at least one block.
    """

    def __init__(self, xyz: np.ndarray, up_axis: int, size: float, stride: float) -> None:
        self.size, self.stride = float(size), float(stride)
        self.axes = [a for a in range(3) if a != up_axis]
        self.lo = np.asarray(xyz, dtype=np.float64).min(0) if len(xyz) else np.zeros(3)
        plane = np.asarray(xyz, dtype=np.float64)[:, self.axes] - self.lo[self.axes]
        extent = plane.max(0) if len(plane) else np.zeros(2)
        self.blocks_per_axis = [max(1, math.ceil((e - size) / stride - 1e-6) + 1) for e in extent]
        ratio = size / stride
        self.exact = abs(ratio - round(ratio)) < 1e-6
        self.k = round(ratio) if self.exact else math.ceil(ratio)  # cells a block spans per axis
        # only blocks that do not end on a cell border need the coordinates again (to trim their last cells)
        self.plane = None if self.exact else plane.astype(np.float32)
        self.cells = [n + self.k - 1 for n in self.blocks_per_axis]
        cell = np.minimum(np.floor(plane / stride).astype(np.int64), np.asarray(self.cells) - 1)
        linear = cell[:, 0] * self.cells[1] + cell[:, 1]
        # int32 halves the index memory of big rooms (S3DIS's train areas hold ~2e8 points)
        self.order = np.argsort(linear, kind="stable").astype(np.int32 if len(linear) < 2**31 else np.int64)
        counts = np.bincount(linear, minlength=self.cells[0] * self.cells[1])
        self.start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def all_blocks(self) -> np.ndarray:
        """(B, 2) int block indices of the whole grid."""
        bx, by = np.meshgrid(np.arange(self.blocks_per_axis[0]), np.arange(self.blocks_per_axis[1]), indexing="ij")
        return np.stack([bx.ravel(), by.ravel()], 1)

    def origin(self, block: np.ndarray) -> np.ndarray:
        """Lower corner of a block on the plane, relative to the room min."""
        return np.asarray(block, dtype=np.float64) * self.stride

    def points(self, block: np.ndarray) -> np.ndarray:
        """Indices (into the room) of the points of ``block``, in cell order."""
        bx, by = int(block[0]), int(block[1])
        ny = self.cells[1]
        y_stop = min(by + self.k, ny)
        parts = [self.order[self.start[cx * ny + by]:self.start[cx * ny + y_stop]]
                 for cx in range(bx, min(bx + self.k, self.cells[0]))]
        idx = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
        if self.plane is not None and len(idx):
            hi = self.origin(block) + self.size
            last = np.asarray(block) == np.asarray(self.blocks_per_axis) - 1
            p = self.plane[idx]
            keep = ((p[:, 0] < hi[0]) | last[0]) & ((p[:, 1] < hi[1]) | last[1])
            idx = idx[keep]
        return idx

    def counts(self, blocks: np.ndarray) -> np.ndarray:
        """Number of points of each block (window sums over the cell counts when blocks end on cell borders)."""
        blocks = np.asarray(blocks, dtype=np.int64).reshape(-1, 2)
        if self.plane is not None:
            return np.array([len(self.points(b)) for b in blocks], dtype=np.int64)
        table = np.zeros((self.cells[0] + 1, self.cells[1] + 1), dtype=np.int64)
        table[1:, 1:] = np.diff(self.start).reshape(self.cells).cumsum(0).cumsum(1)
        x0, y0 = blocks[:, 0], blocks[:, 1]
        x1, y1 = np.minimum(x0 + self.k, self.cells[0]), np.minimum(y0 + self.k, self.cells[1])
        return table[x1, y1] - table[x0, y1] - table[x1, y0] + table[x0, y0]


def block_channels(xyz: np.ndarray, rgb: np.ndarray, grid: RoomBlocks, block: np.ndarray,
                   room_extent: np.ndarray) -> np.ndarray:
    """The 9 S3DIS-h5 channels of points ``xyz``/``rgb`` of one block (see the module docstring)."""
    shifted = np.asarray(xyz, dtype=np.float64) - grid.lo
    out = np.empty((len(xyz), BLOCK_CHANNELS), dtype=np.float32)
    out[:, :3] = shifted
    centre = grid.origin(block) + grid.size / 2
    out[:, grid.axes[0]] -= centre[0]
    out[:, grid.axes[1]] -= centre[1]
    out[:, 3:6] = rgb
    out[:, 6:9] = shifted / np.maximum(room_extent, 1e-6)
    return out


# -- datasets -----------------------------------------------------------------------------------------------
class _Rooms:
    """Scenes of a split with their block grids, built once per dataset."""

    def __init__(self, scenes: list[SceneCloud], up_axis: int, size: float, stride: float) -> None:
        self.scenes = scenes
        self.grids = [RoomBlocks(s.xyz, up_axis, size, stride) for s in scenes]
        self.extent = [(np.asarray(s.xyz, dtype=np.float64).max(0) - g.lo) if len(s.xyz) else np.ones(3)
                       for s, g in zip(scenes, self.grids)]

    def sample(self, room: int, block: np.ndarray, idx: np.ndarray) -> dict[str, torch.Tensor]:
        scene, grid = self.scenes[room], self.grids[room]
        points = block_channels(scene.xyz[idx], scene.rgb[idx], grid, block, self.extent[room])
        return {
            "points": torch.from_numpy(points),
            "labels": torch.from_numpy(np.asarray(scene.labels[idx], dtype=np.int64)),
            "room": torch.tensor(room, dtype=torch.int64),
            "point_index": torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)),
        }


def _key(item: int | tuple[int, int]) -> tuple[int, int]:
    """(index, epoch seed): the train sampler yields pairs, plain samplers bare indices (epoch seed 0)."""
    if isinstance(item, tuple | list):
        return int(item[0]), int(item[1])
    return int(item), 0


class TrainBlocks(Dataset):
    """Blocks with at least ``min_points`` points; each access draws ``num_points`` of them."""

    def __init__(self, scenes: list[SceneCloud], up_axis: int, size: float, stride: float, num_points: int,
                 min_points: int, seed: int) -> None:
        self.rooms = _Rooms(scenes, up_axis, size, stride)
        self.num_points, self.seed = num_points, seed
        entries, dropped = [], 0
        for r, grid in enumerate(self.rooms.grids):
            blocks = grid.all_blocks()
            counts = grid.counts(blocks)
            keep = counts >= min_points
            dropped += int((~keep).sum() - (counts == 0).sum())
            entries += [(r, int(bx), int(by)) for bx, by in blocks[keep]]
        self.entries = np.asarray(entries, dtype=np.int64).reshape(-1, 3)
        self.dropped = dropped

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, draw = _key(item)
        room, block = int(self.entries[index, 0]), self.entries[index, 1:]
        idx = self.rooms.grids[room].points(block)
        rng = np.random.default_rng([self.seed, draw, index])
        if len(idx) >= self.num_points:
            pick = rng.choice(len(idx), self.num_points, replace=False)
        else:  # all points once, the rest repeats (indoor3d_util's sample_data), in random order
            pick = rng.permutation(np.concatenate([np.arange(len(idx)),
                                                   rng.choice(len(idx), self.num_points - len(idx))]))
        return self.rooms.sample(room, block, idx[pick])


class EvalBlocks(Dataset):
    """Every non-empty block, as chunks of ``num_points`` that together hold each of its points at least once."""

    def __init__(self, scenes: list[SceneCloud], up_axis: int, size: float, stride: float, num_points: int,
                 seed: int) -> None:
        self.rooms = _Rooms(scenes, up_axis, size, stride)
        self.num_points, self.seed = num_points, seed
        entries = []
        for r, grid in enumerate(self.rooms.grids):
            blocks = grid.all_blocks()
            for (bx, by), count in zip(blocks, grid.counts(blocks)):
                entries += [(r, int(bx), int(by), c) for c in range(math.ceil(count / num_points))]
        self.entries = np.asarray(entries, dtype=np.int64).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, _ = _key(item)
        room, bx, by, chunk = (int(v) for v in self.entries[index])
        block = np.array([bx, by])
        idx = self.rooms.grids[room].points(block)
        rng = np.random.default_rng([self.seed, room, bx, by])  # same order for every chunk of the block
        idx = idx[rng.permutation(len(idx))]
        part = idx[chunk * self.num_points:(chunk + 1) * self.num_points]
        if len(part) < self.num_points:
            part = np.concatenate([part, idx[rng.choice(len(idx), self.num_points - len(part))]])
        return self.rooms.sample(room, block, part)


@dataclass
class Augment:
    """SR-UNet training augmentations (PointContrast's S3DIS recipe, §5b), on one whole scene."""

    scale: tuple[float, float] = (0.9, 1.1)
    rotate: bool = True
    color_translation: float = 0.05  # uniform offset per scene in [-t, t] (RGB in [0, 1])
    color_jitter: float = 0.005  # per-point Gaussian sigma (RGB in [0, 1])

    def __call__(self, xyz: np.ndarray, rgb: np.ndarray, normals: np.ndarray | None, up_axis: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        rotation = np.eye(3)
        if self.rotate:
            a, b = [ax for ax in range(3) if ax != up_axis]
            angle = rng.uniform(-math.pi, math.pi)
            c, s = math.cos(angle), math.sin(angle)
            rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = c, -s, s, c
        scale = rng.uniform(*self.scale)
        centre = (xyz.max(0) + xyz.min(0)) / 2 if len(xyz) else np.zeros(3)
        xyz = ((xyz - centre) @ rotation.T * scale).astype(np.float32)
        if normals is not None:
            normals = (normals @ rotation.T).astype(np.float32)
        rgb = rgb + rng.uniform(-self.color_translation, self.color_translation, (1, 3))
        if self.color_jitter > 0:
            rgb = rgb + rng.normal(0.0, self.color_jitter, rgb.shape)
        return xyz, np.clip(rgb, 0.0, 1.0).astype(np.float32), normals


class SceneVoxels(Dataset):
    """One whole scene per sample, voxelised (after augmentation when ``augment`` is given)."""

    def __init__(self, scenes: list[SceneCloud], voxel_size: float, features: str, label_mode: str, up_axis: int,
                 augment: Augment | None, seed: int) -> None:
        self.scenes, self.voxel_size, self.features = scenes, voxel_size, features
        self.label_mode, self.up_axis, self.augment, self.seed = label_mode, up_axis, augment, seed
        if features == "normals":
            missing = [s.name for s in scenes if s.normals is None]
            if missing:
                raise ValueError(f"features='normals' but these scenes have no normals: {missing[:5]}")

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, draw = _key(item)
        scene = self.scenes[index]
        xyz = np.asarray(scene.xyz, dtype=np.float32)
        rgb = np.asarray(scene.rgb, dtype=np.float32)
        normals = None if scene.normals is None else np.asarray(scene.normals, dtype=np.float32)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, draw, index])
            xyz, rgb, normals = self.augment(xyz, rgb, normals, self.up_axis, rng)
        if len(xyz):
            xyz = xyz - xyz.min(0)  # non-negative voxel coordinates
        if self.features == "rgb":
            feats = rgb - 0.5
        elif self.features == "normals":
            feats = normals
        else:
            feats = np.ones((len(xyz), 1), dtype=np.float32)
        labels = np.asarray(scene.labels, dtype=np.int64)
        vox = voxelize(xyz, feats, self.voxel_size, labels=labels, label_mode=self.label_mode,
                          ignore_index=IGNORE_INDEX)
        return {
            "coords": torch.from_numpy(vox.coords),
            "feats": torch.from_numpy(vox.feats),
            "labels": torch.from_numpy(vox.labels),
            "inverse": torch.from_numpy(vox.inverse),
            "point_labels": torch.from_numpy(labels.copy()),
            "room": torch.tensor(index, dtype=torch.int64),
        }


class EpochSampler(Sampler):
    """Shuffles and tags every index with a per-epoch seed, both drawn from ``generator`` (checkpointed)."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size, self.generator = size, generator

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        draw = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        order = torch.randperm(self.size, generator=self.generator).tolist()
        return iter([(i, draw) for i in order])


# -- datamodule ------------------------------------------------------------------------------------------------
class SceneSemsegDataModule(pl.LightningDataModule):
    """Scene semantic segmentation: subclasses give ``class_names`` and ``load_scenes(split)``.

    ``val_split``: the split validation runs on ("test" by default, as the original S3DIS/ScanNet codes do;
    "val" when the dataset has one). ``augment`` acts in voxel mode only (the block pipelines of PointNet and
    DGCNN train without augmentation). ``up_axis``: the axis normal to the block plane and kept fixed by rotation.
    """

    def __init__(
        self,
        mode: str = "blocks",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        val_split: str = "test",
        block_size: float = 1.0,
        block_stride: float = 0.5,
        num_points: int = 4096,
        min_block_points: int = 100,
        eval_stride: float | None = None,
        voxel_size: float = 0.05,
        features: str = "rgb",
        label_mode: str = "majority",
        augment: bool = True,
        scale_range: tuple[float, float] = (0.9, 1.1),
        rotate: bool = True,
        color_translation: float = 0.05,
        color_jitter: float = 0.005,
        up_axis: int = 2,
        drop_last: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        checks = [("mode", mode, MODES), ("val_split", val_split, SPLITS), ("features", features, FEATURES),
                  ("label_mode", label_mode, LABEL_MODES), ("up_axis", up_axis, (0, 1, 2))]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        eval_stride = block_stride if eval_stride is None else eval_stride
        if block_size <= 0 or block_stride <= 0 or eval_stride <= 0 or voxel_size <= 0:
            raise ValueError("block_size, block_stride, eval_stride and voxel_size must be positive")
        if block_stride > block_size or eval_stride > block_size:
            raise ValueError(f"strides ({block_stride}, {eval_stride}) larger than block_size {block_size} would "
                             "leave points outside every block")
        if num_points < 1:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.mode, self.batch_size = mode, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.seed, self.val_split = num_workers, seed, val_split
        self.block_size, self.block_stride, self.eval_stride = block_size, block_stride, eval_stride
        self.num_points, self.min_block_points = num_points, min_block_points
        self.voxel_size, self.features, self.label_mode = voxel_size, features, label_mode
        self.augment = Augment(tuple(scale_range), rotate, color_translation, color_jitter) if augment else None
        self.up_axis, self.drop_last, self.pin_memory = up_axis, drop_last, pin_memory
        self._scenes: dict[str, list[SceneCloud]] = {}
        self._datasets: dict[str, Dataset] = {}
        self._shuffle_generator = torch.Generator().manual_seed(seed)

    # -- what a dataset provides -------------------------------------------------------------------------
    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Names of the classes, index = label id."""

    @abstractmethod
    def load_scenes(self, split: str) -> list[SceneCloud]:
        """The scenes of ``split`` ("train", "val" or "test"), in a fixed order (index = ``room``)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def ignore_index(self) -> int:
        return IGNORE_INDEX

    # -- scenes and datasets ----------------------------------------------------------------------------
    def resolve_split(self, split: str) -> str:
        """'val' maps to ``val_split``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.val_split if split == "val" else split

    def scenes(self, split: str) -> list[SceneCloud]:
        """The split's scenes, loaded once."""
        split = self.resolve_split(split)
        if split not in self._scenes:
            scenes = self.load_scenes(split)
            if not scenes:
                raise ValueError(f"{type(self).__name__}: split {split!r} has no scenes")
            self._scenes[split] = scenes
        return self._scenes[split]

    def room_labels(self, split: str) -> list[np.ndarray]:
        """Original per-point labels of every scene of ``split`` (index = the batches' ``room``)."""
        labels = [np.asarray(s.labels, dtype=np.int64) for s in self.scenes(split)]
        return [lab if lab.flags.writeable else np.array(lab) for lab in labels]  # memory-mapped caches

    def room_names(self, split: str) -> list[str]:
        return [s.name for s in self.scenes(split)]

    def build_dataset(self, split: str) -> Dataset:
        """The dataset of a resolved split: training sampling and augmentation for "train" only."""
        scenes, train = self.scenes(split), split == "train"
        if self.mode == "voxels":
            return SceneVoxels(scenes, self.voxel_size, self.features, self.label_mode, self.up_axis,
                               self.augment if train else None, self.seed)
        if train:
            data = TrainBlocks(scenes, self.up_axis, self.block_size, self.block_stride, self.num_points,
                               self.min_block_points, self.seed)
            log.info("%s train: %d blocks from %d scenes (%d non-empty blocks with < %d points dropped)",
                     type(self).__name__, len(data), len(scenes), data.dropped, self.min_block_points)
            return data
        return EvalBlocks(scenes, self.up_axis, self.block_size, self.eval_stride, self.num_points, self.seed)

    def dataset(self, split: str) -> Dataset:
        split = self.resolve_split(split)
        if split not in self._datasets:
            self._datasets[split] = self.build_dataset(split)
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)
        for split in wanted:
            self.dataset(split)

    def _collate(self) -> Any:
        return collate_voxels if self.mode == "voxels" else None  # default collate

    def train_dataloader(self) -> DataLoader:
        data = self.dataset("train")
        return DataLoader(data, batch_size=self.batch_size, sampler=EpochSampler(len(data), self._shuffle_generator),
                          drop_last=self.drop_last, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          collate_fn=self._collate())

    def eval_dataloader(self, split: str) -> DataLoader:
        """Every block chunk (or scene) of ``split`` once, in order, without augmentation."""
        return DataLoader(self.dataset(split), batch_size=self.eval_batch_size, shuffle=False, drop_last=False,
                          num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=self._collate())

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    # -- resumable state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"shuffle_generator": self._shuffle_generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._shuffle_generator.set_state(state_dict["shuffle_generator"])
