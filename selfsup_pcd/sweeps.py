"""Hydra multiruns (seed sweeps, Optuna searches) as wandb sees them: one run per job, one group per sweep.

``train`` calls :func:`name_sweep_job` before it builds its loggers: in a multirun, the wandb group defaults to
the sweep (its directory below ``paths.log_dir``, e.g. ``train/multiruns/2026-01-01_12-00-00``: the same for
every job, including jobs that submitit runs in other processes, since Hydra hands each job the sweep's resolved
timestamps) and the run name gets the job number. ``logger.wandb.group=NAME`` set by hand is kept. A single run
is left alone.

:func:`finish_wandb_run` wraps a job: wandb's ``init`` returns the run still open in the process (its default
``reinit`` outside notebooks), so a job that failed before finishing its run would have the next job of the
sweep (an Optuna sweep goes on after failed trials) log into it. It finishes any open run, with exit code 1 when
the job raised.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, open_dict


def sweep_group(sweep_dir: str | Path, log_dir: str | Path | None = None) -> str:
    """The sweep directory relative to the log directory when it lies below it, else as given."""
    sweep, logs = Path(sweep_dir), Path(log_dir) if log_dir else None
    if logs is not None:
        try:
            return sweep.resolve().relative_to(logs.resolve()).as_posix()
        except ValueError:
            pass
    return sweep.as_posix()


def name_sweep_job(cfg: DictConfig) -> None:
    """In a Hydra multirun, sets ``logger.wandb.group`` (when empty) and numbers ``logger.wandb.name``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not cfg.get("logger") or not cfg.logger.get("wandb") or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    with open_dict(cfg):
        wandb_cfg = cfg.logger.wandb
        if not wandb_cfg.get("group"):
            wandb_cfg.group = sweep_group(hydra_cfg.sweep.dir, cfg.get("paths", {}).get("log_dir"))
        if wandb_cfg.get("name"):
            wandb_cfg.name = f"{wandb_cfg.name}/{hydra_cfg.job.num}"


@contextmanager
def finish_wandb_run() -> Iterator[None]:
    """Finishes the wandb run left open in this process when the block ends (exit code 1 if it raised)."""
    failed = True
    try:
        yield
        failed = False
    finally:
        wandb = sys.modules.get("wandb")  # never imported: no run to finish, and no import cost
        run = getattr(wandb, "run", None) if wandb is not None else None
        if run is not None:
            run.finish(exit_code=1 if failed else 0)
