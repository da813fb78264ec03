"""What the supervised downstream tasks share: step dispatch per stage, a best-validation metric that survives
resume, and optimiser/scheduler partials. Subclasses define ``_step`` and ``_log_epoch``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from selfsup_pcd.checkpoints import CheckpointError
from selfsup_pcd.transfer import TRANSFER_MODES, NetworkTransferReport, transfer_into

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
STAGES = ("train", "val", "test")


def load_pretrained(network: nn.Module, pretrained: str, transfer_mode: str,
                    allow_partial_load: bool) -> NetworkTransferReport:
    """Transfers an encoder checkpoint into ``network.backbone``, prints the report, and refuses an empty or
    (unless ``allow_partial_load``) partial transfer."""
    report = transfer_into(network, pretrained, transfer_mode)
    print(report.summary())
    if not report.loaded_layers and not report.tensors.loaded:
        raise CheckpointError(f"nothing could be transferred.\n{report.summary()}")
    if not report.complete and not allow_partial_load:
        raise CheckpointError("the encoder was only partly transferred; set allow_partial_load=true to "
                              f"accept it.\n{report.summary()}")
    return report


class SupervisedTask(pl.LightningModule):
    """``best_metric`` (logged as ``<best_metric>_best``) is the best ``_log_epoch("val")`` over epochs, kept in
    checkpoints under ``best_key`` so a resumed run reports the same best value as an uninterrupted one."""

    best_metric = "val/metric"
    best_key = "best_val"
    optimizer_factory: Any
    scheduler_factory: Any

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        raise NotImplementedError

    def _log_epoch(self, stage: str) -> float:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.best_value = 0.0

    def init_encoder(self, target: nn.Module, pretrained: str | None, transfer_mode: str, allow_partial_load: bool,
                     freeze_backbone: bool) -> None:
        """Copies a pretrained encoder into ``target.backbone`` (report in ``transfer_report``), then freezes
        ``self.backbone`` when asked: the fine-tuning options every downstream task takes."""
        if transfer_mode not in TRANSFER_MODES:
            raise ValueError(f"transfer_mode must be one of {TRANSFER_MODES}, got {transfer_mode!r}")
        self.transfer_report = (self.load_encoder(target, pretrained, transfer_mode, allow_partial_load)
                                if pretrained else None)
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def load_encoder(self, target: nn.Module, pretrained: str, transfer_mode: str, allow_partial_load: bool) -> Any:
        """How a checkpoint reaches the encoder: the layer transfer by default; a task whose backbone has its own
        loading rules (detection's seed backbones) overrides this."""
        return load_pretrained(target, pretrained, transfer_mode, allow_partial_load)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        value = self._log_epoch("val")
        if not self.trainer.sanity_checking:
            self.best_value = max(self.best_value, value)
        self.log(f"{self.best_metric}_best", self.best_value)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.best_key] = self.best_value

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_value = checkpoint.get(self.best_key, 0.0)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                          "interval": "epoch"}}
