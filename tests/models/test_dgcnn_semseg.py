"""STRL's DGCNN-semseg encoder vs. a channels-first reference written like the original code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from selfsup_pcd.models.backbones.dgcnn_semseg import DGCNNSemsegEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from reference_models import graph_feature, reference_knn  # noqa: E402


class ReferenceSemseg(nn.Module):
    """``DGCNN_semseg.forward`` of STRL (BYOL/models/networks_dgcnn_semseg.py), channels-first."""

    def __init__(self, k: int = 20, emb_dim: int = 1024) -> None:
        super().__init__()
        self.k = k

        def block(conv, cin, cout):
            bn = nn.BatchNorm2d(cout) if conv is nn.Conv2d else nn.BatchNorm1d(cout)
            return nn.Sequential(conv(cin, cout, kernel_size=1, bias=False), bn, nn.LeakyReLU(0.2))

        self.conv1, self.conv2 = block(nn.Conv2d, 6, 64), block(nn.Conv2d, 64, 64)
        self.conv3, self.conv4 = block(nn.Conv2d, 128, 64), block(nn.Conv2d, 64, 64)
        self.conv5, self.conv6 = block(nn.Conv2d, 128, 64), block(nn.Conv1d, 192, emb_dim)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        x = points.transpose(2, 1)
        x1 = self.conv2(self.conv1(graph_feature(x, self.k, reference_knn(x, self.k)))).max(dim=-1)[0]
        x2 = self.conv4(self.conv3(graph_feature(x1, self.k))).max(dim=-1)[0]
        x3 = self.conv5(graph_feature(x2, self.k)).max(dim=-1)[0]
        x = self.conv6(torch.cat((x1, x2, x3), dim=1))
        return x.max(dim=-1)[0], x.transpose(2, 1)


def randomize_bn(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                gamma = torch.rand(c, generator=gen) + 0.5
                gamma[torch.rand(c, generator=gen) < 0.2] *= -1  # negative scales flip the max/min trick
                m.weight.copy_(gamma)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)


def run(model: nn.Module, points: Tensor, fused: bool, train: bool) -> dict[str, Tensor]:
    model.train(train)
    x = points.clone().requires_grad_(True)
    if fused:
        out = model(x, return_point_features=True)
        glob, pts = out.global_feat, out.point_feat
    else:
        glob, pts = model(x)
    gen = torch.Generator().manual_seed(3)
    loss = (glob * torch.randn(glob.shape, generator=gen, dtype=glob.dtype)).sum()
    loss = loss + (pts * torch.randn(pts.shape, generator=gen, dtype=pts.dtype)).sum() / 10
    loss.backward()
    result = {"global": glob, "points": pts, "input grad": x.grad}
    result.update({f"grad {n}": p.grad for n, p in model.named_parameters()})
    result.update(dict(model.named_buffers()))
    return {k: v.detach() for k, v in result.items()}


@pytest.mark.parametrize("train", [True, False])
def test_semseg_encoder_matches_reference(train: bool) -> None:
    torch.manual_seed(0)
    fused = DGCNNSemsegEncoder(k=8, emb_dim=96)
    randomize_bn(fused, 0)
    ref = ReferenceSemseg(k=8, emb_dim=96)
    ref.load_state_dict(fused.state_dict())  # strict: the original parameter names and shapes
    fused, ref = fused.double(), ref.double()
    points = torch.randn(3, 64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got, expected = run(fused, points, True, train), run(ref, points, False, train)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if value.is_floating_point():
            scale = max(float(value.abs().max()), 1e-6)
            assert float((got[key] - value).abs().max()) / scale < 1e-9, key
        else:
            assert torch.equal(got[key], value), key


def test_semseg_encoder_names_shapes_and_dims() -> None:
    model = DGCNNSemsegEncoder()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.endswith(".weight")}
    assert shapes["conv1.0.weight"] == (64, 6, 1, 1) and shapes["conv2.0.weight"] == (64, 64, 1, 1)
    assert shapes["conv3.0.weight"] == (64, 128, 1, 1) and shapes["conv5.0.weight"] == (64, 128, 1, 1)
    assert shapes["conv6.0.weight"] == (1024, 192, 1) and shapes["conv6.1.weight"] == (1024,)
    assert model.out_dim == 1024
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 32, 3))
    assert out.global_feat.shape == (2, 1024) and out.point_feat is None
