"""Evaluation entry point: ``python -m selfsup_pcd.eval task=linear_svm data=... ckpt_path=...``.

With ``task=linear_svm`` the backbone of ``ckpt_path`` (any checkpoint the loader understands) is frozen
and scored by linear SVMs; without ``ckpt_path`` a randomly initialised backbone (seeded) is scored, the
baseline every pretraining is compared with. With a LightningModule task (``task=classification``) the
checkpoint is tested with ``Trainer.test``. Metrics go to ``<run dir>/metrics.json`` and the loggers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import selfsup_pcd  # noqa: F401  (sets allocator environment before torch loads)
from selfsup_pcd.utils.hydra import CONFIG_DIR

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Runs the evaluation described by ``cfg`` and returns its metrics."""
    import pytorch_lightning as pl
    from hydra.utils import get_class, instantiate
    from pytorch_lightning.loggers import WandbLogger

    from selfsup_pcd.checkpoints import load_backbone
    from selfsup_pcd.utils.hydra import instantiate_group
    from selfsup_pcd.utils.run import config_as_dict, print_metrics_table, write_metrics

    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    backbone = instantiate(cfg.model.backbone)
    loggers = instantiate_group(cfg.get("logger"))
    for logger in loggers:
        logger.log_hyperparams(config_as_dict(cfg))

    if issubclass(get_class(cfg.task._target_), pl.LightningModule):
        if not cfg.get("ckpt_path"):
            raise ValueError("testing a LightningModule task needs ckpt_path=<Lightning checkpoint>")
        module = instantiate(cfg.task, backbone=backbone, num_classes=datamodule.num_classes)
        trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[])
        trainer.test(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    else:
        if cfg.get("ckpt_path"):
            report = load_backbone(backbone, cfg.ckpt_path, allow_partial=cfg.get("allow_partial_load", False))
            log.info(report.summary())
            print(report.summary())
        else:
            log.warning("No ckpt_path: evaluating a randomly initialised backbone (seed %s)", cfg.seed)
        metrics = instantiate(cfg.task).run(backbone, datamodule)
        for logger in loggers:
            logger.log_metrics(metrics)

    path = write_metrics(output_dir, metrics)
    print_metrics_table(metrics, title=f"{cfg.get('ckpt_path') or 'random init'}")
    print(f"metrics written to {path}")
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
