"""Shared LightningDataModule for point-cloud datasets.

Batches are dicts: ``points`` (B, N, C) float32 (xyz, then normals when enabled), ``label`` (B,) int64 and
``index`` (B,) int64. Training augmentations run batched in ``on_after_batch_transfer`` (on the GPU when
there is one) and draw from a generator owned by the datamodule; its state, and the train loader's
shuffling generator, are saved in checkpoints so a resumed run replays exactly the same batches.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from selfsup_pcd.data.transforms import BatchTransform, Compose

SPLITS = ("train", "val", "test")


class PointCloudDataModule(pl.LightningDataModule):
    """Owns the datasets of each split, their loaders and the training augmentations."""

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_transforms: Sequence[BatchTransform] | None = None,
        val_split: str = "test",
        drop_last: bool = True,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if val_split not in SPLITS:
            raise ValueError(f"val_split must be one of {SPLITS}, got {val_split!r}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.train_transform = Compose(train_transforms or [])
        self.val_split = val_split
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.seed = seed
        self._datasets: dict[str, Dataset] = {}
        self._shuffle_generator = torch.Generator().manual_seed(seed)
        self._augment_generator = torch.Generator().manual_seed(seed + 1)

    # -- what each dataset provides -------------------------------------------------------------
    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Names of all classes, index = label id."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def build_dataset(self, split: str) -> Dataset:
        """Creates the dataset of one split ('train' or 'test'; 'val' maps to ``val_split``)."""

    # -- datasets and loaders --------------------------------------------------------------------
    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split``, built once."""
        if split == "val":
            split = self.val_split
        if split not in self._datasets:
            self._datasets[split] = self.build_dataset(split)
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:
            # Different augmentations on each rank; still deterministic under the seed.
            self._augment_generator.manual_seed(self.seed + 1 + 1000 * self.trainer.global_rank)
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage or "", SPLITS)
        for split in wanted:
            self.dataset(split)

    def _loader(self, split: str, shuffle: bool, drop_last: bool, batch_size: int) -> DataLoader:
        generator = self._shuffle_generator if shuffle else torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.dataset(split),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, drop_last=self.drop_last, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, drop_last=False, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, drop_last=False, batch_size=self.eval_batch_size)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Every shape of ``split`` once, in order, without augmentation (feature extraction)."""
        return self._loader(split, shuffle=False, drop_last=False, batch_size=self.eval_batch_size)

    # -- augmentation ----------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is not None and trainer.training and self.train_transform.transforms:
            batch = dict(batch)
            batch["points"] = self.train_transform(batch["points"], self._augment_generator)
        return batch

    # -- resumable state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "shuffle_generator": self._shuffle_generator.get_state(),
            "augment_generator": self._augment_generator.get_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._shuffle_generator.set_state(state_dict["shuffle_generator"])
        self._augment_generator.set_state(state_dict["augment_generator"])
