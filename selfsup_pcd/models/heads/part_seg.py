"""Part-segmentation heads: per-point MLPs on [point skips ‖ global feature ‖ category code].

Both heads work on channels-last features: ``skips`` (B, N, Ds) per-point features of the encoder layers,
``global_feat`` (B, Dg), ``category`` (B,) ids. The original networks expand the global feature and the
category code to every point and concatenate them with the skips before a 1×1 conv; here the first layer's
weight is split instead — W·[s_n; g; c] = W_s s_n + W_gc [g; c] — so the (B, N, Ds + Dg + Dc) tensor is never
built (3,024 channels × 2,048 points per shape for PointNet). The function and parameters are the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _PartSegHead(nn.Module):
    """Linear (1×1 conv) → BN → activation [→ dropout] per hidden width, then a linear layer to part logits."""

    def __init__(
        self,
        skip_dim: int,
        global_dim: int,
        num_categories: int,
        num_parts: int,
        hidden: Sequence[int],
        dropout: Sequence[float],
        negative_slope: float,
        bias: bool,
        category_dim: int | None,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("a part-segmentation head needs at least one hidden layer")
        if len(dropout) != len(hidden):
            raise ValueError(f"dropout needs one rate per hidden layer ({len(hidden)}), got {list(dropout)}")
        self.skip_dim, self.global_dim, self.num_categories = skip_dim, global_dim, num_categories
        self.negative_slope = negative_slope
        if category_dim is None:  # PointNet: the one-hot vector itself
            self.category_embed = None
            code_dim = num_categories
        else:  # DGCNN: Conv1d(16 → 64, no bias) → BN → LeakyReLU on the one-hot vector
            self.category_embed = nn.Sequential(
                nn.Linear(num_categories, category_dim, bias=False), nn.BatchNorm1d(category_dim),
                nn.LeakyReLU(negative_slope),
            )
            code_dim = category_dim
        layers: list[nn.Module] = []
        width = skip_dim + global_dim + code_dim
        for out, rate in zip(hidden, dropout):
            layers += [nn.Linear(width, out, bias=bias), nn.BatchNorm1d(out), nn.LeakyReLU(negative_slope)]
            if rate > 0:
                layers.append(nn.Dropout(rate))
            width = out
        layers.append(nn.Linear(width, num_parts, bias=bias))
        self.mlp = nn.Sequential(*layers)

    def forward(self, skips: Tensor, global_feat: Tensor, category: Tensor) -> Tensor:
        """Part logits (B, N, num_parts)."""
        batch, n, _ = skips.shape
        code = F.one_hot(category, self.num_categories).to(global_feat.dtype)
        if self.category_embed is not None:
            code = self.category_embed(code)
        first = self.mlp[0]
        w_skip, w_shape = first.weight.split([self.skip_dim, first.in_features - self.skip_dim], dim=1)
        per_shape = F.linear(torch.cat([global_feat, code], dim=1), w_shape, first.bias)  # (B, H)
        h = (F.linear(skips, w_skip) + per_shape.unsqueeze(1)).reshape(batch * n, -1)
        for layer in self.mlp[1:]:
            h = layer(h)
        return h.view(batch, n, -1)


class PointNetPartSegHead(_PartSegHead):
    """PointNet's: [skips ‖ global ‖ one-hot] → 256, 256, 128 (BN, ReLU) → parts (log-softmax in the loss)."""

    def __init__(
        self,
        skip_dim: int,
        global_dim: int,
        num_categories: int,
        num_parts: int,
        hidden: Sequence[int] = (256, 256, 128),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(skip_dim, global_dim, num_categories, num_parts, hidden, [dropout] * len(hidden),
                         negative_slope=0.0, bias=True, category_dim=None)


class DGCNNPartSegHead(_PartSegHead):
    """DGCNN's: one-hot → 64 (BN, LeakyReLU 0.2); [skips ‖ global ‖ 64] → 256, Drop 0.5 → 256, Drop 0.5 → 128
    → parts; bias-free 1×1 convs, as the original."""

    def __init__(
        self,
        skip_dim: int,
        global_dim: int,
        num_categories: int,
        num_parts: int,
        hidden: Sequence[int] = (256, 256, 128),
        dropout: float = 0.5,
        category_dim: int = 64,
    ) -> None:
        rates = [dropout] * (len(hidden) - 1) + [0.0]  # no dropout after the last hidden layer
        super().__init__(skip_dim, global_dim, num_categories, num_parts, hidden, rates,
                         negative_slope=0.2, bias=False, category_dim=category_dim)
