"""Rendered views as an image dataset: two augmented copies of each view, for SimCLR training of MVR's 2D teacher.

Reads a render cache (``selfsup_pcd/render/cache.py``: ``views`` (S, V, H, W, 3) uint8). With
``views_per_sample=1`` (default) an item is one (shape, view) image; with ``k > 1`` an item is a shape and
``k`` of its views (drawn per item), each augmented independently in each copy. Items are dicts:
``view1``, ``view2`` float in [0, 1], (3, H, W) (or (k, 3, H, W)), ``label``, ``index``, ``shape_index``.

Augmentations are ``torchvision.transforms.v2`` objects (or Hydra configs of them) applied to the uint8 image;
a final ``ToDtype(float32, scale=True)`` gives [0, 1] without mean/std normalisation, as MVR feeds its
teacher. Randomness is deterministic under ``seed``: the training sampler draws one seed per item per epoch
from a generator the datamodule owns (saved in checkpoints), and each item seeds torch's RNG with it inside
``fork_rng`` — so the result does not depend on worker count or worker order. Evaluation items use a fixed
seed per index.

When the cache file is missing, ``prepare_data`` renders it from ``source`` (a point datamodule config, e.g.
procedural shapes, or a datamodule object), so ``python -m selfsup_pcd.train method=simclr_teacher
data=render_views`` works from nothing. An existing cache rendered with other settings is an error (or is
rebuilt with ``overwrite=true``); ``source: null`` reads whatever cache lies in ``out_dir``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from selfsup_pcd.data.base import PointCloudDataModule
from selfsup_pcd.data.errors import DataFormatError

log = logging.getLogger(__name__)

_SEED_HIGH = 2**62


def item_seed(seed: int, index: int) -> int:
    """Fixed seed of evaluation item ``index`` (training items get fresh seeds every epoch)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(2))


def build_transform(augmentations: Sequence[Any] | None) -> v2.Compose:
    """The augmentation list (objects, or Hydra configs with ``_target_``) + conversion to float in [0, 1]."""
    steps: list[Callable] = []
    for aug in augmentations or []:
        if isinstance(aug, Mapping):
            from hydra.utils import instantiate

            aug = instantiate(aug)
        if not callable(aug):
            raise TypeError(f"augmentation {aug!r} is not callable")
        steps.append(aug)
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)])


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, seed)``: the order of ``base`` and one seed per item, drawn from ``generator`` when the
    epoch starts (so the generator's state after an epoch is the same whatever was consumed)."""

    def __init__(self, base: Sampler[int], generator: torch.Generator) -> None:
        self.base, self.generator = base, generator

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(self.base)
        seeds = torch.randint(0, _SEED_HIGH, (len(order),), generator=self.generator).tolist()
        return iter(zip(order, seeds))


class RenderedViewsDataset(Dataset):
    """Views of a render cache file with two augmentations each (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        transform: Callable | None = None,
        views_per_sample: int = 1,
        seed: int = 0,
        in_memory: bool | None = None,
        max_memory_gb: float = 2.0,
    ) -> None:
        self.path = Path(path)
        self.transform = transform or build_transform(None)
        self.views_per_sample, self.seed = views_per_sample, seed
        try:
            with h5py.File(self.path, "r") as f:
                if "views" not in f or "label" not in f:
                    raise DataFormatError(self.path, "not a render cache (no `views` / `label` datasets)")
                if not bool(f.attrs.get("complete", False)):
                    raise DataFormatError(self.path, "render cache is incomplete (an interrupted build?)")
                views = f["views"]
                if views.ndim != 5 or views.shape[-1] != 3 or views.dtype != np.uint8:
                    raise DataFormatError(self.path, f"`views` must be (S, V, H, W, 3) uint8, got "
                                                     f"{views.shape} {views.dtype}")
                self.num_shapes, self.num_views = int(views.shape[0]), int(views.shape[1])
                self.labels = f["label"][:].astype(np.int64)
                nbytes = int(np.prod(views.shape))
                if in_memory is None:
                    in_memory = nbytes <= max_memory_gb * 2**30
                self._views: np.ndarray | None = views[:] if in_memory else None
        except OSError as err:
            raise DataFormatError(self.path, f"cannot be read as HDF5 ({err})") from err
        if not 1 <= views_per_sample <= self.num_views:
            raise ValueError(f"views_per_sample must be in [1, {self.num_views}], got {views_per_sample}")
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.num_shapes * self.num_views if self.views_per_sample == 1 else self.num_shapes

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None  # h5py handles do not cross processes
        return state

    def _shape_views(self, shape: int) -> np.ndarray:
        if self._views is not None:
            return self._views[shape]
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file["views"][shape]

    def locate(self, index: int) -> tuple[int, int]:
        """(shape, view) of single-view item ``index``."""
        return divmod(index, self.num_views)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, item_seed(self.seed, key))
        if self.views_per_sample == 1:
            shape, view = self.locate(index)
            images = self._shape_views(shape)[view][None]
        else:
            shape = index
            rng = np.random.default_rng(seed)
            chosen = np.sort(rng.choice(self.num_views, self.views_per_sample, replace=False))
            images = self._shape_views(shape)[chosen]
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (k, 3, H, W) uint8
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            copies = [torch.stack([self.transform(tv_tensors.Image(img)).as_subclass(torch.Tensor)
                                   for img in images]) for _ in range(2)]
        if self.views_per_sample == 1:
            copies = [c[0] for c in copies]
        return {"view1": copies[0], "view2": copies[1], "label": torch.tensor(self.labels[shape]),
                "index": torch.tensor(index), "shape_index": torch.tensor(shape)}


class RenderedViewsDataModule(PointCloudDataModule):
    """Rendered views of a point/mesh dataset for image self-supervision (batches of ``view1``/``view2``)."""

    def __init__(
        self,
        out_dir: str | Path,
        source: Mapping[str, Any] | PointCloudDataModule | None = None,
        source_name: str = "data",
        render: Mapping[str, Any] | None = None,
        augmentations: Sequence[Any] | None = None,
        eval_augmentations: Sequence[Any] | None = None,
        views_per_sample: int = 1,
        splits: Sequence[str] = ("train",),
        val_split: str | None = None,
        overwrite: bool = False,
        in_memory: bool | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(seed=seed, val_split=val_split or "test", **kwargs)
        self.out_dir = Path(out_dir)
        self.source_cfg = source
        self.source_name = source_name
        self.render_cfg = dict(render or {})
        self.augmentations = list(augmentations or [])
        # evaluation views: the same augmentations unless given (SimCLR's validation loss needs two views)
        self.eval_augmentations = self.augmentations if eval_augmentations is None else list(eval_augmentations)
        self.views_per_sample = views_per_sample
        self.validate = val_split is not None
        self.splits = list(dict.fromkeys([*splits, *([self.val_split] if self.validate else [])]))
        self.overwrite = overwrite
        self.in_memory = in_memory
        self._source: PointCloudDataModule | None = None

    # -- the point dataset the views are rendered from ------------------------------------------
    @property
    def source(self) -> PointCloudDataModule | None:
        """The source datamodule, instantiated on first use (None: read the caches as they are)."""
        if self._source is None and self.source_cfg is not None:
            if isinstance(self.source_cfg, Mapping):
                from hydra.utils import instantiate

                self._source = instantiate(self.source_cfg)
            else:
                self._source = self.source_cfg
        return self._source

    def source_description(self, split: str) -> dict[str, Any]:
        """What identifies the rendered shapes; equal to the render CLI's, so the two share caches."""
        if isinstance(self.source_cfg, Mapping):
            from omegaconf import OmegaConf

            from selfsup_pcd.render.cli import source_description

            return source_description(OmegaConf.create(dict(self.source_cfg)), self.source_name, split)
        return {"name": self.source_name, "split": split, "data": {"class": type(self.source).__qualname__}}

    def render_settings(self) -> Any:
        from selfsup_pcd.render.cache import RenderSettings

        return RenderSettings.from_mapping(self.render_cfg)

    def cache_path(self, split: str) -> Path:
        return self.out_dir / f"{split}.h5"

    def _is_current(self, split: str) -> bool:
        """True when the cache of ``split`` matches the current settings; raises (or deletes) when it differs."""
        from selfsup_pcd.render.cache import RenderCacheError, fingerprint

        path = self.cache_path(split)
        try:
            with h5py.File(path, "r") as f:
                found, complete = str(f.attrs.get("fingerprint", "")), bool(f.attrs.get("complete", False))
                num_shapes = int(f["done"].shape[0]) if "done" in f else -1
        except OSError as err:
            raise DataFormatError(path, f"cannot be read as HDF5 ({err})") from err
        expected = fingerprint(self.render_settings(), {**self.source_description(split), "num_shapes": num_shapes})
        if found == expected and complete:
            return True
        if self.overwrite:
            log.warning("%s was rendered with other settings; rebuilding it", path)
            path.unlink()
            return False
        raise RenderCacheError(f"{path} was rendered with other settings or is incomplete (fingerprint {found}, "
                               f"expected {expected}); use another out_dir or set overwrite=true")

    def prepare_data(self) -> None:
        """Renders each missing split cache from ``source`` (resumable; see ``render/cache.py``)."""
        from selfsup_pcd.render.cache import build

        for split in self.splits:
            path = self.cache_path(split)
            if self.source_cfg is None:
                if not path.is_file():
                    raise FileNotFoundError(f"render cache {path} does not exist and no `source` is configured "
                                            "to render it (python -m selfsup_pcd.render builds it)")
                continue
            if path.is_file() and self._is_current(split):
                continue
            source = self.source
            source.prepare_data()
            build(source.dataset(split), self.out_dir, split, self.render_settings(),
                  source=self.source_description(split), workers=int(self.render_cfg.get("workers", 0)),
                  start_method=self.render_cfg.get("start_method"), overwrite=self.overwrite)

    # -- PointCloudDataModule interface -----------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        if self.source is not None:
            return list(self.source.class_names)
        labels = self.dataset("train").labels
        return [f"class_{i}" for i in range(int(labels.max()) + 1)]

    def build_dataset(self, split: str) -> RenderedViewsDataset:
        transform = build_transform(self.augmentations if split == "train" else self.eval_augmentations)
        return RenderedViewsDataset(self.cache_path(split), transform, views_per_sample=self.views_per_sample,
                                    seed=self.seed, in_memory=self.in_memory)

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:
            self._augment_generator.manual_seed(self.seed + 1 + 1000 * self.trainer.global_rank)
        self.dataset("train")
        if self.validate and stage in (None, "fit", "validate"):
            self.dataset("val")

    def _loader(self, split: str, shuffle: bool, drop_last: bool, batch_size: int) -> DataLoader:
        dataset = self.dataset(split)
        if shuffle:
            sampler: Sampler = SeededSampler(RandomSampler(dataset, generator=self._shuffle_generator),
                                             self._augment_generator)
        else:
            sampler = SequentialSampler(dataset)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.num_workers, pin_memory=self.pin_memory, persistent_workers=False)

    def val_dataloader(self) -> DataLoader | list:
        return super().val_dataloader() if self.validate else []

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        return batch  # images are augmented per item in the dataset
