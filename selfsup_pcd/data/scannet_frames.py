"""ScanNet RGB-D frames as spatio-temporal pairs of point clouds (STRL's ``ScanNetFrameContrast``,
``strl_byol.md`` §1-§2).

Reads ``scannet_frames_25k/<scene>/{depth/<frame>.png, pose/<frame>.txt, intrinsics_depth.txt}`` (depth:
uint16 millimetres, 0 = no measurement; pose: 4×4 camera-to-world). Each item pairs a frame (the anchor)
with a partner frame of the same scene: ``mode="both"`` draws it uniformly among the frames at most
``window`` positions away including the anchor itself (STRL: window 1, so previous / same / next),
``"temporal"`` excludes the anchor, ``"spatial"`` always takes the anchor. Both frames are back-projected
(``z = d / 1000``, ``x = (u + pixel_offset − cx)·z / fx``, ``y = (v + pixel_offset − cy)·z / fy``) and
moved by their poses into the world frame shifted to the anchor camera's position (shared z-up
orientation, origin at the anchor camera), as the original does.

Differences from the original, each a switch (spec §8):
- quirk 6: pixels with depth 0 are dropped (``keep_invalid_depth=true`` keeps them, as the original did:
  a pile of points at the camera centre);
- quirk 7: frames whose pose is not finite (ScanNet marks lost tracking with ``-inf``) or is not a 4×4
  matrix, and frames missing their depth or pose file, are handled by ``invalid_frames``: ``skip`` (default)
  leaves them out of the index, so they are never an anchor nor a partner, and counts them per reason in
  ``skipped`` (logged at set-up with examples); ``error`` raises one error naming the first bad file;
- quirk 8: training uses the training scenes only (``pretrain_scenes=all`` adds the validation scenes, as
  the original, which had no split filter, did). Scenes are split by ``split_files`` (ScanNet's
  ``scannetv2_{train,val}.txt``) when given, else a seeded ``val_fraction`` of the scenes is held out.

Each frame is thinned to ``points_per_frame`` points drawn uniformly from its valid pixels (a frame has up
to 307,200), so batches are fixed-size tensors: ``points``, ``partner`` (B, M, 3) float32 and
``points_mask``, ``partner_mask`` (B, M) bool, False on the padding rows of frames with fewer valid pixels.
Training items draw their partner and points from torch's RNG (seeded per DataLoader worker from the
datamodule's saved generator); validation items from a generator seeded by the item index (fixed pairs).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup_pcd.data.base import PointCloudDataModule
from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.writers.scannet_frames import read_depth_png

log = logging.getLogger(__name__)

FOLDER = "scannet_frames_25k"
MODES = ("both", "temporal", "spatial")
POLICIES = ("skip", "error")
LAYOUT = f"""\
<root>/{FOLDER}/                   (or <root> itself)
└── scene0000_00/
    ├── depth/000000.png, 000100.png, ...  uint16 PNG, millimetres, 0 = no depth
    ├── pose/000000.txt, ...               4x4 camera-to-world (4 rows of 4 numbers)
    └── intrinsics_depth.txt               4x4: fx [0,0], fy [1,1], cx [0,2], cy [1,2]"""
SOURCE = (
    "scannet_frames_25k.zip of the ScanNet release (Dai et al., CVPR 2017; access by signing the ScanNet terms "
    "of use, http://www.scan-net.org/). `python -m selfsup_pcd.synth scannet_frames --out DIR` writes a "
    "synthetic copy in the same layout."
)


@dataclass
class SceneFrames:
    """The usable frames of one scene: names, camera-to-world poses (F, 4, 4) and depth intrinsics."""

    name: str
    folder: Path
    frames: list[str]
    poses: np.ndarray
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy
    skipped: Counter = field(default_factory=Counter)

    def depth_path(self, i: int) -> Path:
        return self.folder / "depth" / f"{self.frames[i]}.png"


def read_matrix(path: Path) -> np.ndarray:
    """A 4×4 matrix from a whitespace-separated text file; raises DataFormatError naming the file."""
    try:
        matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise DataFormatError(path, f"is not a 4x4 matrix of numbers ({err})") from None
    if matrix.shape != (4, 4):
        raise DataFormatError(path, f"must hold a 4x4 matrix, found shape {matrix.shape}")
    return matrix


def _frame_number(path: Path) -> int:
    try:
        return int(path.stem)
    except ValueError:
        raise DataFormatError(path, "frame files must be named by their frame number, e.g. 000100") from None


def index_scene(folder: Path, policy: str = "skip") -> SceneFrames:
    """The frames of one scene with a depth file and a finite 4×4 pose, sorted by frame number.

    Under ``policy="error"`` the first frame without its depth or pose file, or with a non-finite or
    malformed pose, raises an error naming the file; under ``"skip"`` such frames are left out and counted.
    """
    intrinsics_file = folder / "intrinsics_depth.txt"
    if not intrinsics_file.is_file():
        raise DatasetLayoutError("ScanNet frames", intrinsics_file, LAYOUT, SOURCE)
    k = read_matrix(intrinsics_file)
    if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise DataFormatError(intrinsics_file, "focal lengths must be finite and positive")
    depth = {p.stem: p for p in (folder / "depth").glob("*.png")}
    poses = {p.stem: p for p in (folder / "pose").glob("*.txt")}
    skipped: Counter = Counter()
    names, matrices = [], []
    for name in sorted(depth.keys() | poses.keys(), key=lambda n: _frame_number(Path(n))):
        problem = None
        if name not in depth:
            problem = ("missing_depth", folder / "depth" / f"{name}.png", "depth file is missing")
        elif name not in poses:
            problem = ("missing_pose", folder / "pose" / f"{name}.txt", "pose file is missing")
        else:
            try:
                pose = read_matrix(poses[name])
            except DataFormatError as err:
                problem = ("corrupt_pose", poses[name], str(err).split(": ", 1)[-1])
            else:
                if not np.isfinite(pose).all():
                    problem = ("invalid_pose", poses[name], "pose is not finite (inf/NaN: tracking lost)")
        if problem is not None:
            reason, path, message = problem
            if policy == "error":
                raise DataFormatError(path, f"{message} (set invalid_frames=skip to leave such frames out)")
            skipped[reason] += 1
            log.debug("skipping frame %s: %s", path, message)
            continue
        names.append(name)
        matrices.append(pose)
    poses_array = np.stack(matrices) if matrices else np.zeros((0, 4, 4))
    return SceneFrames(folder.name, folder, names, poses_array, (k[0, 0], k[1, 1], k[0, 2], k[1, 2]), skipped)


def backproject_depth(
    depth_mm: np.ndarray,
    intrinsics: tuple[float, float, float, float],
    pose: np.ndarray,
    origin: np.ndarray,
    keep_invalid_depth: bool = False,
    pixel_offset: float = 0.0,
    depth_scale: float = 1000.0,
) -> np.ndarray:
    """(P, 3) float32 points of one depth frame in the world frame shifted by ``origin`` (the anchor
    camera's position); zero-depth pixels are dropped unless ``keep_invalid_depth``."""
    fx, fy, cx, cy = intrinsics
    if keep_invalid_depth:
        v, u = np.indices(depth_mm.shape).reshape(2, -1)
    else:
        v, u = np.nonzero(depth_mm)
    z = depth_mm[v, u].astype(np.float64) / depth_scale
    cam = np.stack([(u + pixel_offset - cx) * z / fx, (v + pixel_offset - cy) * z / fy, z], axis=1)
    return (cam @ pose[:3, :3].T + (pose[:3, 3] - origin)).astype(np.float32)


class ScanNetFramePairs(Dataset):
    """(anchor, partner) frame pairs of the given scenes; see the module docstring."""

    def __init__(
        self,
        scenes: list[SceneFrames],
        points_per_frame: int = 32768,
        mode: str = "both",
        window: int = 1,
        keep_invalid_depth: bool = False,
        pixel_offset: float = 0.0,
        depth_scale: float = 1000.0,
        fixed_pairs: bool = False,
        seed: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.scenes = [s for s in scenes if s.frames]
        self.index = [(s, i) for s, scene in enumerate(self.scenes) for i in range(len(scene.frames))]
        self.points_per_frame, self.mode, self.window = points_per_frame, mode, window
        self.keep_invalid_depth, self.pixel_offset, self.depth_scale = keep_invalid_depth, pixel_offset, depth_scale
        self.fixed_pairs, self.seed = fixed_pairs, seed

    def __len__(self) -> int:
        return len(self.index)

    def partners(self, index: int) -> list[int]:
        """Frame positions (in the anchor's scene) the partner of item ``index`` is drawn from."""
        s, i = self.index[index]
        count = len(self.scenes[s].frames)
        if self.mode == "spatial" or count == 1:
            return [i]
        near = range(max(0, i - self.window), min(count, i + self.window + 1))
        return [j for j in near if self.mode == "both" or j != i]

    def _rng(self, index: int) -> np.random.Generator:
        if self.fixed_pairs:
            return np.random.default_rng([self.seed, index])
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def frame_points(self, s: int, i: int, origin: np.ndarray) -> np.ndarray:
        scene = self.scenes[s]
        path = scene.depth_path(i)
        points = backproject_depth(read_depth_png(path), scene.intrinsics, scene.poses[i], origin,
                                   self.keep_invalid_depth, self.pixel_offset, self.depth_scale)
        if len(points) == 0:
            raise DataFormatError(path, "depth frame has no valid pixel")
        return points

    def _sample(self, points: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.points_per_frame
        out = np.zeros((m, 3), dtype=np.float32)
        mask = np.zeros(m, dtype=bool)
        take = min(m, len(points))
        out[:take] = points[rng.choice(len(points), size=take, replace=False)]
        mask[:take] = True
        return torch.from_numpy(out), torch.from_numpy(mask)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s, i = self.index[index]
        rng = self._rng(index)
        candidates = self.partners(index)
        j = candidates[int(rng.integers(len(candidates)))]
        origin = self.scenes[s].poses[i, :3, 3]
        anchor = self.frame_points(s, i, origin)
        partner = anchor if j == i else self.frame_points(s, j, origin)
        points, points_mask = self._sample(anchor, rng)
        partner_points, partner_mask = self._sample(partner, rng)
        return {"points": points, "points_mask": points_mask, "partner": partner_points,
                "partner_mask": partner_mask, "index": torch.tensor(index), "partner_offset": torch.tensor(j - i)}


class ScanNetFramesDataModule(PointCloudDataModule):
    """Spatio-temporal frame pairs of ``scannet_frames_25k`` (no classes), split by scene."""

    def __init__(
        self,
        root: str | Path,
        points_per_frame: int = 32768,
        mode: str = "both",
        window: int = 1,
        keep_invalid_depth: bool = False,
        invalid_frames: str = "skip",
        pretrain_scenes: str = "train",
        split_files: dict[str, str | None] | None = None,
        val_fraction: float = 0.1,
        pixel_offset: float = 0.0,
        depth_scale: float = 1000.0,
        seed: int = 0,
        **kwargs,
    ) -> None:
        kwargs.setdefault("val_split", "val")
        super().__init__(seed=seed, **kwargs)
        if invalid_frames not in POLICIES:
            raise ValueError(f"invalid_frames must be one of {POLICIES}, got {invalid_frames!r}")
        if pretrain_scenes not in ("train", "all"):
            raise ValueError(f"pretrain_scenes must be 'train' or 'all', got {pretrain_scenes!r}")
        self.root = Path(root).expanduser()
        self.points_per_frame, self.mode, self.window = points_per_frame, mode, window
        self.keep_invalid_depth, self.invalid_frames = keep_invalid_depth, invalid_frames
        self.pretrain_scenes, self.val_fraction = pretrain_scenes, val_fraction
        self.split_files = dict(split_files or {})
        self.pixel_offset, self.depth_scale = pixel_offset, depth_scale
        self._scenes: list[SceneFrames] | None = None
        self.skipped: Counter = Counter()

    @property
    def class_names(self) -> list[str]:
        return []

    @property
    def frames_dir(self) -> Path:
        return self.root / FOLDER if (self.root / FOLDER).is_dir() else self.root

    def prepare_data(self) -> None:
        folders = [p for p in sorted(self.frames_dir.glob("*")) if p.is_dir()] if self.frames_dir.is_dir() else []
        if not folders:
            raise DatasetLayoutError("ScanNet frames", self.frames_dir / "scene0000_00", LAYOUT, SOURCE)

    def scenes(self) -> list[SceneFrames]:
        """Every scene folder, indexed once (frames with problems skipped and counted, or an error)."""
        if self._scenes is None:
            self.prepare_data()
            folders = [p for p in sorted(self.frames_dir.iterdir()) if p.is_dir()]
            self._scenes = [index_scene(p, self.invalid_frames) for p in folders]
            self.skipped = sum((s.skipped for s in self._scenes), Counter())
            if self.skipped:
                examples = [s.name for s in self._scenes if s.skipped][:5]
                log.warning("ScanNet frames: skipped %d frames (%s) in scenes %s", sum(self.skipped.values()),
                            dict(self.skipped), ", ".join(examples))
        return self._scenes

    def split_scenes(self) -> dict[str, list[str]]:
        """Scene names of the 'train' and 'val' splits (before ``pretrain_scenes``)."""
        names = [s.name for s in self.scenes()]
        lists = {}
        for split in ("train", "val"):
            path = self.split_files.get(split)
            if path:
                listed = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
                lists[split] = [n for n in names if n in set(listed)]
        if lists:
            val = lists.get("val", [n for n in names if n not in set(lists.get("train", []))])
            train = lists.get("train", [n for n in names if n not in set(val)])
            return {"train": train, "val": val}
        held = int(round(self.val_fraction * len(names)))
        if self.val_fraction > 0 and len(names) > 1:
            held = min(max(held, 1), len(names) - 1)
        order = np.random.default_rng(self.seed).permutation(len(names))
        val = {names[k] for k in order[:held]}
        return {"train": [n for n in names if n not in val], "val": [n for n in names if n in val]}

    def build_dataset(self, split: str) -> ScanNetFramePairs:
        split = "val" if split == "test" else split
        splits = self.split_scenes()
        wanted = set(splits["train"] + splits["val"]) if split == "train" and self.pretrain_scenes == "all" \
            else set(splits[split])
        return ScanNetFramePairs(
            [s for s in self.scenes() if s.name in wanted],
            points_per_frame=self.points_per_frame,
            mode=self.mode,
            window=self.window,
            keep_invalid_depth=self.keep_invalid_depth,
            pixel_offset=self.pixel_offset,
            depth_scale=self.depth_scale,
            fixed_pairs=split != "train",
            seed=self.seed,
        )

    def val_dataloader(self):
        if len(self.dataset("val")) == 0:
            return []
        return super().val_dataloader()
