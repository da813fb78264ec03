"""BYOL as STRL uses it (Huang et al., ICCV 2021; ``strl_byol.md`` §2-§6): views, networks, loss, EMA.

Online network = backbone → projector → predictor; target = an EMA copy of backbone + projector. Two views
are made from each batch by a configured augmentation chain (``selfsup_pcd.data.augment``): both from
``points`` (spatial: two augmentations of one cloud) or from ``points`` and ``partner`` when the datamodule
supplies a second cloud (temporal: a neighbouring depth frame). Loss: ℓ(q₁, z₂) + ℓ(q₂, z₁) with
ℓ = mean(2 − 2·cos). The target follows τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2 over the K optimiser
steps of the run.

Quirk switches (spec §8), default = the corrected behaviour unless noted:
- ``target_bn_mode``: ``train`` (reproduced; the target normalises with batch statistics) | ``eval``.
- ``ema_timing``: ``after_step`` (update after the optimiser step) | ``before_step`` (the original's
  one-step lag: the target moves towards the online weights of before the step).
- ``ema_scope``: ``float`` (parameters and float buffers; integer buffers copied) | ``all`` (the
  original: every state-dict entry, integer BN counters averaged and truncated).
- ``lars``: LARS around the optimiser (reproduced; ``null`` = the plain optimiser).
Target parameters are never given to the optimiser (the original listed them; no numeric effect).

An online linear probe (a linear layer on the detached online features of the first view, trained with
the labels when the datamodule has classes) reports ``train/probe_acc`` and ``val/probe_acc`` (on the
un-augmented validation clouds) every epoch while pretraining.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from selfsup_pcd.methods.base import OptimizerFactory, PretrainMethod, SchedulerFactory
from selfsup_pcd.methods.optim import LARS

EMA_TIMINGS = ("after_step", "before_step")
EMA_SCOPES = ("float", "all")
BN_MODES = ("train", "eval")
ViewMaker = Callable[..., Tensor]  # (points (B, N, C), generator[, mask (B, N)]) -> views (B, M, C)


def mlp_head(in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> nn.Sequential:
    """STRL's projector / predictor: Linear (no bias) → BN → ReLU → Linear (no bias)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim, bias=False),
    )


def regression_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """mean over the batch of 2 − 2·cos(prediction, target), each L2-normalised along features."""
    p, z = F.normalize(prediction, dim=-1), F.normalize(target, dim=-1)
    return 2 - 2 * (p * z).sum(dim=-1).mean()


def byol_tau(step: int, total_steps: int, base: float = 0.996) -> float:
    """EMA momentum of optimiser step ``step`` (0-based) of ``total_steps``: cosine from ``base`` to 1."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(total_steps, 1)) + 1) / 2


class BYOL(PretrainMethod):
    """BYOL pretraining of ``backbone`` (any encoder returning ``BackboneOutput`` with ``out_dim``)."""

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        views: ViewMaker,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        val_views: ViewMaker | None = None,
        hidden_dim: int = 4096,
        projection_dim: int = 256,
        tau_base: float = 0.996,
        ema_total_steps: int | None = None,
        ema_timing: str = "after_step",
        ema_scope: str = "float",
        target_bn_mode: str = "train",
        lars: Mapping[str, Any] | None = None,
        probe_classes: int | str | None = "auto",
        seed: int = 0,
    ) -> None:
        for name, value, allowed in (("ema_timing", ema_timing, EMA_TIMINGS), ("ema_scope", ema_scope, EMA_SCOPES),
                                     ("target_bn_mode", target_bn_mode, BN_MODES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if lars is not None:
            optimizer = partial(LARS, optimizer=optimizer, **dict(lars))
        super().__init__(backbone, optimizer, scheduler, scheduler_interval)
        self.projector = mlp_head(backbone.out_dim, hidden_dim, projection_dim)
        self.predictor = mlp_head(projection_dim, hidden_dim, projection_dim)
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.views, self.val_views = views, val_views or views
        self.tau_base, self.ema_total_steps = tau_base, ema_total_steps
        self.ema_timing, self.ema_scope, self.target_bn_mode = ema_timing, ema_scope, target_bn_mode
        self.probe_classes = probe_classes
        self.probe: nn.Linear | None = None
        self.probe_acc = nn.ModuleDict()
        self.seed = seed
        self.view_generator = torch.Generator().manual_seed(seed)
        self.val_generator = torch.Generator()
        self.tau = tau_base
        self._ema_done_for_step = -1

    # -- set-up ------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:  # other views on each rank, still seeded
            self.view_generator.manual_seed(self.seed + 1000 * trainer.global_rank)
        classes = self.probe_classes
        if classes == "auto":
            datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
            classes = getattr(datamodule, "num_classes", 0) or 0
        if classes and self.probe is None:
            self.probe = nn.Linear(self.backbone.out_dim, int(classes))
            self.probe_acc = nn.ModuleDict(
                {f"{s}_acc": MulticlassAccuracy(int(classes), average="micro") for s in ("train", "val")}
            )

    def target_modules(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) pairs the EMA ties together."""
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]

    # -- networks and loss -------------------------------------------------------------------------
    def online(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(representation y, prediction q) of the online network."""
        y = self.backbone(points).global_feat
        return y, self.predictor(self.projector(y))

    @torch.no_grad()
    def target(self, points: Tensor) -> Tensor:
        """Projection z of the target network (no gradient)."""
        return self.target_projector(self.target_backbone(points).global_feat)

    def byol_loss(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        """(symmetric BYOL loss, online representation of view 1)."""
        y1, q1 = self.online(view1)
        _, q2 = self.online(view2)
        if self.training:
            for _, module in self.target_modules():
                module.train(self.target_bn_mode == "train")
        z1, z2 = self.target(view1), self.target(view2)
        return regression_loss(q1, z2) + regression_loss(q2, z1), y1

    def make_views(self, batch: Mapping[str, Tensor], views: ViewMaker, generator: torch.Generator
                   ) -> tuple[Tensor, Tensor]:
        """Two views: of ``points`` twice, or of ``points`` and its temporal ``partner`` (with their validity
        masks ``points_mask`` / ``partner_mask`` when the datamodule pads clouds)."""
        first = (batch["points"], batch.get("points_mask"))
        second = (batch["partner"], batch.get("partner_mask")) if "partner" in batch else first
        return tuple(views(x, generator) if m is None else views(x, generator, m) for x, m in (first, second))

    # -- EMA -----------------------------------------------------------------------------------------
    def total_steps(self) -> int:
        """K of the τ schedule: ``ema_total_steps`` or all optimiser steps of the run."""
        if self.ema_total_steps:
            return int(self.ema_total_steps)
        return int(self.trainer.estimated_stepping_batches)

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """θ_target ← τ·θ_target + (1 − τ)·θ_online (see ``ema_scope`` for integer buffers)."""
        self.tau = tau
        for online, target in self.target_modules():
            t_float, o_float = [], []
            for (_, t), (_, o) in zip(target.state_dict(keep_vars=True).items(),
                                      online.state_dict(keep_vars=True).items(), strict=True):
                t, o = t.data, o.data
                if t.is_floating_point():
                    t_float.append(t)
                    o_float.append(o)
                elif self.ema_scope == "all":  # float arithmetic, truncated back into the integer buffer
                    t.copy_(tau * t + (1 - tau) * o)
                else:
                    t.copy_(o)
            torch._foreach_mul_(t_float, tau)
            torch._foreach_add_(t_float, torch._foreach_mul(o_float, 1 - tau))

    # -- Lightning hooks -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        view1, view2 = self.make_views(batch, self.views, self.view_generator)
        loss, y1 = self.byol_loss(view1, view2)
        size = view1.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        total = loss + self._probe_step(y1, batch, "train")
        if self.ema_timing == "before_step":
            self._ema(self.global_step)
        return total

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema_timing == "after_step":
            self._ema(self.global_step - 1)  # the step just taken

    def _ema(self, step: int) -> None:
        if step < 0 or step == self._ema_done_for_step:  # no optimiser step (e.g. gradient accumulation)
            return
        self._ema_done_for_step = step
        self.update_target(byol_tau(step, self.total_steps(), self.tau_base))
        self.log("train/tau", self.tau, on_step=True, on_epoch=False)

    def on_validation_epoch_start(self) -> None:
        self.val_generator.manual_seed(self.seed + 7)  # the same validation views every epoch

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        view1, view2 = self.make_views(batch, self.val_views, self.val_generator)
        loss, _ = self.byol_loss(view1, view2)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=view1.shape[0], sync_dist=True)
        if self.probe is not None and "label" in batch:
            self._probe_step(self.backbone(batch["points"]).global_feat, batch, "val")

    def _probe_step(self, features: Tensor, batch: Mapping[str, Tensor], stage: str) -> Tensor:
        if self.probe is None or "label" not in batch:
            return features.new_zeros(())
        logits = self.probe(features.detach())
        loss = F.cross_entropy(logits, batch["label"])
        metric = self.probe_acc[f"{stage}_acc"]
        metric(logits.detach(), batch["label"])
        self.log(f"{stage}/probe_acc", metric, on_step=False, on_epoch=True, batch_size=logits.shape[0])
        return loss if stage == "train" else loss.detach()

    # -- resumable state -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["byol_view_generator"] = self.view_generator.get_state()
        checkpoint["byol_ema_done_for_step"] = self._ema_done_for_step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "byol_view_generator" in checkpoint:
            self.view_generator.set_state(checkpoint["byol_view_generator"])
        self._ema_done_for_step = checkpoint.get("byol_ema_done_for_step", -1)
