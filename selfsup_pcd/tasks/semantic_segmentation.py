"""Semantic segmentation (S3DIS blocks with point networks; S3DIS / ScanNet scenes with voxel networks).

The input kind is read off each batch's keys:

* **point batches** ``{"points" (B, N, C), "labels" (B, N), "room" (B,), "point_index" (B, N)}`` for a network
  ``points -> logits (B, N, K)`` (or ``(logits, feature transform)``). Two levels are scored: ``block`` — the
  points of the blocks the network saw, the papers' metric — and ``room`` — every original point of every room,
  predicted by the argmax of the class probabilities summed over all evaluation blocks containing it
  (:class:`~selfsup_pcd.metrics.segmentation.RoomVotes`). Room level needs
  ``trainer.datamodule.room_labels(stage)`` (stage ``"val"`` / ``"test"``: a list of int64 label arrays,
  index = the batches' room id, every point covered by the stage's blocks); without it only block level exists
  and is the headline, with a warning. Training batches are scored at block level only.
* **voxel batches** ``{"coords" (M, 4) int32, "feats" (M, C), "labels" (M,), "inverse" (P,),
  "point_labels" (P,), "room" (B,)}`` for a network ``(coords, feats) -> logits (M, K)``. The loss is on voxels;
  levels ``voxel`` (the original SR-UNet metric) and ``point`` (each original point takes its voxel's
  prediction, ``logits[inverse]``, scored against ``point_labels``).

Logged per stage: ``loss``; ``miou``, ``oa``, ``macc`` and ``iou_<class>`` (class names from
``datamodule.class_names``) at the headline level (``metric_level``: room | block, quirk 2, default room;
``voxel_metric_level``: point | voxel, default point); ``miou_<level>``, ``oa_<level>``, ``macc_<level>`` for
every level scored; ``room_coverage`` (fraction of original points with a vote). ``val/miou_best`` is the best
validation headline over epochs. After testing, ``<run dir>/test_confusion.json`` holds every level's confusion
matrix (rows = targets) with the class names, so per-fold results (S3DIS 6-fold) can be pooled by summing.
Metric conventions (NaN-aware mean over classes, ignore label): ``selfsup_pcd.metrics.segmentation``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from selfsup_pcd.data.voxelize import IGNORE_INDEX
from selfsup_pcd.metrics.segmentation import RoomVotes, SemsegScores, semseg_scores
from selfsup_pcd.tasks.base import STAGES, OptimizerFactory, SchedulerFactory, SupervisedTask
from selfsup_pcd.tasks.losses import orthogonality_penalty, smoothed_cross_entropy

log = logging.getLogger(__name__)

NetworkFactory = Callable[..., nn.Module]
POINT_LEVELS = ("room", "block")
VOXEL_LEVELS = ("point", "voxel")
CONFUSION_FILE = "test_confusion.json"


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """Adam, lr 1e-3, weight decay 1e-4 (the PointNet recipe's optimiser), when no optimiser is configured."""
    return torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4)


class _Holder(nn.Module):
    """Presents a whole network (a voxel net) as ``.backbone`` to ``transfer_into``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.backbone = network


def segmentation_loss(logits: Tensor, target: Tensor, ignore_index: int, label_smoothing: float) -> Tensor:
    """Mean (label-smoothed) cross-entropy over the points whose label is not ``ignore_index``; 0 if none."""
    keep = target != ignore_index
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return smoothed_cross_entropy(logits[keep], target[keep], label_smoothing)


class SemanticSegmentationTask(SupervisedTask):
    """Trains a point or voxel segmentation network, from scratch or from a pretrained encoder.

    ``network`` is a factory ``(backbone=, num_classes=) -> module`` (e.g. a partial of
    :class:`~selfsup_pcd.models.semseg.DGCNNSegNetwork`); None uses ``backbone`` as the whole network (voxel
    nets built complete by their config). ``pretrained`` / ``transfer_mode`` / ``allow_partial_load`` as in
    :class:`~selfsup_pcd.tasks.part_segmentation.PartSegmentationTask`. ``optimizer`` None: :func:`default_optimizer`.
    ``feature_transform_weight`` scales the PointNet feature-transform regulariser (networks returning one).
    """

    best_metric = "val/miou"
    best_key = "best_val_miou"

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        network: NetworkFactory | None = None,
        ignore_index: int = IGNORE_INDEX,
        label_smoothing: float = 0.0,
        feature_transform_weight: float = 0.001,
        reg_reduction: str = "sum",
        metric_level: str = "room",
        voxel_metric_level: str = "point",
        pretrained: str | None = None,
        transfer_mode: str = "remap",
        allow_partial_load: bool = False,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "network", "optimizer", "scheduler"])
        if metric_level not in POINT_LEVELS:
            raise ValueError(f"metric_level must be one of {POINT_LEVELS}, got {metric_level!r}")
        if voxel_metric_level not in VOXEL_LEVELS:
            raise ValueError(f"voxel_metric_level must be one of {VOXEL_LEVELS}, got {voxel_metric_level!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.network = backbone if network is None else network(backbone=backbone, num_classes=num_classes)
        target = self.network if hasattr(self.network, "backbone") else _Holder(self.network)
        self.init_encoder(target, pretrained, transfer_mode, allow_partial_load, freeze_backbone)
        self.optimizer_factory = optimizer if optimizer is not None else default_optimizer
        self.scheduler_factory = scheduler
        make = functools.partial(MulticlassConfusionMatrix, num_classes, ignore_index=ignore_index)
        self.confusion = nn.ModuleDict({f"{s}_{level}": make() for s in STAGES
                                        for level in ("block", "voxel", "point")})
        self.class_names: list[str] | None = None
        self._room_labels: dict[str, list[Tensor] | None] = {}
        self._votes: dict[str, RoomVotes] = {}
        self._kind: dict[str, str] = {}
        self._warned: set[tuple[str, str]] = set()

    @property
    def backbone(self) -> nn.Module:
        """The encoder (what ``train.py`` exports to backbone.pt); the whole network for voxel nets."""
        return getattr(self.network, "backbone", self.network)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "class_names", None)
        if names is not None:
            if len(names) != self.num_classes:
                raise ValueError(f"the data has {len(names)} class names, the network {self.num_classes} classes")
            self.class_names = [str(n) for n in names]
        data_ignore = getattr(datamodule, "ignore_index", None)
        if data_ignore is not None and int(data_ignore) != self.ignore_index:
            raise ValueError(f"the data marks unlabelled points {data_ignore}, the task ignores {self.ignore_index}")
        self._room_labels.clear()  # read again from this datamodule

    def forward(self, *inputs: Tensor) -> Tensor:
        """Class logits: (B, N, K) for points (B, N, C); (M, K) for (coords, feats)."""
        return self._logits(*inputs)[0]

    def _logits(self, *inputs: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.network(*inputs)
        return out if isinstance(out, tuple) else (out, None)

    # -- steps ---------------------------------------------------------------------------------------------------
    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        kind = "voxels" if "coords" in batch else "points"
        if self._kind.setdefault(stage, kind) != kind:
            raise ValueError(f"{stage}: point and voxel batches mixed in one epoch")
        if kind == "voxels":
            logits, transform = self._logits(batch["coords"], batch["feats"])
            labels, batch_size = batch["labels"], len(batch["room"])
        else:
            logits, transform = self._logits(batch["points"])
            labels, batch_size = batch["labels"], batch["points"].shape[0]
        flat = logits.reshape(-1, self.num_classes)
        loss = segmentation_loss(flat, labels.reshape(-1), self.ignore_index, self.hparams.label_smoothing)
        if transform is not None and self.hparams.feature_transform_weight > 0:
            loss = loss + self.hparams.feature_transform_weight * orthogonality_penalty(
                transform, self.hparams.reg_reduction)
        pred = flat.detach().argmax(dim=-1)
        if kind == "voxels":
            self.confusion[f"{stage}_voxel"].update(pred, labels.reshape(-1))
            self.confusion[f"{stage}_point"].update(pred[batch["inverse"].long()], batch["point_labels"])
        else:
            self.confusion[f"{stage}_block"].update(pred, labels.reshape(-1))
            votes = self._room_votes(stage)
            if votes is not None:
                votes.update(batch["room"], batch["point_index"], logits.detach().float().softmax(dim=-1))
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 batch_size=batch_size, sync_dist=stage != "train")
        return loss

    def _room_votes(self, stage: str) -> RoomVotes | None:
        """This epoch's vote accumulator of ``stage`` (None for training or without room labels)."""
        if stage == "train":
            return None
        if stage not in self._room_labels:
            datamodule = getattr(self.trainer, "datamodule", None)
            getter = getattr(datamodule, "room_labels", None)
            labels = getter(stage) if callable(getter) else None
            if labels is None:
                log.warning("the datamodule has no room_labels(%r): %s point batches are scored at block level only "
                            "(the papers' metric), whatever metric_level says", stage, stage)
            self._room_labels[stage] = None if labels is None else [torch.as_tensor(x).long() for x in labels]
        labels = self._room_labels[stage]
        if labels is None:
            return None
        if stage not in self._votes:
            self._votes[stage] = RoomVotes([len(x) for x in labels], self.num_classes)
        return self._votes[stage]

    # -- epoch end -------------------------------------------------------------------------------------------------
    def _level_confusions(self, stage: str, kind: str) -> dict[str, Tensor]:
        """Confusion matrix of every level scored this epoch (levels without scored points left out)."""
        levels = VOXEL_LEVELS if kind == "voxels" else ("block",)
        out = {level: self.confusion[f"{stage}_{level}"].compute().cpu() for level in levels}
        votes = self._votes.get(stage)
        if votes is not None:
            if self.trainer.world_size > 1:
                votes.all_reduce(lambda t: self.trainer.strategy.reduce(t.to(self.device), reduce_op="sum").cpu())
            out["room"], coverage = votes.confusion(self._room_labels[stage], self.ignore_index)
            self.log(f"{stage}/room_coverage", coverage)
        return {level: cm for level, cm in out.items() if cm.sum() > 0}

    def _headline(self, stage: str, kind: str, levels: Sequence[str]) -> str | None:
        wanted = self.hparams.voxel_metric_level if kind == "voxels" else self.hparams.metric_level
        if wanted in levels or not levels:
            return wanted if levels else None
        if stage != "train" and not self.trainer.sanity_checking and (stage, wanted) not in self._warned:
            self._warned.add((stage, wanted))
            log.warning("%s: %s-level metric unavailable, the headline %s/miou is %s-level", stage, wanted, stage,
                        levels[0])
        return levels[0]

    def _log_epoch(self, stage: str) -> float:
        kind = self._kind.pop(stage, None)
        confusions = self._level_confusions(stage, kind) if kind is not None else {}
        for name, metric in self.confusion.items():
            if name.startswith(f"{stage}_"):
                metric.reset()
        self._votes.pop(stage, None)
        scores = {level: semseg_scores(cm) for level, cm in confusions.items()}
        for level, s in scores.items():
            self.log(f"{stage}/miou_{level}", s.miou)
            self.log(f"{stage}/oa_{level}", s.oa)
            self.log(f"{stage}/macc_{level}", s.macc)
        headline = self._headline(stage, kind, list(scores))
        if headline is None:
            return 0.0
        best = scores[headline]
        self.log(f"{stage}/miou", best.miou, prog_bar=True)
        self.log(f"{stage}/oa", best.oa)
        self.log(f"{stage}/macc", best.macc)
        if self.class_names is not None:
            for name, value in zip(self.class_names, best.iou.tolist()):
                if value == value:  # not NaN: the class was scored
                    self.log(f"{stage}/iou_{name}", value)
        if stage == "test" and self.trainer.is_global_zero:
            self._write_confusions(confusions, scores, headline)
        return best.miou

    def _write_confusions(self, confusions: dict[str, Tensor], scores: dict[str, SemsegScores],
                          headline: str) -> Path:
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        levels = {
            level: {"confusion": cm.tolist(), "miou": scores[level].miou, "oa": scores[level].oa,
                    "macc": scores[level].macc,
                    "iou": [None if v != v else v for v in scores[level].iou.tolist()]}
            for level, cm in confusions.items()
        }
        payload = {"class_names": names, "ignore_index": self.ignore_index, "headline": headline,
                   "rows": "target", "columns": "prediction", "levels": levels}
        path = Path(self.trainer.default_root_dir) / CONFUSION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1))
        log.info("test confusion matrices written to %s", path)
        return path
