"""DGCNN classification encoder (Wang et al.; as used by STRL and selfsup), channels-last and fused.

Parameter names and shapes are the originals' (``conv1.0.weight`` [64, 6, 1, 1], ``conv1.1.*`` BN,
..., ``conv5.0.weight`` [1024, 512, 1]); the originals' ``bn1..bn5`` aliases of ``convX.1`` are left
to checkpoint importers. EdgeConv layers run through :func:`~.ops.edge_conv_bn_act_max`, which never
builds the (B, 2C, N, k) edge tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import BackboneOutput
from .ops import edge_conv_bn_act_max, knn, linear_bn_act_max, linear_bn_act_pool

POOLINGS = ("max_avg", "max")


class DGCNNEncoder(nn.Module):
    """EdgeConv ``[x_j − x_i, x_i]`` stack with dynamic kNN, then Conv1d to ``emb_dim`` and pooling.

    The first kNN uses the xyz coordinates (the first three input channels), later ones the previous
    layer's features. ``pooling="max_avg"`` returns [max ‖ avg] (2·emb_dim; STRL and classification),
    ``"max"`` returns the max only (emb_dim; multi-view rendering). Point features are the per-point
    conv5 output after BN + LeakyReLU (emb_dim).
    """

    def __init__(
        self,
        in_channels: int = 3,
        k: int = 20,
        edge_dims: Sequence[int] = (64, 64, 128, 256),
        emb_dim: int = 1024,
        pooling: str = "max_avg",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if in_channels < 3 or not edge_dims:
            raise ValueError("DGCNNEncoder needs in_channels >= 3 and at least one EdgeConv layer")
        self.in_channels, self.k, self.pooling = in_channels, k, pooling
        width = in_channels
        for i, dim in enumerate(edge_dims, start=1):
            conv = nn.Sequential(
                nn.Conv2d(2 * width, dim, kernel_size=1, bias=False),
                nn.BatchNorm2d(dim),
                nn.LeakyReLU(negative_slope=0.2),
            )
            self.add_module(f"conv{i}", conv)
            width = dim
        self.num_edge_layers = len(edge_dims)
        head = nn.Sequential(
            nn.Conv1d(sum(edge_dims), emb_dim, kernel_size=1, bias=False),
            nn.BatchNorm1d(emb_dim),
            nn.LeakyReLU(negative_slope=0.2),
        )
        self.add_module(f"conv{len(edge_dims) + 1}", head)
        self.point_dim = emb_dim
        self.out_dim = 2 * emb_dim if pooling == "max_avg" else emb_dim

    def _layer(self, i: int) -> nn.Sequential:
        return getattr(self, f"conv{i}")

    def forward(self, points: Tensor, return_point_features: bool = False) -> BackboneOutput:
        """``points`` (B, N, C) -> global (B, out_dim) and, if asked, point features (B, N, emb_dim)."""
        batch, n, channels = points.shape
        if channels != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {channels}")
        x = points
        feats = []
        for i in range(1, self.num_edge_layers + 1):
            conv, bn, act = self._layer(i)
            idx = knn(x[..., :3] if i == 1 else x, self.k)
            x = edge_conv_bn_act_max(x, idx, conv.weight, bn, act.negative_slope)
            feats.append(x)
        h = torch.cat(feats, dim=-1)
        conv, bn, act = self._layer(self.num_edge_layers + 1)
        if self.pooling == "max" and not return_point_features:
            return BackboneOutput(linear_bn_act_max(h, conv.weight, None, bn, act.negative_slope))
        pooled, point_feat = linear_bn_act_pool(
            h, conv.weight, None, bn, act.negative_slope, self.pooling == "max_avg", return_point_features
        )
        return BackboneOutput(pooled, point_feat)
