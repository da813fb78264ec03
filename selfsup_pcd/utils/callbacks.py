"""Callbacks that make a resumed run continue exactly where the interrupted one stopped (and one that interrupts a
run at a known point, for the tests)."""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from pytorch_lightning.loggers import WandbLogger


class RNGStateCheckpoint(pl.Callback):
    """Stores the torch / numpy / python RNG states in checkpoints and restores them on resume.

    Lightning restores weights, optimizers, schedulers and loops but not the global RNGs, so dropout
    masks after a resume would differ from an uninterrupted run without this.

    Numpy's state array is stored as a tensor so that checkpoints stay loadable with ``weights_only=True``.
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        name, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if "rng_states" not in checkpoint:
            return
        states = dict(checkpoint["rng_states"])
        name, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)
        _set_rng_states(states)


class WandbRunIdCheckpoint(pl.Callback):
    """Stores the wandb run id in checkpoints, so that a resumed run logs into the same wandb run."""

    KEY = "wandb_run_id"

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                checkpoint[self.KEY] = logger.version


def wandb_run_id_of(checkpoint: dict[str, Any]) -> str | None:
    return checkpoint.get(WandbRunIdCheckpoint.KEY)


TEST_KILL_ENV = "SELFSUP_PCD_TEST_KILL"


class KillAtEpoch(pl.Callback):
    """SIGKILLs this process at the first training batch of ``epoch``: an interruption at a known point, after the
    checkpoints of the epochs before it, for the sweep-resume test (no cleanup runs, as with a real kill)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.current_epoch >= self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_hook_from_env() -> list[pl.Callback]:
    """Test hook: ``SELFSUP_PCD_TEST_KILL=JOB:EPOCH`` kills multirun job number JOB when it reaches EPOCH (0-based).

    An environment variable, not a config key, so that the killed sweep and its re-run are the same command.
    """
    spec = os.environ.get(TEST_KILL_ENV)
    if not spec:
        return []
    from hydra.core.hydra_config import HydraConfig

    job, epoch = (int(part) for part in spec.split(":"))
    if HydraConfig.initialized() and HydraConfig.get().job.get("num") == job:
        return [KillAtEpoch(epoch)]
    return []
