"""Every experiment config composes, resolves and builds its optimiser, scheduler and backbone.

A recipe that only fails when a user launches it (a scheduler merged into another's keys, an interpolation to a
missing key) is caught here, without data: nothing is trained and no dataset is read.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from selfsup_pcd.utils.hydra import CONFIG_DIR, register_resolvers

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def compose_experiment(name: str, tmp_path: Path):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}", f"paths.log_dir={tmp_path}",
                                          f"paths.cache_dir={tmp_path}"], return_hydra_config=True)
    return cfg


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_builds_its_optimiser_scheduler_and_backbone(name: str, tmp_path) -> None:
    cfg = compose_experiment(name, tmp_path)
    trainer = cfg.trainer
    assert trainer.max_epochs is None or trainer.max_epochs >= 1
    owner = cfg.method if cfg.get("method") else cfg.task
    # every interpolation of the part that trains must resolve
    OmegaConf.to_container(owner, resolve=True)
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = instantiate(owner.optimizer)
    optimizer = optimizer([param]) if callable(optimizer) and not isinstance(optimizer, torch.optim.Optimizer) \
        else optimizer
    assert isinstance(optimizer, torch.optim.Optimizer)
    if owner.get("scheduler"):
        scheduler = instantiate(owner.scheduler)(optimizer)
        assert hasattr(scheduler, "step")
        for _ in range(3):
            optimizer.step()
            scheduler.step()
        assert all(group["lr"] > 0 or "eta_min" in str(owner.scheduler) for group in optimizer.param_groups)
    backbone_cfg = cfg.model.get("backbone") if cfg.get("model") else None
    if backbone_cfg is not None:
        backbone = instantiate(backbone_cfg)
        assert sum(p.numel() for p in backbone.parameters()) > 0
