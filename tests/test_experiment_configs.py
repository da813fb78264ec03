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
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from selfsup_pcd.utils.hydra import CONFIG_DIR, register_resolvers

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
# what a user must give (`???` in the experiment): a value that composes
REQUIRED = {"det_strl_votenet_scannet": ["task.pretrained=/pretrained/backbone.pt"]}


def compose_experiment(name: str, tmp_path: Path):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}", f"paths.log_dir={tmp_path}",
                                          f"paths.cache_dir={tmp_path}", *REQUIRED.get(name, [])],
                      return_hydra_config=True)
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
        if not cfg.get("method") and cfg.task._target_.endswith("SemanticSegmentationTask"):
            check_semseg_network(cfg, backbone)
    if str(cfg.get("task", {}).get("_target_", "")).endswith("DetectionTask") and not cfg.get("method"):
        # what DetectionTask.setup checks against the datamodule, caught without data
        data = get_class(cfg.data._target_)
        assert cfg.task.num_heading_bins == data.num_heading_bins
        assert cfg.model.backbone.in_channels == 3 * cfg.data.use_color + int(cfg.data.use_height)


def check_semseg_network(cfg, backbone: torch.nn.Module, num_classes: int = 5) -> None:
    """The task's network takes the batches of the experiment's data mode and gives ``num_classes`` logits."""
    factory = instantiate(cfg.task.network) if cfg.task.get("network") else None
    network = (factory(backbone=backbone, num_classes=num_classes) if factory else backbone).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        if cfg.data.mode == "voxels":
            cells = torch.randperm(8**3)[:60]
            coords = torch.stack([torch.zeros_like(cells), cells // 64, (cells // 8) % 8, cells % 8], 1).int()
            in_channels = cfg.model.backbone.in_channels
            logits = network(coords, torch.rand(len(coords), in_channels))
            assert logits.shape == (len(coords), num_classes)
        else:
            out = network(torch.rand(2, 64, 9))
            logits = out[0] if isinstance(out, tuple) else out
            assert logits.shape == (2, 64, num_classes)
