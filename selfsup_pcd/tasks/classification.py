"""Supervised shape classification: a backbone, an MLP head, cross-entropy."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from selfsup_pcd.checkpoints import load_backbone
from selfsup_pcd.metrics import accuracy_from_confusion
from selfsup_pcd.tasks.base import OptimizerFactory, SchedulerFactory, SupervisedTask
from selfsup_pcd.tasks.losses import orthogonality_penalty, smoothed_cross_entropy


class ClassificationTask(SupervisedTask):
    """Fine-tunes (or trains from scratch) a point backbone with a classification head.

    Logs ``{train,val,test}/{oa,macc}``. ``val/oa_best`` is the best validation OA over epochs, the
    papers' selection protocol; it is only an optimistic figure when the validation split is the test set.
    """

    best_metric = "val/oa"
    best_key = "best_val_oa"

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head: Callable[..., nn.Module],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        feature_transform_weight: float = 0.001,
        reg_reduction: str = "sum",
        pretrained: str | None = None,
        allow_partial_load: bool = False,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "head", "optimizer", "scheduler"])
        self.backbone = backbone
        if pretrained:
            load_backbone(self.backbone, pretrained, allow_partial=allow_partial_load)
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.head = head(in_dim=backbone.out_dim, num_classes=num_classes)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.confusion = nn.ModuleDict(
            {f"{stage}_confusion": MulticlassConfusionMatrix(num_classes) for stage in ("train", "val", "test")}
        )

    def forward(self, points: Tensor) -> Tensor:
        return self.head(self.backbone(points).global_feat)

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        out = self.backbone(batch["points"])
        logits = self.head(out.global_feat)
        loss = smoothed_cross_entropy(logits, batch["label"], self.hparams.label_smoothing)
        if out.feature_transform is not None and self.hparams.feature_transform_weight > 0:
            reg = orthogonality_penalty(out.feature_transform, self.hparams.reg_reduction)
            loss = loss + self.hparams.feature_transform_weight * reg
        self.confusion[f"{stage}_confusion"].update(logits.detach().argmax(dim=-1), batch["label"])
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 batch_size=logits.shape[0], sync_dist=stage != "train")
        return loss

    def _log_epoch(self, stage: str) -> float:
        oa, macc = accuracy_from_confusion(self.confusion[f"{stage}_confusion"].compute())
        self.confusion[f"{stage}_confusion"].reset()
        self.log(f"{stage}/oa", oa, prog_bar=True)
        self.log(f"{stage}/macc", macc)
        return oa

