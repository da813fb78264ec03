"""Learning-rate and BatchNorm-momentum schedules of the PointNet recipes."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


class _StepDecayFactor:
    """Picklable LR factor: gamma ** (epoch // step_size), never below min_lr / base_lr."""

    def __init__(self, step_size: int, gamma: float, floor: float) -> None:
        self.step_size, self.gamma, self.floor = step_size, gamma, floor

    def __call__(self, epoch: int) -> float:
        return max(self.gamma ** (epoch // self.step_size), self.floor)


def step_decay_with_floor(
    optimizer: torch.optim.Optimizer, step_size: int = 20, gamma: float = 0.7, min_lr: float = 1e-5
) -> LambdaLR:
    """StepLR whose learning rate stops decaying at ``min_lr`` (PointNet: x0.7 every 20 epochs, floor 1e-5)."""
    base_lr = optimizer.param_groups[0]["lr"]
    return LambdaLR(optimizer, _StepDecayFactor(step_size, gamma, min_lr / base_lr))


class BatchNormMomentumSchedule(pl.Callback):
    """Sets every BatchNorm's momentum to max(initial * decay ** (epoch // step), floor) at each epoch start.

    The PointNet recipes decay BN momentum this way; Lightning has no built-in equivalent.
    """

    def __init__(self, initial: float = 0.5, decay: float = 0.5, step: int = 20, floor: float = 0.01) -> None:
        self.initial, self.decay, self.step, self.floor = initial, decay, step, floor

    def momentum(self, epoch: int) -> float:
        return max(self.initial * self.decay ** (epoch // self.step), self.floor)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = self.momentum(trainer.current_epoch)
        for module in pl_module.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = value
