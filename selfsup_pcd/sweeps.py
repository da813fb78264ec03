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

:class:`SweepJob` makes a named sweep resumable: re-running the same ``-m sweep_name=NAME ...`` command skips the
jobs that finished and resumes the others from their ``last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


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


JOB_RECORD = "sweep_job.json"


class SweepJobMismatchError(RuntimeError):
    """The job directory belongs to another job (other overrides): resuming or skipping it would be wrong."""


@dataclass(frozen=True)
class SweepJob:
    """One job of a multirun and its record ``<job dir>/sweep_job.json``: its overrides, whether it finished, and
    its final metrics once it did.

    A named sweep (``-m sweep_name=NAME ...``) has a fixed directory and its jobs fixed numbers (those of the grid),
    so re-running the same command meets the record of each job: a finished job is skipped and hands its recorded
    metrics back (to the sweeper too), an unfinished one resumes from ``checkpoints/last.ckpt`` (``auto_resume``).
    The record is written before training starts, so a directory whose record holds other overrides (another
    command, or an Optuna trial that drew other parameters under the same number) is refused rather than resumed.
    """

    dir: Path
    overrides: tuple[str, ...]

    @classmethod
    def current(cls) -> SweepJob | None:
        """The running Hydra multirun job; ``None`` for a single run (it resumes, but is never skipped)."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN or not hydra_cfg.runtime.get("output_dir"):
            return None
        return cls(Path(hydra_cfg.runtime.output_dir), tuple(hydra_cfg.overrides.task))

    @property
    def record_path(self) -> Path:
        return self.dir / JOB_RECORD

    def recorded(self) -> dict[str, Any] | None:
        path = self.record_path
        return json.loads(path.read_text()) if path.is_file() else None

    def start(self) -> dict[str, float] | None:
        """The recorded metrics when this job already finished (skip it); else records it as started (None)."""
        record = self.recorded()
        if record is not None:
            if sorted(record["overrides"]) != sorted(self.overrides):
                raise SweepJobMismatchError(
                    f"{self.dir} holds another job (overrides {record['overrides']}, this job {list(self.overrides)}):"
                    " a re-run resumes a sweep only with the same command; give the sweep a new sweep_name")
            if record.get("done"):
                log.info("skipped: %s finished before (%s); its recorded metrics are returned", self.dir,
                         self.record_path)
                return {k: float(v) for k, v in record.get("metrics", {}).items()}
            log.info("resuming unfinished sweep job %s", self.dir)
            return None
        self._write({"overrides": list(self.overrides), "done": False})
        return None

    def finish(self, metrics: dict[str, float]) -> None:
        """Marks the job done, after everything it writes (export, metrics.json, wandb run finished)."""
        self._write({"overrides": list(self.overrides), "done": True, "metrics": metrics})

    def _write(self, record: dict[str, Any]) -> None:
        from lightning_fabric.utilities.rank_zero import rank_zero_only

        if rank_zero_only.rank != 0:  # every rank of a multi-task (srun) job reads the record, one writes it
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{JOB_RECORD}.")
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=2)
        os.replace(tmp, self.record_path)  # atomic: a kill leaves the old record or the new one
