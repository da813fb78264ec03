"""Importing checkpoints of the original STRL code (Lightning run checkpoints and transform_ckpt.py exports)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup_pcd.checkpoints import load_backbone
from selfsup_pcd.methods.byol import BYOL, mlp_head
from selfsup_pcd.methods.byol_import import main, strl_backbone_state, strl_byol_state
from selfsup_pcd.models.backbones import DGCNNEncoder, PointNetEncoder
from selfsup_pcd.models.backbones.dgcnn_semseg import DGCNNSemsegEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from reference_models import ReferenceDGCNN  # noqa: E402


class StrlPointNet(nn.Module):
    """BYOL/models/networks_PointNet.py: PointNet (+ projector, + predictor for the online network)."""

    def __init__(self, emb: int = 32, hidden: int = 16, proj: int = 8, online: bool = True) -> None:
        super().__init__()
        dims = [3, 64, 64, 64, 128, emb]
        for i in range(5):
            setattr(self, f"conv{i + 1}", nn.Conv1d(dims[i], dims[i + 1], 1, bias=False))
            setattr(self, f"bn{i + 1}", nn.BatchNorm1d(dims[i + 1]))
        self.projector = mlp_head(emb, hidden, proj)
        if online:
            self.predictor = mlp_head(proj, hidden, proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, N) -> (B, emb)
        for i in range(1, 6):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return F.adaptive_max_pool1d(x, 1).squeeze(-1)


def randomized(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5 if "running_var" in name
                             else torch.randn(tensor.shape, generator=g) * 0.3)
    return module


def run_checkpoint(tmp_path: Path) -> tuple[Path, StrlPointNet, StrlPointNet]:
    online, target = randomized(StrlPointNet(), 1), randomized(StrlPointNet(online=False), 2)
    system = nn.Module()
    system.online_network, system.target_network = online, target
    path = tmp_path / "epoch=59-val_loss=0.7221.ckpt"
    torch.save({"state_dict": system.state_dict(), "pytorch-lightning_version": "0.8.5", "epoch": 59}, path)
    return path, online, target


def test_pointnet_run_checkpoint_to_backbone_file(tmp_path, capsys) -> None:
    path, online, _ = run_checkpoint(tmp_path)
    main([str(path), str(tmp_path / "backbone.pt")])
    assert "PointNetEncoder" in capsys.readouterr().out
    ours = PointNetEncoder(mlp2=(64, 128, 32), input_transform=False, feature_transform=False, conv_bias=False)
    report = load_backbone(ours, tmp_path / "backbone.pt")
    assert report.complete and not report.unexpected
    points = torch.randn(4, 50, 3, dtype=torch.float64)
    ours, online = ours.double().eval(), online.double().eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(points).global_feat, online(points.transpose(1, 2)))


def test_run_checkpoint_maps_onto_the_byol_module(tmp_path) -> None:
    path, online, target = run_checkpoint(tmp_path)
    state = torch.load(path, weights_only=False)["state_dict"]
    backbone = PointNetEncoder(mlp2=(64, 128, 32), input_transform=False, feature_transform=False, conv_bias=False)
    module = BYOL(backbone, optimizer=torch.optim.Adam, views=lambda p, g: p, hidden_dim=16, projection_dim=8,
                  probe_classes=None)
    module.load_state_dict(strl_byol_state(state), strict=True)
    assert torch.equal(module.backbone.mlp2[6].weight, online.conv5.weight)
    assert torch.equal(module.target_backbone.mlp1[4].running_mean, target.bn2.running_mean)
    assert torch.equal(module.predictor[0].weight, online.predictor[0].weight)
    assert torch.equal(module.target_projector[3].weight, target.projector[3].weight)


def test_dgcnn_transformed_checkpoint_drops_bn_aliases(tmp_path) -> None:
    strl = randomized(ReferenceDGCNN(), 3)
    for i in range(1, 6):  # the original registers each BN twice: bnX and convX.1
        setattr(strl, f"bn{i}", getattr(strl, f"conv{i}")[1])
    state = strl.state_dict()
    assert "bn3.running_mean" in state and "conv3.1.running_mean" in state
    torch.save({"state_dict": state}, tmp_path / "transformed.ckpt")
    mapped = strl_backbone_state(state)
    ours = DGCNNEncoder(k=40)
    ours.load_state_dict(mapped, strict=True)
    main([str(tmp_path / "transformed.ckpt"), str(tmp_path / "dgcnn.pt"), "--k", "40"])
    assert load_backbone(DGCNNEncoder(k=40), tmp_path / "dgcnn.pt").complete


def test_semseg_checkpoint_drops_unused_layers(tmp_path) -> None:
    ours = randomized(DGCNNSemsegEncoder(emb_dim=64), 4)
    state = {f"online_network.{k}": v for k, v in ours.state_dict().items()}
    state.update({"online_network.conv7.0.weight": torch.zeros(512, 1216, 1),
                  "online_network.bn6.weight": state["online_network.conv6.1.weight"],
                  "online_network.projector.0.weight": torch.zeros(16, 64),
                  "target_network.conv1.0.weight": torch.zeros(64, 6, 1, 1)})
    mapped = strl_backbone_state(state)
    assert set(mapped) == set(ours.state_dict())
    fresh = DGCNNSemsegEncoder(emb_dim=64)
    fresh.load_state_dict(mapped, strict=True)
    assert torch.equal(fresh.conv6[0].weight, ours.conv6[0].weight)


def test_unknown_layout_is_refused(tmp_path) -> None:
    from selfsup_pcd.checkpoints import CheckpointError

    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not an STRL backbone"):
        main([str(tmp_path / "other.ckpt"), str(tmp_path / "out.pt")])
