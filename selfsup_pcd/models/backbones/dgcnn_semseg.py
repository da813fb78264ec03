"""DGCNN semantic-segmentation encoder as STRL pretrains it on ScanNet frames (``strl_byol.md`` §3).

EdgeConv(6→64) → Conv(64→64) → max; EdgeConv(128→64) → Conv(64→64) → max; EdgeConv(128→64) → max;
[x1 ‖ x2 ‖ x3] (192) → Conv1d(192→1024) + BN + LeakyReLU(0.2) → global max (1024). Dynamic kNN (k=20 in
STRL), the first on xyz. Parameter names and shapes are the original's (``conv1.0.weight`` [64, 6, 1, 1],
``conv1.1.*`` BN, ..., ``conv6.0.weight`` [1024, 192, 1]); the original's unused ``conv7``/``conv8`` and its
``bn1..bn8`` aliases are left out (checkpoint loaders skip them).

The two-layer edge blocks apply their second layer to every edge before the max, so their (B, N, k, 64)
edge activations must exist; the first layer is computed as a_j + b_i (W₁x_j + (W₂ − W₁)x_i) instead of on
built [x_j − x_i, x_i] features. The single-layer block and the pooled head use the fused ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BackboneOutput
from .bn import batch_norm_rows
from .ops import edge_conv_bn_act_max, knn, linear_bn_act_max, linear_bn_act_pool

SLOPE = 0.2


def _block(conv: nn.Module, cin: int, cout: int) -> nn.Sequential:
    bn = nn.BatchNorm2d(cout) if conv is nn.Conv2d else nn.BatchNorm1d(cout)
    return nn.Sequential(conv(cin, cout, kernel_size=1, bias=False), bn, nn.LeakyReLU(negative_slope=SLOPE))


def _edge_mlp_max(x: Tensor, idx: Tensor, first: nn.Sequential, second: nn.Sequential) -> Tensor:
    """max over the kNN of act(bn(W₂' act(bn(W [x_j − x_i, x_i])))) for ``x`` (B, N, C) -> (B, N, C₂)."""
    batch, n, cin = x.shape
    k = idx.shape[-1]
    w = first[0].weight.reshape(first[0].out_channels, 2 * cin)
    a = F.linear(x, w[:, :cin])  # neighbour term
    b = F.linear(x, w[:, cin:] - w[:, :cin])  # centre term
    offsets = torch.arange(0, batch * n, n, device=x.device).view(batch, 1, 1)
    nbr = a.reshape(batch * n, -1)[(idx + offsets).view(-1)].view(batch, n, k, -1)
    y = (nbr + b.unsqueeze(2)).view(batch * n * k, -1)
    y = F.leaky_relu(batch_norm_rows(y, first[1]), SLOPE)
    y = F.linear(y, second[0].weight.reshape(second[0].out_channels, -1))
    y = F.leaky_relu(batch_norm_rows(y, second[1]), SLOPE)
    return y.view(batch, n, k, -1).amax(dim=2)


class DGCNNSemsegEncoder(nn.Module):
    """STRL's ``DGCNN_semseg`` encoder: points (B, N, C), xyz first -> global feature (B, emb_dim)."""

    def __init__(self, in_channels: int = 3, k: int = 20, emb_dim: int = 1024) -> None:
        super().__init__()
        if in_channels < 3:
            raise ValueError("DGCNNSemsegEncoder needs in_channels >= 3 (xyz first)")
        self.in_channels, self.k = in_channels, k
        self.conv1 = _block(nn.Conv2d, 2 * in_channels, 64)
        self.conv2 = _block(nn.Conv2d, 64, 64)
        self.conv3 = _block(nn.Conv2d, 128, 64)
        self.conv4 = _block(nn.Conv2d, 64, 64)
        self.conv5 = _block(nn.Conv2d, 128, 64)
        self.conv6 = _block(nn.Conv1d, 192, emb_dim)
        self.out_dim = self.point_dim = emb_dim

    def forward(self, points: Tensor, return_point_features: bool = False) -> BackboneOutput:
        """Global max-pooled features (B, emb_dim) and, if asked, per-point conv6 features (B, N, emb_dim)."""
        if points.shape[-1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {points.shape[-1]}")
        x1 = _edge_mlp_max(points, knn(points[..., :3], self.k), self.conv1, self.conv2)
        x2 = _edge_mlp_max(x1, knn(x1, self.k), self.conv3, self.conv4)
        x3 = edge_conv_bn_act_max(x2, knn(x2, self.k), self.conv5[0].weight, self.conv5[1], SLOPE)
        h = torch.cat([x1, x2, x3], dim=-1)
        weight, bn = self.conv6[0].weight, self.conv6[1]
        if not return_point_features:
            return BackboneOutput(linear_bn_act_max(h, weight, None, bn, SLOPE))
        pooled, point_feat = linear_bn_act_pool(h, weight, None, bn, SLOPE, False, True)
        return BackboneOutput(pooled, point_feat)
