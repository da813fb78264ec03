"""Render entry point: ``python -m selfsup_pcd.render data=<dataset> [render.key=value ...]``.

Composes ``conf/render.yaml``, builds the datamodule from ``data``, renders every split listed in
``render.splits`` into ``<render.out_dir>/<split>.h5`` (``cache.py``: parallel, resumable) and writes a
contact sheet of the first shape of each split next to it, logged to wandb when ``logger=wandb`` is
given or a wandb run is already active. Shapes come from ``dataset.mesh(i)`` when the dataset has meshes,
else from its points drawn as splats.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

import selfsup_pcd  # noqa: F401  (sets allocator environment before torch loads)
from selfsup_pcd.utils.hydra import CONFIG_DIR

log = logging.getLogger(__name__)

# Data settings that change how shapes are loaded or batched, not which shapes or points there are.
NOT_CONTENT = {"batch_size", "eval_batch_size", "num_workers", "pin_memory", "drop_last", "train_transforms",
               "val_split", "cache_dir"}


def source_description(data_cfg: DictConfig, name: str, split: str) -> dict[str, Any]:
    """What identifies the rendered shapes: dataset name, split and the content-relevant data settings."""
    data = OmegaConf.to_container(data_cfg, resolve=True)
    return {"name": name, "split": split, "data": {k: v for k, v in sorted(data.items()) if k not in NOT_CONTENT}}


def write_contact_sheet(cache_path: Path, png_path: Path) -> Path:
    """Contact sheet of the first shape of a finished cache, dots at the points' exact projections."""
    from selfsup_pcd.render.cache import open_cache, read_shape
    from selfsup_pcd.render.contact_sheet import contact_sheet, save_png
    from selfsup_pcd.render.correspondences import project

    with open_cache(cache_path) as f:
        shape = read_shape(f, 0)
    uv = np.stack([project(shape["points"][:, :3], K, w2c)[0] for K, w2c in zip(shape["K"], shape["world_to_cam"])])
    return save_png(png_path, contact_sheet(shape["views"], shape["pairs"], uv))


def log_images(cfg: DictConfig, images: dict[str, Path]) -> None:
    """Logs PNGs to wandb: through ``logger=wandb`` when configured, else to an already active run."""
    if not images:
        return
    loggers = []
    if cfg.get("logger"):
        from selfsup_pcd.utils.hydra import instantiate_group

        loggers = [lg for lg in instantiate_group(cfg.logger) if type(lg).__name__ == "WandbLogger"]
    wandb = sys.modules.get("wandb")
    if not loggers and (wandb is None or wandb.run is None):
        return
    import wandb

    payload = {f"render/{name}": wandb.Image(str(path)) for name, path in images.items()}
    for logger in loggers:
        logger.experiment.log(payload)
        logger.experiment.finish()
    if not loggers:
        wandb.run.log(payload)


def render(cfg: DictConfig) -> dict[str, Path]:
    """Renders the configured splits; returns split -> cache file."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from selfsup_pcd.render.cache import RenderSettings, build

    rcfg = cfg.render
    settings = RenderSettings.from_mapping(OmegaConf.to_container(rcfg, resolve=True))
    name = HydraConfig.get().runtime.choices.get("data", "data") if HydraConfig.initialized() else "data"
    out_dir = Path(rcfg.out_dir)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    outputs, sheets = {}, {}
    for split in rcfg.splits:
        dataset = datamodule.dataset(split)
        path = build(dataset, out_dir, split, settings, source=source_description(cfg.data, name, split),
                     workers=rcfg.workers, start_method=rcfg.start_method, overwrite=rcfg.overwrite)
        outputs[split] = path
        print(f"{split}: {len(dataset)} shapes -> {path}")
        if rcfg.contact_sheet:
            sheets[f"contact_sheet_{split}"] = write_contact_sheet(path, out_dir / f"contact_sheet_{split}.png")
            print(f"{split}: contact sheet -> {sheets[f'contact_sheet_{split}']}")
    log_images(cfg, sheets)
    return outputs


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="render")
def main(cfg: DictConfig) -> None:
    render(cfg)
