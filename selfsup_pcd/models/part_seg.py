"""Part-segmentation networks built on the project's encoders (downstream.md §4).

A :class:`PartSegNetwork` is ``[input transform] → encoder → part-seg head``. The encoder is one of the
backbone classes pretraining uses, held as ``network.backbone`` with its own parameter names, so every
pretrained encoder layer has a place to go (``selfsup_pcd.transfer``). The part-seg nets need the output
of every encoder layer, not only the last one the encoders return, so :func:`encoder_features` runs the
encoder's own layers with the same fused ops and keeps each layer's output:

* ``PointNetEncoder`` — skips = every mlp1 output, the feature-transformed features (when ``stn2``), every
  mlp2 output but the last; global = max of the last. With ``mlp1=[64,128,128]``, ``mlp2=[512,2048]`` this is
  the PointNet part-seg network (skips 64+128+128+128+512, global 2048, + one-hot 16 = 3024 channels).
* ``DGCNNEncoder`` (classification layout, EdgeConv 64, 64, 128, 256 → 1024) — skips = the EdgeConv outputs
  (512), global = max of conv5: a part-seg net into which a pretrained DGCNN encoder transfers completely.
* ``DGCNNSemsegEncoder`` (EdgeConv blocks (6→64→64), (128→64→64), (128→64) → 1024) — skips = the three block
  outputs (192), global = max of conv6: with ``DGCNNTransformNet`` in front, the original DGCNN part-seg net.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup_pcd.models.backbones import DGCNNEncoder, PointNetEncoder
from selfsup_pcd.models.backbones.dgcnn_semseg import DGCNNSemsegEncoder, _edge_mlp_max
from selfsup_pcd.models.backbones.ops import edge_conv_bn_act_max, knn, linear_bn_act, linear_bn_act_max

SLOPE = 0.2


@dataclass
class EncoderFeatures:
    """Per-point skip features (B, N, Ds), global feature (B, Dg), PointNet feature transform (or None)."""

    skips: Tensor
    global_feat: Tensor
    feature_transform: Tensor | None = None


def _pairs(mlp: nn.Sequential) -> list[tuple[nn.Module, nn.Module]]:
    return list(zip(mlp[0::3], mlp[1::3]))


def _pointnet_features(enc: PointNetEncoder, points: Tensor) -> EncoderFeatures:
    """The layers of ``PointNetEncoder.forward``, keeping every layer's output."""
    batch, n, channels = points.shape
    x = points
    if enc.stn1 is not None:
        xyz = torch.bmm(x[..., :3], enc.stn1(x).transpose(1, 2))
        x = xyz if channels == 3 else torch.cat([xyz, x[..., 3:]], dim=-1)
    h = x.reshape(batch * n, channels)
    skips = []
    for conv, bn in _pairs(enc.mlp1):
        h = linear_bn_act(h, conv.weight, conv.bias, bn, 0.0)
        skips.append(h)
    t2 = None
    if enc.stn2 is not None:
        h3 = h.view(batch, n, -1)
        t2 = enc.stn2(h3)
        h = torch.bmm(h3, t2.transpose(1, 2)).reshape(batch * n, -1)
        skips.append(h)
    pairs = _pairs(enc.mlp2)
    for conv, bn in pairs[:-1]:
        h = linear_bn_act(h, conv.weight, conv.bias, bn, 0.0)
        skips.append(h)
    conv, bn = pairs[-1]
    global_feat = linear_bn_act_max(h.view(batch, n, -1), conv.weight, conv.bias, bn, 0.0)
    return EncoderFeatures(torch.cat(skips, dim=-1).view(batch, n, -1), global_feat, t2)


def _dgcnn_features(enc: DGCNNEncoder, points: Tensor) -> EncoderFeatures:
    """The layers of ``DGCNNEncoder.forward`` (max pooling), keeping every EdgeConv output."""
    x, feats = points, []
    for i in range(1, enc.num_edge_layers + 1):
        conv, bn, act = getattr(enc, f"conv{i}")
        x = edge_conv_bn_act_max(x, knn(x[..., :3] if i == 1 else x, enc.k), conv.weight, bn, act.negative_slope)
        feats.append(x)
    h = torch.cat(feats, dim=-1)
    conv, bn, act = getattr(enc, f"conv{enc.num_edge_layers + 1}")
    return EncoderFeatures(h, linear_bn_act_max(h, conv.weight, None, bn, act.negative_slope))


def dgcnn_semseg_features(enc: DGCNNSemsegEncoder, points: Tensor,
                          knn_channels: slice = slice(0, 3)) -> EncoderFeatures:
    """The layers of ``DGCNNSemsegEncoder.forward`` keeping the three block outputs (skips, 192), the first kNN
    on ``points[..., knn_channels]`` (the encoder's own forward: xyz; semantic segmentation: 6:9)."""
    x1 = _edge_mlp_max(points, knn(points[..., knn_channels].contiguous(), enc.k), enc.conv1, enc.conv2)
    x2 = _edge_mlp_max(x1, knn(x1, enc.k), enc.conv3, enc.conv4)
    x3 = edge_conv_bn_act_max(x2, knn(x2, enc.k), enc.conv5[0].weight, enc.conv5[1], SLOPE)
    h = torch.cat([x1, x2, x3], dim=-1)
    return EncoderFeatures(h, linear_bn_act_max(h, enc.conv6[0].weight, None, enc.conv6[1], SLOPE))


_EXTRACTORS: dict[type, Callable[[nn.Module, Tensor], EncoderFeatures]] = {
    PointNetEncoder: _pointnet_features,
    DGCNNEncoder: _dgcnn_features,
    DGCNNSemsegEncoder: dgcnn_semseg_features,
}


def encoder_features(backbone: nn.Module, points: Tensor) -> EncoderFeatures:
    """Skips and global feature of ``points`` (B, N, C) through ``backbone`` (a supported encoder)."""
    for cls, fn in _EXTRACTORS.items():
        if isinstance(backbone, cls):
            return fn(backbone, points)
    raise TypeError(f"no part-segmentation feature extractor for {type(backbone).__name__}; "
                    f"supported: {[c.__name__ for c in _EXTRACTORS]}")


def encoder_dims(backbone: nn.Module) -> tuple[int, int]:
    """(skip channels, global channels) :func:`encoder_features` returns for ``backbone``."""
    if isinstance(backbone, PointNetEncoder):
        mlp1 = [conv.out_channels for conv, _ in _pairs(backbone.mlp1)]
        mlp2 = [conv.out_channels for conv, _ in _pairs(backbone.mlp2)]
        return sum(mlp1) + (mlp1[-1] if backbone.stn2 is not None else 0) + sum(mlp2[:-1]), mlp2[-1]
    if isinstance(backbone, DGCNNEncoder):
        widths = [getattr(backbone, f"conv{i}")[0].out_channels for i in range(1, backbone.num_edge_layers + 1)]
        return sum(widths), backbone.point_dim
    if isinstance(backbone, DGCNNSemsegEncoder):
        return 192, backbone.point_dim
    raise TypeError(f"no part-segmentation feature extractor for {type(backbone).__name__}")


class DGCNNTransformNet(nn.Module):
    """DGCNN's input Transform-Net (3×3): EdgeConv (6→64→128) max over k → Conv1d 128→1024, max over points →
    Linear 1024→512→256 (BN, LeakyReLU 0.2) → 9, starting at the identity. Names as the original's
    ``transform_net`` (``conv1..3``, ``linear1``, ``bn3``, ``linear2``, ``bn4``, ``transform``)."""

    def __init__(self, k: int = 40) -> None:
        super().__init__()
        self.k = k
        self.conv1 = nn.Sequential(nn.Conv2d(6, 64, 1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(SLOPE))
        self.conv2 = nn.Sequential(nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(SLOPE))
        self.conv3 = nn.Sequential(nn.Conv1d(128, 1024, 1, bias=False), nn.BatchNorm1d(1024), nn.LeakyReLU(SLOPE))
        self.linear1 = nn.Linear(1024, 512, bias=False)
        self.bn3 = nn.BatchNorm1d(512)
        self.linear2 = nn.Linear(512, 256, bias=False)
        self.bn4 = nn.BatchNorm1d(256)
        self.transform = nn.Linear(256, 9)
        nn.init.zeros_(self.transform.weight)
        with torch.no_grad():
            self.transform.bias.copy_(torch.eye(3).flatten())

    def forward(self, xyz: Tensor) -> Tensor:
        """(B, 3, 3) transform of ``xyz`` (B, N, 3); apply as ``xyz @ T``."""
        h = _edge_mlp_max(xyz, knn(xyz, self.k), self.conv1, self.conv2)
        g = linear_bn_act_max(h, self.conv3[0].weight, None, self.conv3[1], SLOPE)
        g = F.leaky_relu(self.bn3(self.linear1(g)), SLOPE)
        g = F.leaky_relu(self.bn4(self.linear2(g)), SLOPE)
        return self.transform(g).view(-1, 3, 3)


class PartSegNetwork(nn.Module):
    """``[input_transform] → backbone → head``: part logits (B, N, P) from points (B, N, C) and category (B,).

    ``head`` is a factory ``(skip_dim, global_dim, num_categories, num_parts) -> module``, e.g. a partial of
    :class:`~selfsup_pcd.models.heads.part_seg.PointNetPartSegHead`. ``input_transform`` adds DGCNN's
    Transform-Net (its kNN uses ``transform_k``) before the encoder; PointNet's input T-net is in the encoder.
    """

    def __init__(self, backbone: nn.Module, head: Callable[..., nn.Module], num_categories: int, num_parts: int,
                 input_transform: bool = False, transform_k: int | None = None) -> None:
        super().__init__()
        skip_dim, global_dim = encoder_dims(backbone)
        self.backbone = backbone
        self.transform_net = DGCNNTransformNet(transform_k or getattr(backbone, "k", 40)) if input_transform else None
        self.head = head(skip_dim=skip_dim, global_dim=global_dim, num_categories=num_categories,
                         num_parts=num_parts)
        self.num_categories, self.num_parts = num_categories, num_parts

    def features(self, points: Tensor) -> EncoderFeatures:
        if self.transform_net is not None:
            xyz = torch.bmm(points[..., :3], self.transform_net(points[..., :3]))
            points = xyz if points.shape[-1] == 3 else torch.cat([xyz, points[..., 3:]], dim=-1)
        return encoder_features(self.backbone, points)

    def forward(self, points: Tensor, category: Tensor) -> tuple[Tensor, Tensor | None]:
        """(part logits (B, N, P), PointNet feature transform or None)."""
        feats = self.features(points)
        return self.head(feats.skips, feats.global_feat, category), feats.feature_transform


def original_names(network: PartSegNetwork) -> dict[str, str]:
    """Our state-dict key → the key the original selfsup part-seg network used for the same tensor.

    Used by the ``name_shape`` transfer, which reproduces the original's name-and-shape matching. PointNet
    part-seg: ``stn1``, ``stn2`` keep their names, the pointwise convs were ``conv1..5`` / ``bn1..5``; DGCNN
    part-seg (``DGCNNSemsegEncoder``): ``conv1..6`` and ``transform_net`` keep theirs. The heads' names never
    occur in a pretrained checkpoint and stay ours (prefixed ``head.``).
    """
    names: dict[str, str] = {}
    backbone = network.backbone
    for key in backbone.state_dict():
        names[f"backbone.{key}"] = key
    if isinstance(backbone, PointNetEncoder):
        convs = [("mlp1", i) for i in range(0, len(backbone.mlp1), 3)]
        convs += [("mlp2", i) for i in range(0, len(backbone.mlp2), 3)]
        for j, (mlp, i) in enumerate(convs, start=1):
            for key in backbone.state_dict():
                for sub, original in ((i, f"conv{j}"), (i + 1, f"bn{j}")):
                    prefix = f"{mlp}.{sub}."
                    if key.startswith(prefix):
                        names[f"backbone.{key}"] = original + "." + key[len(prefix):]
    for key in network.state_dict():
        if key.startswith("transform_net."):
            names[key] = key
        names.setdefault(key, key)
    return names
