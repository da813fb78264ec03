"""Point semantic-segmentation networks: shapes, gradients, kNN channels, quirk 4, and encoder transfer."""

from __future__ import annotations

import pytest
import torch

from selfsup_pcd.models.backbones import DGCNNSemsegEncoder, PointNetEncoder
from selfsup_pcd.models.semseg import DGCNNSegNetwork, PointNetSegNetwork
from selfsup_pcd.transfer import LOADED, MISMATCH, transfer_into


def small_dgcnn(in_channels: int = 9, **kwargs) -> DGCNNSegNetwork:
    return DGCNNSegNetwork(DGCNNSemsegEncoder(in_channels=in_channels, k=6, emb_dim=32), 5, hidden=(24, 16),
                           **kwargs)


def small_pointnet(**kwargs) -> PointNetSegNetwork:
    encoder = PointNetEncoder(in_channels=9, mlp1=(16, 16), mlp2=(16, 32))
    return PointNetSegNetwork(encoder, 5, hidden=(24, 16), **kwargs)


@pytest.mark.parametrize("make", [small_dgcnn, small_pointnet], ids=["dgcnn", "pointnet"])
def test_logits_shape_and_every_parameter_gets_a_gradient(make):
    torch.manual_seed(0)
    net = make()
    for module in net.modules():  # T-nets start at the identity with a zero last layer, which stops gradients
        if hasattr(module, "mlp2") and hasattr(module, "k"):
            torch.nn.init.normal_(module.mlp2[-1].weight, std=0.01)
    points = torch.randn(2, 40, 9)
    logits, transform = net(points)
    assert logits.shape == (2, 40, 5)
    if isinstance(net, PointNetSegNetwork):
        assert transform.shape == (2, 16, 16)
    else:
        assert transform is None
    logits.square().sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_paper_widths():
    dgcnn = DGCNNSegNetwork(DGCNNSemsegEncoder(in_channels=9, k=20), 13)
    assert dgcnn.backbone.conv1[0].weight.shape == (64, 18, 1, 1)
    assert dgcnn.head.mlp[0].in_features == 1216 and dgcnn.head.mlp[-1].out_features == 13
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in dgcnn.head.mlp)
    pointnet = PointNetSegNetwork(PointNetEncoder(in_channels=9), 13)
    assert pointnet.head.mlp[0].in_features == 1088
    widths = [m.out_features for m in pointnet.head.mlp if isinstance(m, torch.nn.Linear)]
    assert widths == [512, 256, 128, 128, 13]


def test_dgcnn_first_knn_uses_the_configured_channels():
    torch.manual_seed(0)
    points = torch.randn(2, 40, 9)
    net = small_dgcnn(knn_channels=(6, 9)).eval()
    other = small_dgcnn(knn_channels=(0, 3)).eval()
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        a, b = net(points)[0], other(points)[0]
        assert not torch.allclose(a, b)  # channels 6:9 and 0:3 give different neighbourhoods
        same = points.clone()
        same[..., 6:9] = same[..., 0:3]
        torch.testing.assert_close(net(same)[0], other(same)[0])


def test_strl_variant_reproduces_the_encoder_and_reads_xyz_only():
    torch.manual_seed(0)
    net = small_dgcnn(in_channels=3, input_channels=(0, 3), knn_channels=(0, 3)).eval()
    points = torch.randn(2, 40, 9)
    with torch.no_grad():
        torch.testing.assert_close(net.features(points).global_feat, net.backbone(points[..., :3]).global_feat,
                                   rtol=1e-4, atol=1e-5)
        changed = points.clone()
        changed[..., 3:] = torch.randn(2, 40, 6)
        torch.testing.assert_close(net(changed)[0], net(points)[0])
    with pytest.raises(ValueError, match="takes 3 channels"):
        small_dgcnn(in_channels=3, knn_channels=(0, 3))(points)


def test_split_head_equals_the_concatenated_features():
    torch.manual_seed(0)
    net = small_dgcnn().eval()
    points = torch.randn(2, 40, 9)
    with torch.no_grad():
        feats = net.features(points)
        full = torch.cat([feats.skips, feats.global_feat.unsqueeze(1).expand(-1, 40, -1)], dim=-1)
        expected = net.head.mlp(full.reshape(80, -1)).view(2, 40, 5)
        torch.testing.assert_close(net(points)[0], expected, rtol=1e-5, atol=1e-5)


def test_quirk4_switch_decides_whether_mlp2_sees_the_feature_transform():
    torch.manual_seed(0)
    points = torch.randn(2, 40, 9)
    for reproduce in (True, False):
        net = small_pointnet(use_feature_transform_output=not reproduce).eval()
        with torch.no_grad():
            before = net.features(points)
            net.backbone.stn2.mlp2[-1].bias.add_(torch.randn(16 * 16) * 0.3)  # a non-identity feature transform
            after = net.features(points)
        assert not torch.allclose(before.skips, after.skips)  # the skip is always the transformed output
        # reproduced (original): mlp2 runs on the untransformed features, so the global feature ignores stn2
        assert torch.allclose(before.global_feat, after.global_feat) == reproduce


def test_strl_dgcnn_semseg_encoder_transfers_completely():
    torch.manual_seed(0)
    pretrained = DGCNNSemsegEncoder(in_channels=3, k=20)
    # a STRL export: an online-network prefix and the never-trained conv7 / conv8 of the original
    state = {f"online_network.encoder.{k}": v for k, v in pretrained.state_dict().items()}
    state["online_network.encoder.conv7.0.weight"] = torch.zeros(512, 1216, 1)
    state["online_network.encoder.conv8.0.weight"] = torch.zeros(256, 512, 1)
    net = DGCNNSegNetwork(DGCNNSemsegEncoder(in_channels=3, k=20), 13, input_channels=(0, 3), knn_channels=(0, 3))
    report = transfer_into(net, state)
    assert report.complete and len(report.loaded_layers) == 6
    assert "head" in report.new_layers
    for key, value in pretrained.state_dict().items():
        torch.testing.assert_close(net.backbone.state_dict()[key], value)
    # the 9-channel variant: only conv1 (18 -> 64) cannot come from an xyz encoder
    net9 = DGCNNSegNetwork(DGCNNSemsegEncoder(in_channels=9, k=20), 13)
    report9 = transfer_into(net9, state)
    assert report9.layers["backbone.conv1.0"] == MISMATCH
    assert [k for k, v in report9.layers.items() if v != LOADED] == ["backbone.conv1.0"]


def test_xyz_pointnet_transfers_all_but_the_first_convs_into_the_9_channel_net():
    pretrained = PointNetEncoder(in_channels=3)
    net = PointNetSegNetwork(PointNetEncoder(in_channels=9), 13)
    report = transfer_into(net, pretrained.state_dict())
    assert sorted(k for k, v in report.layers.items() if v != LOADED) == ["backbone.mlp1.0", "backbone.stn1.mlp1.0"]
    # the original semseg net names its encoder like ours (mlp1, mlp2), not conv1..5 as the part-seg nets
    names = net.original_names()
    assert names["backbone.mlp2.0.weight"] == "mlp2.0.weight" and names["head.mlp.0.weight"] == "head.mlp.0.weight"


def test_name_shape_uses_the_semseg_nets_own_original_names():
    # quirk 3 in the semseg nets: the original copy_parameters matches the original semseg names (mlp1, mlp2),
    # so an xyz PointNet moves every tensor but the two first convolutions, whose input width differs
    pretrained = PointNetEncoder(in_channels=3)
    net = PointNetSegNetwork(PointNetEncoder(in_channels=9), 13)
    report = transfer_into(net, pretrained.state_dict(), mode="name_shape")
    not_loaded = sorted(report.tensors.missing)
    assert not_loaded == ["backbone.mlp1.0.weight", "backbone.stn1.mlp1.0.weight"]
    torch.testing.assert_close(net.backbone.mlp2[0].weight, pretrained.mlp2[0].weight)
