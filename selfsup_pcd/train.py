"""Training entry point: ``python -m selfsup_pcd.train [overrides]`` (console script ``selfsup-train``).

Composes ``conf/train.yaml``; builds the datamodule and the LightningModule from ``_target_`` entries (a
pretraining ``method`` when one is chosen, else the downstream ``task`` on ``model.backbone``); trains; tests
the last-epoch task weights; exports the backbone to ``<run dir>/backbone.pt`` (a method may export more, e.g.
a 2D teacher) and writes ``<run dir>/metrics.json``. Re-running in a run directory that holds
``checkpoints/last.ckpt`` resumes it; re-running a named sweep (``-m sweep_name=NAME ...``) also skips its finished
jobs (:class:`selfsup_pcd.sweeps.SweepJob`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

import selfsup_pcd  # noqa: F401  (sets allocator environment before torch loads)
from selfsup_pcd.sweeps import SweepJob, finish_wandb_run, name_sweep_job
from selfsup_pcd.utils.hydra import CONFIG_DIR

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Runs one training job described by ``cfg`` and returns its final metrics."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from pytorch_lightning.loggers import WandbLogger

    from selfsup_pcd.checkpoints import save_backbone
    from selfsup_pcd.utils.callbacks import WandbRunIdCheckpoint, kill_hook_from_env
    from selfsup_pcd.utils.hydra import instantiate_group
    from selfsup_pcd.utils.run import (
        checkpoint_entry,
        config_as_dict,
        print_metrics_table,
        resolve_resume_checkpoint,
        write_metrics,
    )

    pl.seed_everything(cfg.seed, workers=True)
    name_sweep_job(cfg)  # multirun: one wandb group per sweep, one numbered run per job
    output_dir = Path(cfg.paths.output_dir)
    resume = resolve_resume_checkpoint(cfg.get("ckpt_path"), output_dir, cfg.get("auto_resume", True))
    if resume and cfg.get("logger") and "wandb" in cfg.logger:
        run_id = checkpoint_entry(resume, WandbRunIdCheckpoint.KEY)
        if run_id:
            with open_dict(cfg):
                cfg.logger.wandb.id = run_id
                cfg.logger.wandb.resume = "allow"

    datamodule = instantiate(cfg.data)
    pretraining = cfg.get("method") is not None
    if pretraining:
        # method configs name their own networks (e.g. `backbone: ${model.backbone}`)
        module = instantiate(cfg.method)
    else:
        module = instantiate(cfg.task, backbone=instantiate(cfg.model.backbone), num_classes=datamodule.num_classes)
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = [*instantiate_group(cfg.get("callbacks")), *kill_hook_from_env()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(config_as_dict(cfg))

    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    metrics = {k: v for k, v in trainer.callback_metrics.items()}
    if cfg.get("test_after_fit", True) and not pretraining:
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update(trainer.callback_metrics)

    if trainer.is_global_zero:
        if cfg.get("export_backbone", True):
            meta = {"config": config_as_dict(cfg.model), "epochs": trainer.current_epoch}
            if pretraining:
                meta["method"] = config_as_dict(cfg.method)
                for path in module.export(output_dir, meta):
                    print(f"exported {path}")
            else:
                save_backbone(output_dir / "backbone.pt", module.backbone, meta=meta)
        path = write_metrics(output_dir, metrics)
        print_metrics_table({k: float(v) for k, v in metrics.items()}, title="final metrics")
        print(f"metrics written to {path}")
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
    return {k: float(v) for k, v in metrics.items()}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    job = SweepJob.current()  # multirun: a finished job of a re-run sweep is skipped (its recorded metrics)
    metrics = job.start() if job else None
    if metrics is None:
        with finish_wandb_run():  # also when the job fails: the next job of a sweep must not log into its run
            metrics = train(cfg)
        if job:
            job.finish(metrics)
    optimized = cfg.get("optimized_metric")
    if optimized and optimized not in metrics:
        raise KeyError(f"optimized_metric {optimized!r} was not logged; logged: {', '.join(sorted(metrics))}")
    return metrics[optimized] if optimized else None


if __name__ == "__main__":
    main()
