"""Straightforward reference encoders, laid out like the original PointNet / DGCNN code.

They take channels-last points (B, N, C) like the fused encoders, but then work as the originals do:
(B, C, N) tensors, nn.Conv1d / nn.Conv2d modules called as-is, full (B, 2C, N, k) EdgeConv features and
a full pairwise-distance kNN. Parameter names equal the fused encoders', so ``load_state_dict`` copies
weights both ways. Used by the tests (as ground truth) and by ``benchmarks/backbones.py`` (as the
baseline speed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def reference_knn(x: Tensor, k: int) -> Tensor:
    """x (B, C, N) -> (B, N, k) indices of the k nearest points by full pairwise distance."""
    inner = -2 * torch.matmul(x.transpose(2, 1), x)
    xx = torch.sum(x**2, dim=1, keepdim=True)
    neg_dist = -xx - inner - xx.transpose(2, 1)
    return neg_dist.topk(k=k, dim=-1)[1]


def graph_feature(x: Tensor, k: int, idx: Tensor | None = None) -> Tensor:
    """Edge features [x_j − x_i, x_i] for the kNN graph: (B, C, N) -> (B, 2C, N, k)."""
    batch, channels, n = x.shape
    if idx is None:
        idx = reference_knn(x, k)
    base = torch.arange(batch, device=x.device).view(-1, 1, 1) * n
    flat = (idx + base).view(-1)
    pts = x.transpose(2, 1).contiguous()
    nbr = pts.view(batch * n, channels)[flat].view(batch, n, k, channels)
    centre = pts.view(batch, n, 1, channels).expand(-1, -1, k, -1)
    return torch.cat((nbr - centre, centre), dim=3).permute(0, 3, 1, 2).contiguous()


class ReferenceDGCNN(nn.Module):
    """DGCNN classification encoder as in the original code (minus the ``bnX`` aliases)."""

    def __init__(
        self,
        in_channels: int = 3,
        k: int = 20,
        edge_dims: Sequence[int] = (64, 64, 128, 256),
        emb_dim: int = 1024,
        pooling: str = "max_avg",
    ) -> None:
        super().__init__()
        self.k, self.pooling, self.num_edge_layers = k, pooling, len(edge_dims)
        width = in_channels
        for i, dim in enumerate(edge_dims, start=1):
            self.add_module(
                f"conv{i}",
                nn.Sequential(
                    nn.Conv2d(2 * width, dim, kernel_size=1, bias=False),
                    nn.BatchNorm2d(dim),
                    nn.LeakyReLU(negative_slope=0.2),
                ),
            )
            width = dim
        self.add_module(
            f"conv{len(edge_dims) + 1}",
            nn.Sequential(
                nn.Conv1d(sum(edge_dims), emb_dim, kernel_size=1, bias=False),
                nn.BatchNorm1d(emb_dim),
                nn.LeakyReLU(negative_slope=0.2),
            ),
        )

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, C) -> global feature (B, D) and point features (B, N, emb_dim)."""
        x = points.transpose(2, 1)
        feats = []
        for i in range(1, self.num_edge_layers + 1):
            idx = reference_knn(x[:, :3], self.k) if i == 1 else None
            edge = graph_feature(x, self.k, idx)
            x = getattr(self, f"conv{i}")(edge).max(dim=-1, keepdim=False)[0]
            feats.append(x)
        x = getattr(self, f"conv{self.num_edge_layers + 1}")(torch.cat(feats, dim=1))
        pooled = F.adaptive_max_pool1d(x, 1).squeeze(2)
        if self.pooling == "max_avg":
            pooled = torch.cat([pooled, F.adaptive_avg_pool1d(x, 1).squeeze(2)], dim=1)
        return pooled, x.transpose(2, 1)


def _conv_mlp(in_channels: int, widths: Sequence[int], bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv1d(in_channels, width, 1, bias=bias), nn.BatchNorm1d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers)


class ReferenceSTN(nn.Module):
    """T-net as the original ``STN3D``: (B, C, N) -> (B, k, k)."""

    def __init__(self, in_channels: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.mlp1 = _conv_mlp(in_channels, (64, 128, 1024))
        self.mlp2 = nn.Sequential(
            nn.Linear(1024, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Linear(512, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Linear(256, k * k),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool1d(self.mlp1(x), x.shape[2]).squeeze(2)
        x = self.mlp2(x) + torch.eye(self.k, dtype=x.dtype, device=x.device).view(-1)
        return x.view(-1, self.k, self.k)


class ReferencePointNet(nn.Module):
    """PointNet encoder as the original ``PointNet_point_global`` (without its projection heads)."""

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
        self.stn1 = ReferenceSTN(in_channels, 3) if input_transform else None
        self.stn2 = ReferenceSTN(mlp1[-1], mlp1[-1]) if feature_transform else None
        self.mlp1 = _conv_mlp(in_channels, mlp1, conv_bias)
        self.mlp2 = _conv_mlp(mlp1[-1], mlp2, conv_bias)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(B, N, C) -> global feature (B, D), point features (B, N, D), feature transform or None."""
        x = points.transpose(2, 1)
        if self.stn1 is not None:
            t1 = self.stn1(x)
            xyz = torch.bmm(t1, x[:, :3])
            x = torch.cat([xyz, x[:, 3:]], dim=1) if x.shape[1] > 3 else xyz
        x = self.mlp1(x)
        t2 = None
        if self.stn2 is not None:
            t2 = self.stn2(x)
            x = torch.bmm(t2, x)
        x = self.mlp2(x)
        return F.max_pool1d(x, x.shape[2]).squeeze(2), x.transpose(2, 1), t2
