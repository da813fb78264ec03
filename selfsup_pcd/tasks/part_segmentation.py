"""Part segmentation (ShapeNetPart): an encoder, a part-seg head and the shape's category as input.

Logs per stage ``loss``, ``acc`` (point accuracy), ``part_macc`` (mean per-part recall over the parts present),
``instance_miou``, ``class_miou`` and ``miou_<Category>`` (conventions: ``selfsup_pcd.metrics.segmentation``).
The reported figures are the last epoch's ``test/*`` (the original protocol for part segmentation);
``val/instance_miou_best`` is the best validation value over epochs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from selfsup_pcd.metrics import accuracy_from_confusion
from selfsup_pcd.metrics.segmentation import PartSegmentationIoU, restrict_to_category
from selfsup_pcd.models.part_seg import PartSegNetwork
from selfsup_pcd.tasks.base import STAGES, OptimizerFactory, SchedulerFactory, SupervisedTask
from selfsup_pcd.tasks.losses import orthogonality_penalty, smoothed_cross_entropy

log = logging.getLogger(__name__)



def _default_parts(num_categories: int) -> list[int]:
    from selfsup_pcd.data.shapenetpart import PARTS_PER_CATEGORY

    if num_categories != len(PARTS_PER_CATEGORY):
        raise ValueError(f"parts_per_category is needed for {num_categories} categories (the default is "
                         f"ShapeNetPart's {len(PARTS_PER_CATEGORY)})")
    return list(PARTS_PER_CATEGORY)


class PartSegmentationTask(SupervisedTask):
    """Trains a :class:`~selfsup_pcd.models.part_seg.PartSegNetwork` (from scratch or from a pretrained encoder).

    ``num_classes`` is the number of shape categories (the one-hot input); ``parts_per_category`` the part
    count of each category in order (default: ShapeNetPart's 16 categories, 50 parts). ``pretrained`` names an
    encoder checkpoint, copied in with ``transfer_mode`` (``remap`` | ``name_shape``, see
    ``selfsup_pcd.transfer``); an encoder that is not completely loaded is refused unless
    ``allow_partial_load``, and the per-layer report is printed either way.
    """

    best_metric = "val/instance_miou"
    best_key = "best_val_miou"

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head: Callable[..., nn.Module],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        parts_per_category: Sequence[int] | None = None,
        input_transform: bool = False,
        transform_k: int | None = None,
        label_smoothing: float = 0.0,
        feature_transform_weight: float = 0.001,
        reg_reduction: str = "sum",
        pretrained: str | None = None,
        transfer_mode: str = "remap",
        allow_partial_load: bool = False,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "head", "optimizer", "scheduler"])
        self.parts_per_category = list(parts_per_category) if parts_per_category else _default_parts(num_classes)
        if len(self.parts_per_category) != num_classes:
            raise ValueError(f"{num_classes} categories but parts_per_category has {len(self.parts_per_category)}")
        self.num_parts = sum(self.parts_per_category)
        self.network = PartSegNetwork(backbone, head, num_classes, self.num_parts, input_transform, transform_k)
        self.init_encoder(self.network, pretrained, transfer_mode, allow_partial_load, freeze_backbone)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.iou = nn.ModuleDict({f"{s}_iou": PartSegmentationIoU(self.parts_per_category) for s in STAGES})
        self.confusion = nn.ModuleDict({f"{s}_confusion": MulticlassConfusionMatrix(self.num_parts) for s in STAGES})
        self.category_names = [str(i) for i in range(num_classes)]

    @property
    def backbone(self) -> nn.Module:
        """The encoder (what ``train.py`` exports to backbone.pt)."""
        return self.network.backbone

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        parts = getattr(datamodule, "parts_per_category", None)
        if parts is not None and list(parts) != self.parts_per_category:
            raise ValueError(f"the data has parts per category {list(parts)}, the network was built for "
                             f"{self.parts_per_category}")
        names = getattr(datamodule, "class_names", None)
        if names is not None and len(names) == len(self.category_names):
            self.category_names = list(names)

    def forward(self, points: Tensor, category: Tensor) -> Tensor:
        """Part logits (B, N, P)."""
        return self.network(points, category)[0]

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        logits, transform = self.network(batch["points"], batch["category"])
        seg = batch["seg"]
        loss = smoothed_cross_entropy(logits.reshape(-1, self.num_parts), seg.reshape(-1),
                                      self.hparams.label_smoothing)
        if transform is not None and self.hparams.feature_transform_weight > 0:
            reg = orthogonality_penalty(transform, self.hparams.reg_reduction)
            loss = loss + self.hparams.feature_transform_weight * reg
        pred = restrict_to_category(logits.detach(), batch["category"], self.iou[f"{stage}_iou"].mask)
        self.iou[f"{stage}_iou"].update(pred, seg, batch["category"])
        self.confusion[f"{stage}_confusion"].update(pred.reshape(-1), seg.reshape(-1))
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 batch_size=logits.shape[0], sync_dist=stage != "train")
        return loss

    def _log_epoch(self, stage: str) -> float:
        ious = self.iou[f"{stage}_iou"].compute()
        acc, part_macc = accuracy_from_confusion(self.confusion[f"{stage}_confusion"].compute())
        self.iou[f"{stage}_iou"].reset()
        self.confusion[f"{stage}_confusion"].reset()
        self.log(f"{stage}/instance_miou", ious["instance_miou"].float(), prog_bar=True)
        self.log(f"{stage}/class_miou", ious["class_miou"].float())
        self.log(f"{stage}/acc", acc)
        self.log(f"{stage}/part_macc", part_macc)
        for name, value in zip(self.category_names, ious["per_category"].tolist()):
            if value == value:  # not NaN: the category occurred
                self.log(f"{stage}/miou_{name}", value)
        return float(ious["instance_miou"])

