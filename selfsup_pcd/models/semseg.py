"""Point-based semantic-segmentation networks (S3DIS blocks, downstream.md §5a).

Both networks hold a pretraining encoder class as ``network.backbone`` with its own parameter names, so a
pretrained encoder transfers into them layer by layer (``selfsup_pcd.transfer``), and run the encoder's own
layers to keep the per-point features a segmentation head needs (as ``models.part_seg`` does):

* :class:`DGCNNSegNetwork` — ``DGCNNSemsegEncoder`` (EdgeConv blocks (2C→64→64), (128→64→64), (128→64);
  192 → 1024, global max) → [global 1024 ‖ block outputs 192] → 512 → 256 → Dropout 0.5 → classes (bias-free,
  BN, LeakyReLU 0.2). selfsup: 9 input channels (conv1 18→64), the first kNN on channels 6:9 (the room-normalised
  xyz); STRL: ``input_channels=(0, 3)`` (xyz only, conv1 6→64, first kNN on xyz), into which a STRL
  DGCNN-Semseg pretraining transfers completely.
* :class:`PointNetSegNetwork` — ``PointNetEncoder`` (T-net 3×3 on xyz seeing all channels, mlp1 9→64→64,
  feature T-net 64×64, mlp2 →64→128→1024, global max) → [global 1024 ‖ transformed mlp1 output 64] → 512, 256,
  128, 128 → classes (BN, ReLU). Quirk 4 (reproduced by default): the original applies mlp2 to the
  *untransformed* mlp1 output, so the feature transform reaches the head through the 64-d skip only;
  ``use_feature_transform_output=True`` feeds mlp2 the transformed features, as the encoder's own forward.

``forward(points (B, N, C))`` returns ``(logits (B, N, classes), feature transform or None)``; the transform is
for the PointNet regulariser.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup_pcd.models.backbones import DGCNNSemsegEncoder, PointNetEncoder
from selfsup_pcd.models.backbones.ops import linear_bn_act
from selfsup_pcd.models.backbones.pointnet import _conv_bn_pairs, _rows_then_max
from selfsup_pcd.models.part_seg import EncoderFeatures, dgcnn_semseg_features

SLOPE = 0.2


class PointSegHead(nn.Module):
    """Per-point MLP on [skips ‖ global feature]: Linear → BN → activation per hidden width, dropout after the
    last hidden layer, then a linear layer to class logits.

    The first layer's weight is split (W·[s; g] = W_s s + W_g g) so the (B, N, Ds + Dg) concatenation — 1216
    channels × 4096 points × 32 blocks for DGCNN — is never built; the function is the original's.
    """

    def __init__(self, skip_dim: int, global_dim: int, num_classes: int, hidden: Sequence[int],
                 dropout: float = 0.0, negative_slope: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("a segmentation head needs at least one hidden layer")
        self.skip_dim = skip_dim
        layers: list[nn.Module] = []
        width = skip_dim + global_dim
        for out in hidden:
            layers += [nn.Linear(width, out, bias=bias), nn.BatchNorm1d(out), nn.LeakyReLU(negative_slope)]
            width = out
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_classes, bias=bias))
        self.mlp = nn.Sequential(*layers)

    def forward(self, skips: Tensor, global_feat: Tensor) -> Tensor:
        """Class logits (B, N, num_classes) from ``skips`` (B, N, Ds) and ``global_feat`` (B, Dg)."""
        batch, n, _ = skips.shape
        first = self.mlp[0]
        w_skip, w_global = first.weight.split([self.skip_dim, first.in_features - self.skip_dim], dim=1)
        per_block = F.linear(global_feat, w_global, first.bias)  # (B, H)
        h = (F.linear(skips, w_skip) + per_block.unsqueeze(1)).reshape(batch * n, -1)
        for layer in self.mlp[1:]:
            h = layer(h)
        return h.view(batch, n, -1)


def _channel_slice(value: Sequence[int] | None, name: str) -> slice | None:
    if value is None:
        return None
    start, stop = (int(v) for v in value)
    if not 0 <= start < stop:
        raise ValueError(f"{name} must be [start, stop) with 0 <= start < stop, got {list(value)}")
    return slice(start, stop)


class DGCNNSegNetwork(nn.Module):
    """DGCNN semantic segmentation on a :class:`DGCNNSemsegEncoder` (see the module docstring).

    ``input_channels`` ([start, stop)) selects the channels fed to the encoder (None: all; STRL: ``(0, 3)``), which
    must number ``backbone.in_channels``; ``knn_channels`` are the channels of that input the first kNN uses
    (selfsup: ``(6, 9)``; xyz: ``(0, 3)``).
    """

    def __init__(self, backbone: DGCNNSemsegEncoder, num_classes: int, hidden: Sequence[int] = (512, 256),
                 dropout: float = 0.5, input_channels: Sequence[int] | None = None,
                 knn_channels: Sequence[int] = (6, 9)) -> None:
        super().__init__()
        if not isinstance(backbone, DGCNNSemsegEncoder):
            raise TypeError(f"DGCNNSegNetwork needs a DGCNNSemsegEncoder, got {type(backbone).__name__}")
        self.input_channels = _channel_slice(input_channels, "input_channels")
        self.knn_channels = _channel_slice(knn_channels, "knn_channels")
        if self.knn_channels.stop > backbone.in_channels:
            raise ValueError(f"knn_channels {list(knn_channels)} outside the encoder's {backbone.in_channels} "
                             "input channels")
        self.backbone = backbone
        self.num_classes = num_classes
        self.head = PointSegHead(192, backbone.point_dim, num_classes, hidden, dropout, SLOPE, bias=False)

    def features(self, points: Tensor) -> EncoderFeatures:
        if self.input_channels is not None:
            points = points[..., self.input_channels]
        if points.shape[-1] != self.backbone.in_channels:
            raise ValueError(f"the encoder takes {self.backbone.in_channels} channels, got {points.shape[-1]} "
                             f"(input_channels={self.input_channels})")
        return dgcnn_semseg_features(self.backbone, points, self.knn_channels)

    def forward(self, points: Tensor) -> tuple[Tensor, None]:
        """(logits (B, N, num_classes), None)."""
        feats = self.features(points)
        return self.head(feats.skips, feats.global_feat), None

    def original_names(self) -> dict[str, str]:
        """State-dict key → the original network's name (for ``name_shape``): the encoder's names are the
        original's (``conv1..6``), the head's never occur in a pretraining checkpoint."""
        return _backbone_names_unprefixed(self)


class PointNetSegNetwork(nn.Module):
    """PointNet semantic segmentation on a :class:`PointNetEncoder` (see the module docstring)."""

    def __init__(self, backbone: PointNetEncoder, num_classes: int, hidden: Sequence[int] = (512, 256, 128, 128),
                 dropout: float = 0.0, use_feature_transform_output: bool = False) -> None:
        super().__init__()
        if not isinstance(backbone, PointNetEncoder):
            raise TypeError(f"PointNetSegNetwork needs a PointNetEncoder, got {type(backbone).__name__}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.use_feature_transform_output = use_feature_transform_output
        skip_dim = _conv_bn_pairs(backbone.mlp1)[-1][0].out_channels
        self.head = PointSegHead(skip_dim, backbone.point_dim, num_classes, hidden, dropout, 0.0, bias=True)

    def features(self, points: Tensor) -> EncoderFeatures:
        """Skip = the feature-transformed mlp1 output; global = max of mlp2 on the transformed (quirk 4 fixed) or
        untransformed (reproduced) mlp1 output."""
        enc = self.backbone
        batch, n, channels = points.shape
        if channels != enc.in_channels:
            raise ValueError(f"the encoder takes {enc.in_channels} channels, got {channels}")
        x = points
        if enc.stn1 is not None:
            xyz = torch.bmm(x[..., :3], enc.stn1(x).transpose(1, 2))
            x = xyz if channels == 3 else torch.cat([xyz, x[..., 3:]], dim=-1)
        h = x.reshape(batch * n, channels)
        for conv, bn in _conv_bn_pairs(enc.mlp1):
            h = linear_bn_act(h, conv.weight, conv.bias, bn, 0.0)
        h = h.view(batch, n, -1)
        transform, skip = None, h
        if enc.stn2 is not None:
            transform = enc.stn2(h)
            skip = torch.bmm(h, transform.transpose(1, 2))
        global_feat = _rows_then_max(skip if self.use_feature_transform_output else h, enc.mlp2)
        return EncoderFeatures(skip, global_feat, transform)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor | None]:
        """(logits (B, N, num_classes), feature transform (B, 64, 64) or None)."""
        feats = self.features(points)
        return self.head(feats.skips, feats.global_feat), feats.feature_transform

    def original_names(self) -> dict[str, str]:
        """State-dict key → the original network's name (for ``name_shape``): the selfsup PointNet semseg net
        names its encoder ``stn1``, ``stn2``, ``mlp1``, ``mlp2`` like the encoder (not ``conv1..5`` as part seg)."""
        return _backbone_names_unprefixed(self)


def _backbone_names_unprefixed(network: nn.Module) -> dict[str, str]:
    return {key: key.removeprefix("backbone.") for key in network.state_dict()}
