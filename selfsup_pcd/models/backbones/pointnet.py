"""PointNet encoder (selfsup ``PointNet_point_global`` layout; without T-nets it is STRL's PointNet).

Parameters keep the original names and nn.Conv1d shapes (``stn1.mlp1.0.weight`` [64, 3, 1], ...), so
original checkpoints load as they are. The computation is channels-last: each pointwise conv is one
matmul on a (B·N, C) matrix, and layers followed by a global max-pool go through
:func:`~.ops.linear_bn_act_max`, which never materialises their (B, N, 1024) activations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BackboneOutput
from .bn import batch_norm_rows
from .ops import linear_bn_act, linear_bn_act_max, linear_bn_act_pool


def _pointwise_mlp(in_channels: int, widths: Sequence[int], bias: bool) -> nn.Sequential:
    """Conv1d(k=1) → BN → ReLU per width, indexed like the original nn.Sequential (0, 1, 3, 4, ...)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv1d(in_channels, width, 1, bias=bias), nn.BatchNorm1d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers)


def _conv_bn_pairs(mlp: nn.Sequential) -> list[tuple[nn.Conv1d, nn.BatchNorm1d]]:
    return list(zip(mlp[0::3], mlp[1::3]))


def _rows_then_max(x: Tensor, mlp: nn.Sequential) -> Tensor:
    """All layers of ``mlp`` on points (B, N, C), then a global max; the last layer is fused with it."""
    batch, n, channels = x.shape
    pairs = _conv_bn_pairs(mlp)
    h = x.reshape(batch * n, channels)
    for conv, bn in pairs[:-1]:
        h = linear_bn_act(h, conv.weight, conv.bias, bn, 0.0)
    conv, bn = pairs[-1]
    return linear_bn_act_max(h.view(batch, n, -1), conv.weight, conv.bias, bn, 0.0)


class TNet(nn.Module):
    """Spatial transformer predicting a k×k matrix from points (B, N, C) (original ``STN3D``).

    Conv 64-128-1024 (BN+ReLU) → max-pool → FC 512-256 (BN+ReLU) → k² + identity. The last FC starts at
    zero so the transform starts as the identity.
    """

    def __init__(self, in_channels: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.mlp1 = _pointwise_mlp(in_channels, (64, 128, 1024), bias=True)
        self.mlp2 = nn.Sequential(
            nn.Linear(1024, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Linear(512, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Linear(256, k * k),
        )
        nn.init.zeros_(self.mlp2[-1].weight)
        nn.init.zeros_(self.mlp2[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        g = _rows_then_max(x, self.mlp1)
        fc1, bn1, _, fc2, bn2, _, fc3 = self.mlp2
        g = F.relu_(batch_norm_rows(fc1(g), bn1))
        g = F.relu_(batch_norm_rows(fc2(g), bn2))
        eye = torch.eye(self.k, dtype=g.dtype, device=g.device).view(-1)
        return (fc3(g) + eye).view(-1, self.k, self.k)


class PointNetEncoder(nn.Module):
    """PointNet: [T-net on xyz] → mlp1 → [k×k feature T-net] → mlp2 → global max-pool.

    ``in_channels`` >= 3 with xyz first; the input T-net sees all channels and transforms xyz only (as the
    selfsup downstream models). ``conv_bias=False`` gives STRL's bias-free convs. Global feature and
    point features (``return_point_features``) are mlp2's last output after BN+ReLU: ``out_dim`` =
    ``point_dim`` = mlp2[-1].
    """

    def __init__(
        self,
        in_channels: int = 3,
        mlp1: Sequence[int] = (64, 64),
        mlp2: Sequence[int] = (64, 128, 1024),
        input_transform: bool = True,
        feature_transform: bool = True,
        conv_bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels < 3 or not mlp1 or not mlp2:
            raise ValueError("PointNetEncoder needs in_channels >= 3 and non-empty mlp1 / mlp2")
        self.in_channels = in_channels
        self.stn1 = TNet(in_channels, 3) if input_transform else None
        self.stn2 = TNet(mlp1[-1], mlp1[-1]) if feature_transform else None
        self.mlp1 = _pointwise_mlp(in_channels, mlp1, conv_bias)
        self.mlp2 = _pointwise_mlp(mlp1[-1], mlp2, conv_bias)
        self.out_dim = self.point_dim = mlp2[-1]

    def forward(self, points: Tensor, return_point_features: bool = False) -> BackboneOutput:
        """``points`` (B, N, C) -> global (B, out_dim), point features (B, N, point_dim) if asked, T2."""
        batch, n, channels = points.shape
        if channels != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {channels}")
        x = points
        if self.stn1 is not None:
            t1 = self.stn1(x)
            xyz = torch.bmm(x[..., :3], t1.transpose(1, 2))
            x = xyz if channels == 3 else torch.cat([xyz, x[..., 3:]], dim=-1)
        h = x.reshape(batch * n, channels)
        for conv, bn in _conv_bn_pairs(self.mlp1):
            h = linear_bn_act(h, conv.weight, conv.bias, bn, 0.0)
        t2 = None
        if self.stn2 is not None:
            h3 = h.view(batch, n, -1)
            t2 = self.stn2(h3)
            h = torch.bmm(h3, t2.transpose(1, 2)).view(batch * n, -1)
        if not return_point_features:
            return BackboneOutput(_rows_then_max(h.view(batch, n, -1), self.mlp2), None, t2)
        pairs = _conv_bn_pairs(self.mlp2)
        for conv, bn in pairs[:-1]:
            h = linear_bn_act(h, conv.weight, conv.bias, bn, 0.0)
        conv, bn = pairs[-1]
        pooled, point_feat = linear_bn_act_pool(h.view(batch, n, -1), conv.weight, conv.bias, bn, 0.0, with_points=True)
        return BackboneOutput(pooled, point_feat, t2)
