"""STRL's VoteNet pretraining: BYOL on ScanNet frame pairs with the PointNet++ backbone, export into the detection
backbone, and import of the original's VoteNet checkpoints (run checkpoints and transform_ckpt_votenet.py output)."""

from __future__ import annotations

import copy
import math
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from selfsup_pcd.checkpoints import read_state_dict
from selfsup_pcd.data.scannet_frames import ScanNetFramesDataModule
from selfsup_pcd.data.writers.scannet_frames import write_scannet_frames
from selfsup_pcd.methods.byol import BYOL, mlp_head
from selfsup_pcd.methods.byol_import import main, strl_backbone_state, strl_byol_state
from selfsup_pcd.models.backbones.pointnet2 import PointNet2Backbone, load_pretrained
from selfsup_pcd.utils.hydra import CONFIG_DIR

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _cli import run_cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = {"npoints": (64, 32, 16, 8), "nsamples": (8, 8, 8, 8),
        "sa_mlps": ((16, 16, 32), (32, 32, 32), (32, 32, 32), (32, 32, 32)), "fp_mlps": ((32, 32), (32, 32))}


def pose(x: float) -> np.ndarray:
    """Camera at (x, 0, 1.5) looking along +y (OpenCV axes), z-up world."""
    p = np.eye(4)
    p[:3, :3] = [[1, 0, 0], [0, 0, 1], [0, -1, 0]]
    p[:3, 3] = [x, 0.0, 1.5]
    return p


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two scenes of three 24×32 depth frames with some relief (no renderer needed)."""
    root = tmp_path_factory.mktemp("votenet_frames")
    h, w = 24, 32
    v, u = np.mgrid[0:h, 0:w]
    for s in range(2):
        depth = np.stack([1500 + 400 * np.sin(u / 5.0 + i + s) * np.cos(v / 4.0) for i in range(3)])
        K = np.array([[20.0, 0, w / 2], [0, 20.0, h / 2], [0, 0, 1]])
        write_scannet_frames(root, f"scene{s:04d}_00", np.zeros((3, h, w, 3), np.uint8), depth.astype(np.uint16),
                             np.stack([pose(0.1 * i) for i in range(3)]), K)
    return root


def scene_views(num_points: int):
    """STRL's scene chain, from its config (conf/method/views/strl_scene.yaml)."""
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "method/views/strl_scene.yaml")
    cfg.num_points = num_points
    return instantiate(cfg)


def test_byol_trains_the_pointnet2_backbone_on_frame_pairs_and_exports_into_detection(frames_root, tmp_path) -> None:
    torch.manual_seed(0)
    backbone = PointNet2Backbone(in_channels=0, **TINY)
    module = BYOL(backbone, optimizer=partial(torch.optim.Adam, lr=1e-2), views=scene_views(128), hidden_dim=32,
                  projection_dim=16, lars={"eta": 0.02, "clip": True, "eps": 1e-8}, ema_total_steps=10)
    initial = copy.deepcopy(backbone.state_dict())
    dm = ScanNetFramesDataModule(frames_root, points_per_frame=256, batch_size=2, num_workers=0, val_fraction=0.0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    loss = float(trainer.callback_metrics["train/loss_step"])
    assert math.isfinite(loss) and 0.0 <= loss <= 8.0
    for key, value in backbone.state_dict().items():
        if key.endswith(".conv.weight"):
            assert not torch.equal(value, initial[key]), f"{key} was not trained"
    target = module.target_backbone.state_dict()
    key = "fp2.mlp.layer1.conv.weight"
    assert not torch.equal(target[key], initial[key]) and not torch.equal(target[key], backbone.state_dict()[key])

    path = module.export(tmp_path, {"note": "test"})[0]
    detection = PointNet2Backbone(in_channels=0, **TINY)
    report = load_pretrained(detection, path)
    assert report.complete
    for key, value in backbone.state_dict().items():
        assert torch.equal(detection.state_dict()[key], value), key
    out = detection(torch.rand(2, 200, 3))
    assert out.features.shape == (2, 32, 32) and out.xyz.shape == (2, 32, 3)


# ----------------------------------------------------------------------------------- STRL checkpoints
def strl_votenet(online: bool, seed: int) -> torch.nn.Module:
    """STRL's VoteNet BYOL network layout: sa1..sa4, fp1, fp2 at the top, an unused ``sa_aggre``, projector
    (+ predictor online), all randomised."""
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Module()
    for name, child in PointNet2Backbone(**TINY).named_children():
        net.add_module(name, child)
    net.sa_aggre = torch.nn.Sequential(torch.nn.Conv1d(35, 32, 1))
    net.projector = mlp_head(32, 16, 8)
    if online:
        net.predictor = mlp_head(8, 16, 8)
    with torch.no_grad():
        for key, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in key else torch.randn(t.shape,
                                                                                                      generator=g))
    return net


def test_strl_votenet_run_checkpoint_imports_into_the_backbone_and_byol(tmp_path, capsys) -> None:
    online, target = strl_votenet(True, 1), strl_votenet(False, 2)
    system = torch.nn.Module()
    system.online_network, system.target_network = online, target
    ckpt = tmp_path / "epoch=99-val_loss=0.5.ckpt"
    torch.save({"state_dict": system.state_dict(), "pytorch-lightning_version": "0.8.5"}, ckpt)

    out = tmp_path / "backbone.pt"
    main([str(ckpt), str(out)])
    assert "PointNet2Backbone" in capsys.readouterr().out
    exported, meta = read_state_dict(out)
    assert meta["network"] == "votenet"
    assert not any(k.startswith(("sa_aggre", "projector", "predictor")) for k in exported)
    detection = PointNet2Backbone(in_channels=0, **TINY)
    assert load_pretrained(detection, out).complete
    for key, value in detection.state_dict().items():
        assert torch.equal(value, online.state_dict()[key]), key

    module = BYOL(PointNet2Backbone(**TINY), optimizer=partial(torch.optim.Adam), views=scene_views(64),
                  hidden_dim=16, projection_dim=8)
    module.load_state_dict(strl_byol_state(system.state_dict()), strict=True)
    assert torch.equal(module.target_backbone.state_dict()["sa1.mlp_module.layer0.conv.weight"],
                       target.state_dict()["sa1.mlp_module.layer0.conv.weight"])

    # transform_ckpt_votenet.py: .sa / .fp keys of the online network under backbone_net., as model_state_dict
    transformed = {"backbone_net." + k: v for k, v in online.state_dict().items() if k.startswith(("sa", "fp"))
                   and not k.startswith("sa_aggre")}
    assert strl_backbone_state(transformed).keys() == detection.state_dict().keys()
    path = tmp_path / "transformed.tar"
    torch.save({"model_state_dict": transformed, "epoch": 0}, path)
    assert load_pretrained(PointNet2Backbone(in_channels=0, **TINY), path).complete


@pytest.mark.slow
def test_strl_votenet_experiment_runs_from_the_command_line(frames_root, tmp_path) -> None:
    """`experiment=strl_votenet_scannet` (method=byol, model=votenet_pointnet2, data=scannet_frames), shrunk."""
    overrides = ["experiment=strl_votenet_scannet", f"data.root={frames_root}", "data.points_per_frame=256",
                 "data.batch_size=2", "data.num_workers=0", "data.val_fraction=0", "method.views.num_points=128",
                 "model.backbone.npoints=[64,32,16,8]", "model.backbone.nsamples=[8,8,8,8]",
                 "method.hidden_dim=32", "method.projection_dim=16", "trainer=cpu", "trainer.max_epochs=1",
                 "logger=csv", "run_name=votenet"]
    run_cli("train", tmp_path, overrides)
    exported = tmp_path / "train/runs/votenet/backbone.pt"
    report = load_pretrained(PointNet2Backbone(in_channels=0, npoints=(64, 32, 16, 8)), exported)
    assert report.complete
