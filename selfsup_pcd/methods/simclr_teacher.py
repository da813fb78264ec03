"""SimCLR training of MVR's 2D teacher on rendered views (``method=simclr_teacher``; spec §4, quirk 3).

The original teacher's training was not released; its checkpoint name, stem and NT-Xent match
leftthomas/SimCLR, so this is that recipe on rendered views. Two augmentations of one view (batch keys
``view1``/``view2`` from ``RenderedViewsDataModule``) go through the whole teacher — trunk ``f``, view
projection ``t``, max over views (the identity for one view per sample) and head ``g`` — and NT-Xent pulls
the two embeddings together against the other 2B - 2 in the batch. Every key MVR's global target needs is
thus trained. The product is ``<run dir>/teacher.pt`` (``selfsup_pcd.models.image.save_teacher``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from selfsup_pcd.methods.base import OptimizerFactory, PretrainMethod, SchedulerFactory
from selfsup_pcd.methods.losses import nt_xent
from selfsup_pcd.models.image.teacher import MultiViewTeacher, load_teacher, save_teacher


class SimCLRTeacher(PretrainMethod):
    """NT-Xent between two augmentations of the same rendered view(s); logs ``{train,val}/loss``."""

    def __init__(
        self,
        teacher: MultiViewTeacher,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        temperature: float = 0.5,
        init_from: str | None = None,
    ) -> None:
        super().__init__(backbone=None, optimizer=optimizer, scheduler=scheduler,
                         scheduler_interval=scheduler_interval)
        self.save_hyperparameters(ignore=["teacher", "optimizer", "scheduler"])
        self.teacher = teacher
        if init_from:
            # e.g. an ImageNet torchvision state dict (standard stem) or an earlier teacher.pt
            load_teacher(self.teacher, init_from)
        self.temperature = temperature

    def embed(self, views: Tensor) -> Tensor:
        """(B, 3, H, W) or (B, V, 3, H, W) images -> (B, out_dim) global embeddings."""
        if views.dim() == 4:
            views = views.unsqueeze(1)
        return self.teacher(views)[1]

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        # Two forward passes, as in leftthomas/SimCLR: BatchNorm statistics are per augmented copy.
        return nt_xent(self.embed(batch["view1"]), self.embed(batch["view2"]), self.temperature)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["view1"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch["view1"].shape[0],
                 sync_dist=True)
        return loss

    def export(self, output_dir: Path, meta: dict[str, Any]) -> list[Path]:
        """Writes ``teacher.pt`` (every teacher key, with its constructor arguments) for ``method=mvr``."""
        path = Path(output_dir) / "teacher.pt"
        save_teacher(path, self.teacher, meta={**meta, "temperature": self.temperature})
        return [path]
