"""What every pretraining method shares: the exported point backbone and optimiser construction."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from selfsup_pcd.checkpoints import save_backbone

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class PretrainMethod(pl.LightningModule):
    """Base of the pretraining LightningModules.

    ``self.backbone`` is the point network that ``export`` writes to ``backbone.pt`` (the format the
    downstream tasks load), so a method keeps its student under that name; a method whose product is not
    a point backbone (the 2D teacher) overrides ``export``. Optimiser and scheduler
    are Hydra partials (``_partial_: true``) so recipes live in the configs, not the code.
    """

    def __init__(
        self,
        backbone: nn.Module | None,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval

    def optimizer_parameters(self) -> Iterable[nn.Parameter] | list[dict[str, Any]]:
        """Trainable parameters (frozen teachers and EMA targets have ``requires_grad=False``)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.optimizer_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer), "interval": self.scheduler_interval}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def export(self, output_dir: Path, meta: dict[str, Any]) -> list[Path]:
        """Writes the trained networks for downstream use; returns the files written."""
        path = Path(output_dir) / "backbone.pt"
        save_backbone(path, self.backbone, meta=meta)
        return [path]
