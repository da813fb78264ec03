"""VoteNet's PointNet++ SSG backbone (``strl_byol.md`` §3 ``votenet`` row, ``downstream.md`` §6) on the
pure-PyTorch ops of :mod:`.pointnet2_ops`.

SA1(2048 points, r 0.2, 64 samples, mlp 64-64-128) → SA2(1024, 0.4, 32, 128-128-256) → SA3(512, 0.8, 16,
128-128-256) → SA4(256, 1.2, 16, 128-128-256); FP1 (SA4 → SA3 points) and FP2 (→ SA2 points), mlp 256-256 each:
1024 seeds × 256 features. Grouped offsets are divided by the radius (``normalize_xyz``) and put before the
grouped features (``use_xyz``). Input: points (B, N, 3 + F), xyz in metres first, then F extra features
(VoteNet's height; ``in_channels=F``, 0 = ``--no_height``).

Parameter names are VoteNet's (``sa1.mlp_module.layer0.conv.weight`` [64, 3 + F, 1, 1],
``sa1.mlp_module.layer0.bn.bn.*``, ..., ``fp2.mlp.layer1.*``), so its checkpoints and STRL's
``transform_ckpt_votenet.py`` exports (``backbone_net.`` prefix) load by name.

For BYOL (STRL pretrains this network on ScanNet frames) the representation is the max over the seeds:
:attr:`SeedFeatures.global_feat`, which is what ``methods/byol.py`` reads, so ``method=byol
model=votenet_pointnet2`` needs no wrapper and its export is this class's state dict.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup_pcd.checkpoints import CheckpointError, TransferReport, best_prefix, read_state_dict, transfer_state

from . import pointnet2_ops as ops
from .bn import batch_norm_rows
from .ops import linear_bn_act, linear_bn_act_max

log = logging.getLogger(__name__)

VOTENET_NPOINTS = (2048, 1024, 512, 256)
VOTENET_RADII = (0.2, 0.4, 0.8, 1.2)
VOTENET_NSAMPLES = (64, 32, 16, 16)
VOTENET_SA_MLPS = ((64, 64, 128), (128, 128, 256), (128, 128, 256), (128, 128, 256))
VOTENET_FP_MLPS = ((256, 256), (256, 256))


@dataclass
class SeedFeatures:
    """Seeds of a detection backbone: what VoteNet's voting module reads."""

    xyz: Tensor  # (B, S, 3) seed coordinates
    features: Tensor  # (B, S, C) seed features, channels-last
    indices: Tensor  # (B, S) int64 index of each seed in the input points

    @property
    def global_feat(self) -> Tensor:
        """(B, C) max over the seeds: STRL's BYOL representation of this backbone."""
        return self.features.amax(dim=1)


class ConvBNReLU(nn.Module):
    """1×1 Conv2d (no bias) → BN → ReLU, named as pointnet2's ``pt_utils.Conv2d`` (``conv``, ``bn.bn``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        nn.init.kaiming_normal_(self.conv.weight)
        self.bn = nn.Sequential(OrderedDict(bn=nn.BatchNorm2d(out_channels)))

    @property
    def weight(self) -> Tensor:
        return self.conv.weight.view(self.conv.out_channels, -1)

    @property
    def norm(self) -> nn.BatchNorm2d:
        return self.bn.bn


class SharedMLP(nn.Module):
    """``layer0``, ``layer1``, ... pointwise ConvBNReLU layers on channels-last rows."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            self.add_module(f"layer{i}", ConvBNReLU(cin, cout))

    def layers(self) -> list[ConvBNReLU]:
        return list(self.children())  # type: ignore[return-value]

    def rows(self, x: Tensor, fused: bool = True) -> Tensor:
        """Every layer on a (rows, C) matrix."""
        for layer in self.layers():
            x = linear_bn_act(x, layer.weight, None, layer.norm, 0.0) if fused else \
                F.relu(batch_norm_rows(F.linear(x, layer.weight), layer.norm))
        return x

    def rows_then_group_max(self, x: Tensor, groups: int, fused: bool = True) -> Tensor:
        """Every layer on ``x`` (groups·K, C), then the max over each group's K consecutive rows -> (groups, C').

        The fused path never holds the last layer's (groups·K, C') activations (BN statistics from the Gram
        matrix of its input: ``ops.linear_bn_act_max``)."""
        *head, last = self.layers()
        for layer in head:
            x = linear_bn_act(x, layer.weight, None, layer.norm, 0.0) if fused else \
                F.relu(batch_norm_rows(F.linear(x, layer.weight), layer.norm))
        if fused:
            return linear_bn_act_max(x.view(groups, -1, x.shape[-1]), last.weight, None, last.norm, 0.0)
        y = F.relu(batch_norm_rows(F.linear(x, last.weight), last.norm))
        return y.view(groups, -1, y.shape[-1]).amax(dim=1)


class SetAbstraction(nn.Module):
    """PointNet++ SSG set abstraction (VoteNet's ``PointnetSAModuleVotes``): FPS centres, ball-query groups,
    shared MLP on [offsets (/ radius) ‖ features], max over each group."""

    def __init__(self, npoint: int, radius: float, nsample: int, in_channels: int, mlp: Sequence[int],
                 use_xyz: bool = True, normalize_xyz: bool = True) -> None:
        super().__init__()
        if not mlp:
            raise ValueError("a set abstraction needs at least one MLP layer")
        self.npoint, self.radius, self.nsample = int(npoint), float(radius), int(nsample)
        self.use_xyz, self.normalize_xyz = use_xyz, normalize_xyz
        cin = in_channels + (3 if use_xyz else 0)
        if cin == 0:
            raise ValueError("a set abstraction without features needs use_xyz=True")
        self.in_channels, self.out_channels = in_channels, int(mlp[-1])
        self.mlp_module = SharedMLP([cin, *mlp])

    def forward(self, xyz: Tensor, features: Tensor | None, fused: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """``xyz`` (B, N, 3), ``features`` (B, N, C) or None -> centres (B, S, 3), features (B, S, C'),
        centre indices (B, S) into ``xyz``."""
        batch = xyz.shape[0]
        inds = ops.furthest_point_sample(xyz, self.npoint)
        new_xyz = ops.gather_points(xyz, inds)
        idx = ops.ball_query(self.radius, self.nsample, xyz, new_xyz)
        parts = []
        if self.use_xyz:
            offsets = ops.group_points(xyz, idx) - new_xyz.unsqueeze(2)
            parts.append(offsets / self.radius if self.normalize_xyz else offsets)
        if features is not None:
            parts.append(ops.group_points(features, idx))
        grouped = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)  # (B, S, K, Cin)
        rows = grouped.reshape(-1, grouped.shape[-1])
        pooled = self.mlp_module.rows_then_group_max(rows, batch * self.npoint, fused)
        return new_xyz, pooled.view(batch, self.npoint, -1), inds


class FeaturePropagation(nn.Module):
    """PointNet++ feature propagation: inverse-distance interpolation from the three nearest coarse points,
    concatenated with the fine level's own features ([interpolated ‖ skip]), then a shared MLP."""

    def __init__(self, mlp: Sequence[int]) -> None:
        super().__init__()
        self.mlp = SharedMLP(mlp)
        self.out_channels = int(mlp[-1])

    def forward(self, unknown_xyz: Tensor, known_xyz: Tensor, unknown_feats: Tensor | None, known_feats: Tensor,
                fused: bool = True) -> Tensor:
        dist, idx = ops.three_nn(unknown_xyz, known_xyz)
        interpolated = ops.three_interpolate(known_feats, idx, ops.three_nn_weights(dist))
        x = interpolated if unknown_feats is None else torch.cat([interpolated, unknown_feats], dim=-1)
        batch, n, c = x.shape
        return self.mlp.rows(x.reshape(batch * n, c), fused).view(batch, n, -1)


def _ints(values: Sequence, name: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if not out:
        raise ValueError(f"{name} must not be empty")
    return out


class PointNet2Backbone(nn.Module):
    """VoteNet's PointNet++ backbone: points (B, N, 3 + in_channels) -> :class:`SeedFeatures`.

    ``num_seeds`` = points of the level the last FP layer reaches (SA2's 1024 in VoteNet), ``out_dim`` = its
    width (256). Smaller ``npoints`` / ``nsamples`` / MLPs give cheap test networks. ``fused=False`` runs
    the MLPs as plain linear + BatchNorm + ReLU (same function, more memory; a reference for tests).
    """

    def __init__(
        self,
        in_channels: int = 0,
        npoints: Sequence[int] = VOTENET_NPOINTS,
        radii: Sequence[float] = VOTENET_RADII,
        nsamples: Sequence[int] = VOTENET_NSAMPLES,
        sa_mlps: Sequence[Sequence[int]] = VOTENET_SA_MLPS,
        fp_mlps: Sequence[Sequence[int]] = VOTENET_FP_MLPS,
        use_xyz: bool = True,
        normalize_xyz: bool = True,
        fused: bool = True,
    ) -> None:
        super().__init__()
        npoints, nsamples = _ints(npoints, "npoints"), _ints(nsamples, "nsamples")
        radii = tuple(float(r) for r in radii)
        sa_mlps = [_ints(m, "sa_mlps entry") for m in sa_mlps]
        fp_mlps = [_ints(m, "fp_mlps entry") for m in fp_mlps]
        levels = len(npoints)
        if not (len(radii) == len(nsamples) == len(sa_mlps) == levels):
            raise ValueError("npoints, radii, nsamples and sa_mlps need one entry per SA layer")
        if not 1 <= len(fp_mlps) < levels:
            raise ValueError(f"need 1 to {levels - 1} FP layers for {levels} SA layers, got {len(fp_mlps)}")
        if in_channels < 0:
            raise ValueError(f"in_channels must be >= 0, got {in_channels}")
        self.in_channels, self.fused = int(in_channels), fused
        widths = [self.in_channels]
        for i in range(levels):
            sa = SetAbstraction(npoints[i], radii[i], nsamples[i], widths[-1], sa_mlps[i], use_xyz, normalize_xyz)
            self.add_module(f"sa{i + 1}", sa)
            widths.append(sa.out_channels)
        coarse = widths[levels]
        for j, mlp in enumerate(fp_mlps):
            skip = widths[levels - 1 - j]
            fp = FeaturePropagation([coarse + skip, *mlp])
            self.add_module(f"fp{j + 1}", fp)
            coarse = fp.out_channels
        self.num_sa, self.num_fp = levels, len(fp_mlps)
        self.seed_level = levels - len(fp_mlps)  # 1-based SA level whose points are the seeds
        self.num_seeds = npoints[self.seed_level - 1]
        self.out_dim = self.point_dim = coarse

    def input_layer_keys(self) -> set[str]:
        """State-dict keys whose shape depends on ``in_channels`` (what an xyz-only checkpoint cannot fill)."""
        return {"sa1.mlp_module.layer0.conv.weight"}

    def forward(self, points: Tensor) -> SeedFeatures:
        if points.ndim != 3 or points.shape[-1] != 3 + self.in_channels:
            raise ValueError(f"expected points (B, N, {3 + self.in_channels}) = xyz + in_channels="
                             f"{self.in_channels} features, got {tuple(points.shape)}")
        xyz = points[..., :3].contiguous()
        feats = points[..., 3:].contiguous() if self.in_channels else None
        level_xyz, level_feats, level_inds = [xyz], [feats], []
        for i in range(self.num_sa):
            xyz, feats, inds = getattr(self, f"sa{i + 1}")(xyz, feats, self.fused)
            level_xyz.append(xyz)
            level_feats.append(feats)
            level_inds.append(inds)
        coarse = level_feats[-1]
        for j in range(self.num_fp):
            fine = self.num_sa - 1 - j
            coarse = getattr(self, f"fp{j + 1}")(level_xyz[fine], level_xyz[fine + 1], level_feats[fine], coarse,
                                                 self.fused)
        indices = level_inds[0]
        for inds in level_inds[1 : self.seed_level]:
            indices = indices.gather(1, inds)  # index into the input points
        return SeedFeatures(xyz=level_xyz[self.seed_level], features=coarse, indices=indices)


# ------------------------------------------------------------------------------------ pretrained weights
def load_pretrained(backbone: nn.Module, path: str | Path, allow_input_mismatch: bool = False) -> TransferReport:
    """Loads a pretrained (e.g. STRL BYOL, xyz only) export into a seed backbone, refusing silent partial loads.

    When only the input layer differs (the checkpoint was pretrained on xyz, the detector adds the height
    feature), it raises with the fix (``in_channels=0``, VoteNet's ``--no_height``), unless
    ``allow_input_mismatch``: then every other tensor is loaded, the input layer keeps its initialisation
    and the report says so. Any other missing tensor is an error. A backbone may name submodules a plain
    checkpoint fits (``pretrained_submodules``: the SR-UNet of :class:`~.srunet_seeds.SRUNetSeeds`).
    """
    state, _ = read_state_dict(path)
    candidates: list[tuple[str, nn.Module]] = [("", backbone)]
    candidates += [(f"{name}.", getattr(backbone, name)) for name in getattr(backbone, "pretrained_submodules", ())]

    def matched(module: nn.Module) -> tuple[int, str]:
        target = module.state_dict()
        prefix = best_prefix(state, set(target))
        return sum(1 for k in state if k.startswith(prefix) and k[len(prefix):] in target), prefix

    scores = [matched(m) for _, m in candidates]
    pick = max(range(len(candidates)), key=lambda i: (scores[i][0], -i))
    name, module = candidates[pick]
    prefix = scores[pick][1]
    target = module.state_dict()
    input_keys = {k[len(name):] for k in getattr(backbone, "input_layer_keys", set)() if k.startswith(name)}
    mismatched = {k: (tuple(state[prefix + k].shape), tuple(v.shape)) for k, v in target.items()
                  if prefix + k in state and tuple(state[prefix + k].shape) != tuple(v.shape)}
    bad_input = {k: s for k, s in mismatched.items() if k in input_keys}
    if bad_input and not allow_input_mismatch:
        details = ", ".join(f"{name}{k}: checkpoint {a} vs network {b}" for k, (a, b) in bad_input.items())
        raise CheckpointError(
            f"{path}: the input layer does not fit ({details}). The checkpoint was pretrained on other input "
            f"features than this backbone's in_channels={getattr(backbone, 'in_channels', '?')} (STRL pretrains on "
            "xyz only). Set the height/extra features off (model.backbone.in_channels=0, VoteNet's --no_height) "
            "to load every tensor, or pass allow_input_mismatch=True to load all but the input layer.")
    report = transfer_state(module, state, prefix=prefix, source=str(path))
    unexplained = [k for k in report.missing if not (allow_input_mismatch and k in input_keys)]
    if not report.loaded or unexplained:
        raise CheckpointError(f"partial load refused ({len(unexplained)} tensors missing besides the input "
                              f"layer).\n{report.summary()}")
    if report.missing or name:
        log.warning("Pretrained backbone loaded into %s:\n%s", name.rstrip(".") or "the backbone", report.summary())
    else:
        log.info(report.summary())
    return report
