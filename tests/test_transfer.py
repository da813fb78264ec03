"""Weight transfer into the part-segmentation networks: remap (every encoder layer) vs the original's name_shape."""

from __future__ import annotations

import pytest
import torch

from selfsup_pcd.checkpoints import save_backbone
from selfsup_pcd.models.backbones import DGCNNEncoder, PointNetEncoder
from selfsup_pcd.models.backbones.dgcnn_semseg import DGCNNSemsegEncoder
from selfsup_pcd.models.heads.part_seg import DGCNNPartSegHead, PointNetPartSegHead
from selfsup_pcd.models.part_seg import PartSegNetwork
from selfsup_pcd.transfer import LOADED, layer_units, transfer_into


def trained_like(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Distinct non-default values in every tensor, so a copied tensor is recognisable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return module


def dgcnn_partseg(encoder: torch.nn.Module) -> PartSegNetwork:
    return PartSegNetwork(encoder, DGCNNPartSegHead, 16, 50, input_transform=True)


def test_dgcnn_classification_encoder_maps_every_edgeconv_layer(tmp_path, capsys):
    pretrained = trained_like(DGCNNEncoder(k=20), seed=1)
    save_backbone(tmp_path / "backbone.pt", pretrained)
    network = dgcnn_partseg(DGCNNEncoder(k=40, pooling="max"))  # conf/model/dgcnn_partseg.yaml
    report = transfer_into(network, tmp_path / "backbone.pt")
    print(report.summary())
    edgeconvs = [f"backbone.conv{i}.0" for i in range(1, 5)]
    assert all(report.layers[name] == LOADED for name in edgeconvs)
    assert report.layers["backbone.conv5.0"] == LOADED and report.complete
    source = pretrained.state_dict()
    for key, value in network.backbone.state_dict().items():
        assert torch.equal(value, source[key]), key
    assert set(report.new_layers) == {"transform_net", "head"}
    out = capsys.readouterr().out
    assert "5 / 5 encoder layers, 30 / 30 encoder tensors" in out and "backbone.conv4.0  loaded" in out


def test_original_exports_and_lightning_checkpoints_are_mapped_by_prefix(tmp_path):
    pretrained = trained_like(DGCNNEncoder(k=20), seed=2)
    state = pretrained.state_dict()
    # selfsup / OcCo export: "module." prefix and the originals' bn1..bn5 aliases of convX.1
    exported = {f"module.{k}": v for k, v in state.items()}
    exported.update({f"module.bn{i}.{p}": state[f"conv{i}.1.{p}"] for i in range(1, 6) for p in ("weight", "bias")})
    torch.save({"model_state_dict": exported, "epoch": 3}, tmp_path / "occo.pth")
    # a Lightning checkpoint of a classification run: backbone. + a head that must stay behind
    lightning = {f"backbone.{k}": v for k, v in state.items()} | {"head.mlp.0.weight": torch.ones(512, 2048)}
    torch.save({"state_dict": lightning, "pytorch-lightning_version": "2.6.6"}, tmp_path / "last.ckpt")
    for path, prefix in ((tmp_path / "occo.pth", "module."), (tmp_path / "last.ckpt", "backbone.")):
        network = dgcnn_partseg(DGCNNEncoder(k=40, pooling="max"))
        report = transfer_into(network, path)
        assert report.complete and report.tensors.prefix == prefix
        assert torch.equal(network.backbone.conv3[0].weight, pretrained.conv3[0].weight)
        assert not any(k.startswith("head") for k in report.tensors.loaded)


def test_name_shape_reproduces_the_original_near_empty_dgcnn_transfer():
    pretrained = trained_like(DGCNNEncoder(k=20), seed=3)
    network = dgcnn_partseg(DGCNNSemsegEncoder(k=40))  # the original DGCNN part-seg network
    before = {k: v.clone() for k, v in network.state_dict().items()}
    report = transfer_into(network, pretrained.state_dict(), mode="name_shape")
    # downstream.md §1: "selfsup DGCNN -> part seg: conv1.0 (6->64), bn1, bn2 only (shape coincidences)"
    moved = {k for k, v in network.state_dict().items() if not torch.equal(v, before[k]) and v.is_floating_point()}
    assert moved == {"backbone.conv1.0.weight"} | {f"backbone.conv{i}.1.{p}" for i in (1, 2)
                                                    for p in ("weight", "bias", "running_mean", "running_var")}
    assert report.layers["backbone.conv1.0"] == LOADED and not report.complete
    # the fix on the same network maps whole layers only: the first EdgeConv (conv2's BN stays behind)
    remapped = dgcnn_partseg(DGCNNSemsegEncoder(k=40))
    fixed = transfer_into(remapped, pretrained.state_dict(), mode="remap")
    assert fixed.loaded_layers == ["backbone.conv1.0"]
    assert not torch.equal(remapped.backbone.conv2[1].weight, pretrained.conv2[1].weight)


def test_pointnet_name_shape_moves_stn1_and_part_of_stn2_only_remap_also_the_shared_convs():
    pretrained = trained_like(PointNetEncoder(), seed=4)  # selfsup PointNet: mlp1 64,64 / mlp2 64,128,1024
    paper = dict(mlp1=(64, 128, 128), mlp2=(512, 2048))  # the original PointNet part-seg widths
    original = PartSegNetwork(PointNetEncoder(**paper), PointNetPartSegHead, 16, 50)
    report = transfer_into(original, pretrained.state_dict(), mode="name_shape")
    loaded = report.tensors.loaded
    assert all(k.startswith(("backbone.stn1.", "backbone.stn2.")) for k in loaded)
    assert sum(k.startswith("backbone.stn1.") for k in loaded) == len(pretrained.stn1.state_dict())
    assert 0 < sum(k.startswith("backbone.stn2.") for k in loaded) < len(pretrained.stn2.state_dict())
    fixed = PartSegNetwork(PointNetEncoder(**paper), PointNetPartSegHead, 16, 50)
    remap = transfer_into(fixed, pretrained.state_dict(), mode="remap")
    assert remap.layers["backbone.mlp1.0"] == LOADED  # conv 3->64 + BN exist in both
    assert remap.layers["backbone.mlp1.3"] != LOADED  # 64->64 vs 64->128: neither conv nor its BN copied
    # stn2's first conv differs (128 vs 64 inputs) but its BN has the same shape: name_shape copies that BN
    # alone, remap leaves the whole layer untouched
    assert torch.equal(original.backbone.stn2.mlp1[1].weight, pretrained.stn2.mlp1[1].weight)
    assert remap.layers["backbone.stn2.mlp1.0"] != LOADED
    assert torch.equal(fixed.backbone.stn2.mlp1[1].weight, torch.ones(64))
    # with the pretraining widths (conf/model/pointnet_partseg.yaml) everything arrives
    same = PartSegNetwork(PointNetEncoder(), PointNetPartSegHead, 16, 50)
    assert transfer_into(same, pretrained.state_dict()).complete


def test_layer_units_fold_batchnorm_into_the_preceding_layer():
    units = layer_units(PointNetEncoder(mlp1=(8,), mlp2=(8, 16)))
    assert units["mlp1.1.running_mean"] == "mlp1.0" and units["mlp2.4.weight"] == "mlp2.3"
    assert units["stn1.mlp2.1.weight"] == "stn1.mlp2.0" and units["stn1.mlp2.6.bias"] == "stn1.mlp2.6"
    with pytest.raises(ValueError, match="transfer mode"):
        transfer_into(PartSegNetwork(PointNetEncoder(), PointNetPartSegHead, 16, 50), {}, mode="strict")
