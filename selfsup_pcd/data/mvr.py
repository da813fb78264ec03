"""Multi-view rendering (MVR) pretraining data: points, rendered views and pixel↔point pairs per shape.

Reads a render cache (``selfsup_pcd/render/cache.py``: views, points, pairs ``view,row,col,point_idx``).
When the cache is missing, ``prepare_data`` renders it from a ``source`` point/mesh datamodule (meshes
when the dataset has them, point splats otherwise), so a run works from nothing; the cache is the one
``python -m selfsup_pcd.render data=<source>`` writes (same folder and fingerprint).

Per shape the loader yields the points (optional axis reorder, centred, unit sphere, first ``num_points``
rows by default: spec §1, quirk 11) and either the V views (uint8, turned into float [0, 1] on the
device) or, after :meth:`MVRDataModule.use_teacher_features`, the frozen teacher's cached feature maps.
Pair sampling (spec §3) happens per step in the main process, batched over the objects, with the
datamodule's generator (saved in checkpoints, so a resumed run draws the same pairs):

* views: a random subset of ``num_views`` (all by default), views with ≤ ``min_view_pairs`` pairs last
  when fewer than all are requested (as the original);
* ``random``: ``num_pairs`` rows uniformly without replacement (a point seen in several views may repeat);
* ``fps``: farthest-point order over the points that have a pair; every pair of each point in turn;
* ``one_per_point`` (the spec's ``sps``): FPS over distinct points with one random pair each when there
  are enough such points, else round robin over the points;
* shortage (fewer pairs than ``num_pairs``, quirk 7): ``replace`` (default: all pairs, then draws with
  replacement; counted in ``pair_shortage``), ``skip`` (drop the shape from the batch) or ``error``;
* ``shuffle``: a control that permutes the point indices among an object's sampled pairs, breaking the
  correspondences while keeping everything else.

Batch keys after transfer: ``points`` (B, n, C), ``label``, ``index``, ``pairs`` (B, P, 4) int64 with the
view as a position in the chosen subset, ``views`` (B, V', 3, H, W) float or ``teacher_feats``
(B, V', C, h, w) float, ``image_size`` (2,) = (H, W), ``pair_shortage`` (number of shapes short of pairs).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from selfsup_pcd.data.base import PointCloudDataModule
from selfsup_pcd.data.errors import DataFormatError
from selfsup_pcd.data.modelnet40 import _LazyH5

log = logging.getLogger(__name__)

PAIR_METHODS = ("random", "fps", "one_per_point")
SHORTAGE_POLICIES = ("replace", "skip", "error")
SUBSAMPLINGS = ("first", "random")
# ``pairs`` options of MVRDataModule (spec §3; quirk 7 for on_shortage)
PAIR_DEFAULTS: dict[str, Any] = {"num_pairs": 512, "sampling": "random", "num_views": None, "min_view_pairs": 128,
                                 "on_shortage": "replace", "shuffle": False}


# ----------------------------------------------------------------------------------------- sampling
def farthest_point_order(xyz: np.ndarray, candidates: np.ndarray, start: int, weights: np.ndarray | None = None,
                         budget: float | None = None) -> np.ndarray:
    """Farthest point sampling order over ``xyz[candidates]`` from ``candidates[start]`` (indices into xyz).

    Stops early once the ``weights`` of the picked points add up to ``budget`` (fps: enough pairs), else
    orders every candidate. NumPy: on ≤ a few thousand points one iteration costs microseconds.
    """
    pts = np.asarray(xyz, dtype=np.float64)[candidates]
    count = len(candidates)
    picked = np.empty(count, dtype=np.int64)
    nearest = np.full(count, np.inf)
    current, total = start, 0.0
    for j in range(count):
        picked[j] = current
        if weights is not None and budget is not None:
            total += float(weights[candidates[current]])
            if total >= budget:
                return candidates[picked[:j + 1]]
        diff = pts - pts[current]
        nearest[current] = -1.0  # distances are >= 0, so a picked point stays at -1
        np.minimum(nearest, np.einsum("ij,ij->i", diff, diff), out=nearest)
        current = int(nearest.argmax())
    return candidates[picked]


def _pairs_by_point(pairs: Tensor, num_points: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Rows of ``pairs`` grouped by point in a random order inside each point: (row order, counts (num_points,))."""
    jitter = torch.randperm(len(pairs), generator=generator)
    by_point = jitter[torch.argsort(pairs[jitter, 3], stable=True)]
    return by_point, torch.bincount(pairs[:, 3].long(), minlength=num_points)


def order_pairs(pairs: Tensor, xyz: Tensor, method: str, generator: torch.Generator,
                budget: int | None = None) -> Tensor:
    """All rows of one object's ``pairs`` (M, 4) in the order ``method`` takes them (a permutation of M).

    ``random``: a random permutation. ``fps``: points in FPS order, all pairs of each point in turn
    (FPS stops once ``budget`` pairs are covered; the remaining pairs follow in random order).
    ``one_per_point``: one random pair of each of ``budget`` FPS-chosen points when at least ``budget``
    points have pairs, else rounds over all points in FPS order (one pair of each point per round), so
    the first min(budget, |points|) rows always have distinct points.
    """
    m = len(pairs)
    if method == "random" or m == 0:
        return torch.randperm(m, generator=generator)
    n = len(xyz)
    by_point, counts = _pairs_by_point(pairs, n, generator)
    candidates = torch.nonzero(counts).squeeze(1).numpy()
    start = int(torch.randint(len(candidates), (1,), generator=generator))
    xyz_np = xyz[:, :3].detach().cpu().numpy()
    first_row = torch.cumsum(counts, 0) - counts  # start of each point's block in by_point
    if method == "fps":
        fps = farthest_point_order(xyz_np, candidates, start, counts.numpy(), budget)
        chosen = torch.cat([by_point[first_row[p]:first_row[p] + counts[p]] for p in fps.tolist()])
        rest = torch.ones(m, dtype=torch.bool)
        rest[chosen] = False  # the other pairs follow in random order (only read on a shortage)
        return torch.cat([chosen, by_point[rest[by_point]]])
    # one_per_point: with enough points, FPS picks `budget` of them, one random pair each; otherwise all points
    # in FPS order and rounds over them: sort the pairs by (round = rank inside the point's block, FPS rank)
    limit = budget if budget is not None and len(candidates) >= budget else None
    fps = farthest_point_order(xyz_np, candidates, start, np.ones(n), limit)
    rank_of_point = torch.full((n,), n, dtype=torch.long)
    rank_of_point[torch.from_numpy(fps)] = torch.arange(len(fps))
    point = pairs[by_point, 3].long()
    round_ = torch.arange(m) - first_row[point]
    key = round_ * (n + 1) + rank_of_point[point]
    return by_point[torch.argsort(key)]


def sample_object_pairs(
    pairs: Tensor,
    xyz: Tensor,
    num_pairs: int,
    method: str,
    generator: torch.Generator,
    on_shortage: str = "replace",
) -> tuple[Tensor | None, bool]:
    """``num_pairs`` rows of one object's ``pairs`` (M, 4); returns (rows or None to skip, short)."""
    m = len(pairs)
    short = m < num_pairs
    if short and (on_shortage == "skip" or m == 0):
        return None, True
    if short and on_shortage == "error":
        raise ValueError(f"only {m} pixel-point pairs, fewer than num_pairs={num_pairs} "
                         "(set pairs.on_shortage=replace or skip)")
    order = order_pairs(pairs, xyz, method, generator, budget=num_pairs)
    if short:
        extra = torch.randint(m, (num_pairs - m,), generator=generator)
        order = torch.cat([order, order[extra]])
    return pairs[order[:num_pairs]], short


def choose_views(view_counts: Tensor, num_views: int, min_view_pairs: int, generator: torch.Generator) -> Tensor:
    """A random subset of ``num_views`` views; views with ≤ ``min_view_pairs`` pairs go last (spec §2)."""
    total = len(view_counts)
    perm = torch.randperm(total, generator=generator)
    if num_views >= total:
        return perm
    poor = (view_counts[perm] <= min_view_pairs).long()
    return perm[torch.argsort(poor, stable=True)][:num_views]


# ------------------------------------------------------------------------------------------ dataset
def _swap_and_normalize(points: np.ndarray, axis_order: Sequence[int] | None, normalize: bool) -> np.ndarray:
    """Reorders xyz (and normals) columns, then centres and scales xyz into the unit sphere."""
    points = np.array(points, dtype=np.float32)
    if axis_order is not None:
        order = list(axis_order)
        points[:, :3] = points[:, order]
        if points.shape[1] >= 6:
            points[:, 3:6] = points[:, [3 + i for i in order]]
    if normalize:
        xyz = points[:, :3]
        xyz -= xyz.mean(axis=0)
        xyz /= max(float(np.linalg.norm(xyz, axis=1).max()), 1e-12)
    return points


class RenderedShapesDataset(Dataset):
    """Shapes ``indices`` of a render cache with their views (or cached teacher features) and all pairs."""

    def __init__(
        self,
        cache_path: str | Path,
        indices: np.ndarray,
        channels: int = 3,
        num_points: int | None = None,
        subsample: str = "first",
        normalize: bool = True,
        axis_order: Sequence[int] | None = None,
        teacher_features: str | Path | None = None,
    ) -> None:
        self.cache = _LazyH5(Path(cache_path))
        self.indices = np.asarray(indices, dtype=np.int64)
        self.channels, self.subsample, self.normalize = channels, subsample, normalize
        self.axis_order = list(axis_order) if axis_order is not None else None
        self.features = _LazyH5(Path(teacher_features)) if teacher_features else None
        with h5py.File(cache_path, "r") as f:
            self.labels = f["label"][:][self.indices]
            stored_points, stored_channels = f["points"].shape[1:]
            self.image_size = tuple(int(s) for s in f["views"].shape[2:4])
            self.num_views = int(f["views"].shape[1])
        if stored_channels < channels:
            raise DataFormatError(cache_path, f"points have {stored_channels} channels, {channels} requested")
        self.num_points = num_points or stored_points
        if self.num_points > stored_points:
            raise DataFormatError(cache_path, f"holds {stored_points} points per shape, fewer than "
                                              f"num_points={self.num_points}")
        if self.features is not None:
            with h5py.File(teacher_features, "r") as f:
                if f["feats"].shape[0] != self.num_shapes_in_cache(cache_path):
                    raise DataFormatError(teacher_features, "teacher features do not match the render cache")

    @staticmethod
    def num_shapes_in_cache(path: str | Path) -> int:
        with h5py.File(path, "r") as f:
            return int(f["label"].shape[0])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        k = int(self.indices[index])
        f = self.cache.get()
        points = _swap_and_normalize(f["points"][k][:, :self.channels], self.axis_order, self.normalize)
        start, stop = f["pairs_offset"][k:k + 2]
        pairs = f["pairs"][start:stop].astype(np.int64)
        if self.subsample == "first" and self.num_points < len(points):
            points = points[:self.num_points]
            pairs = pairs[pairs[:, 3] < self.num_points]
        item = {"points": torch.from_numpy(points), "label": torch.tensor(self.labels[index], dtype=torch.int64),
                "index": torch.tensor(index, dtype=torch.int64), "pairs": torch.from_numpy(pairs)}
        if self.features is not None:
            item["teacher_feats"] = torch.from_numpy(self.features.get()["feats"][k])
        else:
            item["views"] = torch.from_numpy(f["views"][k])
        return item


def collate_shapes(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Stacks fixed-size fields; concatenates the variable pair tables (``pairs_count`` per shape)."""
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0] if key != "pairs"}
    batch["pairs"] = torch.cat([item["pairs"] for item in items])
    batch["pairs_count"] = torch.tensor([len(item["pairs"]) for item in items], dtype=torch.int64)
    return batch


# --------------------------------------------------------------------------------------- datamodule
class MVRDataModule(PointCloudDataModule):
    """Render-cache shapes with per-step pair sampling for MVR pretraining (module docstring).

    ``source``: the point/mesh datamodule whose shapes are rendered — a Hydra config mapping
    (instantiated only when needed: rendering, class names, shape ids) or a datamodule object.
    ``source_name``: its config name (the render CLI's ``data=`` choice; part of the cache fingerprint).
    ``render``: render settings (``conf/render.yaml`` keys; unset ones take their defaults) plus
    ``workers``, ``start_method``, ``overwrite``. ``pairs``: ``num_pairs`` (512), ``sampling``
    (random | fps | one_per_point), ``num_views`` (null: all), ``min_view_pairs`` (128), ``on_shortage``
    (replace | skip | error), ``shuffle`` (the shuffled-correspondence control).
    ``exclude_list``: shape ids (or a file of ids, one per line) left out of training, e.g. the 18
    shapes the original skips (quirk 10); needs a source whose dataset has ids (ModelNet40).
    """

    def __init__(
        self,
        render_dir: str | Path,
        source: Mapping[str, Any] | Any = None,
        source_name: str = "data",
        render: Mapping[str, Any] | None = None,
        splits: Sequence[str] = ("train",),
        num_points: int | None = 1024,
        subsample: str = "first",
        use_normals: bool = False,
        normalize: bool = True,
        axis_order: Sequence[int] | None = None,
        pairs: Mapping[str, Any] | None = None,
        exclude_list: Sequence[str] | str | None = None,
        teacher_features: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        options = {**PAIR_DEFAULTS, **dict(pairs or {})}
        unknown = set(options) - set(PAIR_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown pairs options {sorted(unknown)}; known: {sorted(PAIR_DEFAULTS)}")
        for value, allowed, name in ((options["sampling"], PAIR_METHODS, "pairs.sampling"),
                                     (options["on_shortage"], SHORTAGE_POLICIES, "pairs.on_shortage"),
                                     (subsample, SUBSAMPLINGS, "subsample")):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if axis_order is not None and sorted(axis_order) != [0, 1, 2]:
            raise ValueError(f"axis_order must be a permutation of [0, 1, 2], got {list(axis_order)}")
        self.render_dir = Path(render_dir).expanduser()
        self.source, self.source_name = source, source_name
        self.render_cfg = dict(render or {})
        self.splits = list(splits)
        self.num_points, self.subsample = num_points, subsample
        self.use_normals, self.normalize = use_normals, normalize
        self.axis_order = list(axis_order) if axis_order is not None else None
        self.num_views, self.min_view_pairs = options["num_views"], int(options["min_view_pairs"])
        self.num_pairs, self.pair_sampling = int(options["num_pairs"]), options["sampling"]
        self.on_shortage, self.shuffle_pairs = options["on_shortage"], bool(options["shuffle"])
        self.exclude_list = exclude_list
        self.teacher_features = Path(teacher_features) if teacher_features else None
        self._source_dm: Any = None
        self.shortage_total = 0

    # -- the source datamodule and the render cache ------------------------------------------------
    def source_datamodule(self) -> Any:
        """The source datamodule (instantiated from its config on first use)."""
        if self._source_dm is None:
            if self.source is None:
                raise ValueError("MVRDataModule needs `source` (a point/mesh datamodule config) to render or name "
                                 f"shapes; no render cache found in {self.render_dir}")
            if isinstance(self.source, Mapping):
                from hydra.utils import instantiate

                self._source_dm = instantiate(self.source)
            else:
                self._source_dm = self.source
        return self._source_dm

    def source_description(self, split: str) -> dict[str, Any]:
        """What the render fingerprint records about the shapes (as ``python -m selfsup_pcd.render``)."""
        if isinstance(self.source, Mapping):
            from omegaconf import OmegaConf

            from selfsup_pcd.render.cli import source_description

            return source_description(OmegaConf.create(dict(self.source)), self.source_name, split)
        return {"name": self.source_name, "split": split, "data": {"class": type(self.source).__name__}}

    def render_cache_path(self, split: str = "train") -> Path:
        from selfsup_pcd.render.cache import paths_for

        return paths_for(self.render_dir, self.val_split if split == "val" else split)[0]

    def prepare_data(self) -> None:
        """Renders the splits whose cache is missing (resumable); a finished cache is checked, not rebuilt."""
        from selfsup_pcd.render.cache import RenderSettings, build

        settings = RenderSettings.from_mapping(self.render_cfg)
        overwrite = bool(self.render_cfg.get("overwrite", False))
        for split in self.splits:
            path = self.render_cache_path(split)
            if path.is_file() and (self.source is None or self._cache_matches(path, settings, split, overwrite)):
                continue
            log.info("render cache %s missing or stale: rendering the %s split of %s", path, split, self.source_name)
            source = self.source_datamodule()
            source.prepare_data()
            build(source.dataset(split), self.render_dir, split, settings, source=self.source_description(split),
                  workers=int(self.render_cfg.get("workers", 0)), start_method=self.render_cfg.get("start_method"),
                  overwrite=overwrite)
            self._write_ids(source.dataset(split), split)

    def _cache_matches(self, path: Path, settings: Any, split: str, overwrite: bool) -> bool:
        """Whether a finished cache holds these settings and source (without building the source dataset).

        A mismatch raises (as the render CLI does) unless ``render.overwrite``; a complete match skips the
        source entirely, so a run on a finished cache never loads or generates the shapes again.
        """
        from dataclasses import asdict

        from selfsup_pcd.render.cache import RenderCacheError

        def canonical(value: Any) -> Any:
            return json.loads(json.dumps(value, sort_keys=True, default=str))

        with h5py.File(path, "r") as f:
            stored = json.loads(str(f.attrs.get("config", "{}")))
            complete = bool(f.attrs.get("complete", False))
        stored_source = {k: v for k, v in stored.get("source", {}).items() if k != "num_shapes"}
        if complete and canonical(stored.get("render")) == canonical(asdict(settings)) and \
                canonical(stored_source) == canonical(self.source_description(split)):
            return True
        if overwrite:
            return False  # build() replaces it
        raise RenderCacheError(f"{path} was rendered with other settings or shapes.\nstored: {stored}\nwanted: "
                               f"{ {'render': asdict(settings), 'source': self.source_description(split)} }\n"
                               "Use another data.render_dir, or set data.render.overwrite=true to replace it")

    def _write_ids(self, dataset: Any, split: str) -> None:
        """Shape ids beside the cache (``<split>.ids.json``), for exclusion lists; only if the dataset has ids."""
        ids = getattr(dataset, "ids", None)
        path = self.render_dir / f"{split}.ids.json"
        if ids is not None and not path.is_file():
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(list(ids)))
            tmp.replace(path)

    def shape_ids(self, split: str) -> list[str]:
        """Ids of the cached shapes (from ``<split>.ids.json``, else from the source dataset)."""
        path = self.render_dir / f"{split}.ids.json"
        if path.is_file():
            return json.loads(path.read_text())
        ids = getattr(self.source_datamodule().dataset(split), "ids", None)
        if ids is None:
            raise ValueError(f"exclude_list needs shape ids, and the {self.source_name} dataset has none")
        return list(ids)

    def _excluded(self) -> set[str]:
        if not self.exclude_list:
            return set()
        if isinstance(self.exclude_list, str | Path):
            lines = Path(self.exclude_list).read_text().splitlines()
            return {line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()}
        return set(self.exclude_list)

    # -- PointCloudDataModule ----------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        try:
            return list(self.source_datamodule().class_names)
        except Exception:  # no usable source: name the labels found in the cache
            with h5py.File(self.render_cache_path("train"), "r") as f:
                return [str(i) for i in range(int(f["label"][:].max()) + 1)]

    def setup(self, stage: str | None = None) -> None:
        """Pretraining reads the training split only (no validation loop); other splits load on request."""
        if self.trainer is not None and self.trainer.world_size > 1:
            self._augment_generator.manual_seed(self.seed + 1 + 1000 * self.trainer.global_rank)
        self.dataset("train")

    def build_dataset(self, split: str) -> RenderedShapesDataset:
        path = self.render_cache_path(split)
        if not path.is_file():
            raise FileNotFoundError(f"render cache {path} missing: call prepare_data() (or python -m "
                                    f"selfsup_pcd.render data={self.source_name}) first")
        num_shapes = RenderedShapesDataset.num_shapes_in_cache(path)
        indices = np.arange(num_shapes)
        excluded = self._excluded()
        if excluded:
            ids = self.shape_ids(split)
            if len(ids) != num_shapes:
                raise DataFormatError(path, f"holds {num_shapes} shapes, the source lists {len(ids)} ids")
            keep = np.array([i not in excluded for i in ids])
            log.info("%s: excluded %d of %d listed shapes", split, int((~keep).sum()), len(excluded))
            indices = indices[keep]
        features = self.teacher_features if split == "train" else None
        return RenderedShapesDataset(path, indices, channels=6 if self.use_normals else 3, num_points=self.num_points,
                                     subsample=self.subsample, normalize=self.normalize, axis_order=self.axis_order,
                                     teacher_features=features)

    def _loader(self, split: str, shuffle: bool, drop_last: bool, batch_size: int) -> torch.utils.data.DataLoader:
        loader = super()._loader(split, shuffle, drop_last, batch_size)
        loader.collate_fn = collate_shapes
        return loader

    def use_teacher_features(self, path: str | Path | None) -> None:
        """Ship the cached teacher feature maps of ``path`` instead of the views (None: the views again)."""
        self.teacher_features = Path(path) if path else None
        self._datasets.pop("train", None)

    # -- per-step sampling -------------------------------------------------------------------------
    def sample_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Chooses the views and the pairs of every shape of a collated batch (CPU, the datamodule generator)."""
        generator = self._augment_generator
        points, counts = batch["points"], batch["pairs_count"].tolist()
        pair_tables = torch.split(batch["pairs"], counts)
        images = batch["teacher_feats"] if "teacher_feats" in batch else batch["views"]
        total_views = images.shape[1]
        num_views = min(self.num_views or total_views, total_views)
        if self.subsample == "random" and self.num_points and self.num_points < points.shape[1]:
            points, pair_tables = self._random_subsample(points, pair_tables, generator)
        keep, chosen_views, sampled, short_count = [], [], [], 0
        for b, table in enumerate(pair_tables):
            views = choose_views(torch.bincount(table[:, 0], minlength=total_views), num_views, self.min_view_pairs,
                                 generator)
            position = torch.full((total_views,), -1, dtype=torch.long)
            position[views] = torch.arange(len(views))
            table = table[position[table[:, 0]] >= 0].clone()
            table[:, 0] = position[table[:, 0]]
            try:
                rows, short = sample_object_pairs(table, points[b], self.num_pairs, self.pair_sampling, generator,
                                                  self.on_shortage)
            except ValueError as err:
                raise ValueError(f"shape {int(batch['index'][b])}: {err}") from None
            short_count += int(short)
            if rows is None:
                continue
            if self.shuffle_pairs:
                rows = rows.clone()
                rows[:, 3] = rows[torch.randperm(len(rows), generator=generator), 3]
            keep.append(b)
            chosen_views.append(views)
            sampled.append(rows)
        if short_count:
            self.shortage_total += short_count
            log.debug("%d shapes of this batch have fewer than %d pairs (%s)", short_count, self.num_pairs,
                      self.on_shortage)
        out = {key: value for key, value in batch.items() if key not in ("pairs", "pairs_count", "views",
                                                                         "teacher_feats", "points")}
        index = torch.tensor(keep, dtype=torch.long)
        for key in ("label", "index"):
            out[key] = out[key][index]
        out["points"] = points[index]
        key = "teacher_feats" if "teacher_feats" in batch else "views"
        out[key] = (torch.stack([images[b][v] for b, v in zip(keep, chosen_views)]) if keep
                    else images[:0, :num_views])
        out["pairs"] = torch.stack(sampled) if sampled else torch.zeros(0, self.num_pairs, 4, dtype=torch.long)
        out["image_size"] = torch.tensor(self.image_size(batch), dtype=torch.long)
        out["pair_shortage"] = torch.tensor(short_count, dtype=torch.long)
        return out

    def image_size(self, batch: dict[str, Tensor]) -> tuple[int, int]:
        if "views" in batch:
            return tuple(batch["views"].shape[2:4])
        return self.dataset("train").image_size

    def _random_subsample(self, points: Tensor, tables: Sequence[Tensor],
                          generator: torch.Generator) -> tuple[Tensor, list[Tensor]]:
        """A random ``num_points`` subset per shape (sorted rows); pairs re-indexed, dropped points' pairs removed."""
        batch, n = points.shape[:2]
        keep = torch.stack([torch.randperm(n, generator=generator)[:self.num_points].sort().values
                            for _ in range(batch)])
        new_tables = []
        for b, table in enumerate(tables):
            position = torch.full((n,), -1, dtype=torch.long)
            position[keep[b]] = torch.arange(self.num_points)
            table = table[position[table[:, 3]] >= 0].clone()
            table[:, 3] = position[table[:, 3]]
            new_tables.append(table)
        return torch.gather(points, 1, keep.unsqueeze(-1).expand(-1, -1, points.shape[-1])), new_tables

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        if "pairs_count" in batch:
            batch = self.sample_batch(batch)
        return batch

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        batch = to_float_images(batch)
        return super().on_after_batch_transfer(batch, dataloader_idx)


def to_float_images(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """uint8 views (B, V, H, W, 3) -> float (B, V, 3, H, W) in [0, 1]; cached features -> float32."""
    batch = dict(batch)
    views = batch.get("views")
    if views is not None and views.dtype == torch.uint8:
        batch["views"] = views.permute(0, 1, 4, 2, 3).float().div_(255.0)
    feats = batch.get("teacher_feats")
    if feats is not None and feats.dtype == torch.float16:
        batch["teacher_feats"] = feats.float()
    return batch
