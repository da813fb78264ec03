"""VoteNet (Qi et al., ICCV 2019) on any seed backbone (``downstream.md`` §6): seeds vote for object centres,
votes are clustered into proposals, and each proposal predicts objectness and a box.

* Voting: per seed, a shared MLP (C → C → C → 3 + C) gives an offset to the object centre and a feature
  residual; the vote feature is L2-normalised, as VoteNet does.
* Proposals: ``num_proposals`` vote clusters by FPS on the vote positions, a ball of ``radius`` (``nsample``
  votes) each, a PointNet set abstraction (``use_xyz``, ``normalize_xyz``, MLP 128-128-128) then
  128 → 128 → 2 + 3 + 2·NH + 4·NS + NC per proposal: objectness (2), centre offset from the cluster centre (3),
  heading bin scores and normalised residuals (NH each; residual × π/NH), size-cluster scores (NS) and
  normalised residuals (3·NS; × the cluster's mean size), semantic scores (NC).

The backbone is any module mapping points (B, N, 3 + F) to ``SeedFeatures`` (xyz, channels-last features,
indices): ``PointNet2Backbone`` or ``SRUNetSeeds``. Box decoding lives with the box code
(``selfsup_pcd.data.boxes.decode_boxes``); this module returns raw predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup_pcd.models.backbones.pointnet2 import SetAbstraction


def _mlp(widths: Sequence[int], last_plain: bool = True) -> nn.Sequential:
    """Pointwise Linear → BN → ReLU layers on channels-last rows; the last layer plain (a prediction)."""
    layers: list[nn.Module] = []
    pairs = list(zip(widths[:-1], widths[1:]))
    for i, (cin, cout) in enumerate(pairs):
        last = i == len(pairs) - 1
        layers.append(nn.Linear(cin, cout, bias=last and last_plain))
        if not (last and last_plain):
            layers += [nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _rows(mlp: nn.Sequential, x: Tensor) -> Tensor:
    lead = x.shape[:-1]
    out = mlp(x.reshape(-1, x.shape[-1]))
    return out.view(*lead, out.shape[-1])


class VotingModule(nn.Module):
    """Seeds (B, S, 3) + features (B, S, C) -> votes (B, S, 3), L2-normalised vote features (B, S, C)."""

    def __init__(self, seed_dim: int = 256) -> None:
        super().__init__()
        self.mlp = _mlp([seed_dim, seed_dim, seed_dim, 3 + seed_dim])

    def forward(self, seed_xyz: Tensor, seed_features: Tensor) -> tuple[Tensor, Tensor]:
        out = _rows(self.mlp, seed_features)
        vote_xyz = seed_xyz + out[..., :3]
        vote_features = F.normalize(seed_features + out[..., 3:], dim=-1)
        return vote_xyz, vote_features


class ProposalModule(nn.Module):
    """Vote clusters -> per-proposal predictions (see the module docstring)."""

    def __init__(self, num_classes: int, num_heading_bins: int, mean_sizes: Tensor, num_proposals: int = 256,
                 radius: float = 0.3, nsample: int = 16, seed_dim: int = 256) -> None:
        super().__init__()
        self.num_classes, self.num_heading_bins = num_classes, num_heading_bins
        self.num_size_clusters = int(mean_sizes.shape[0])
        self.register_buffer("mean_sizes", torch.as_tensor(mean_sizes, dtype=torch.float32).clone())
        self.vote_aggregation = SetAbstraction(num_proposals, radius, nsample, seed_dim, (128, 128, 128))
        out = 2 + 3 + 2 * num_heading_bins + 4 * self.num_size_clusters + num_classes
        self.head = _mlp([128, 128, 128, out])

    def forward(self, vote_xyz: Tensor, vote_features: Tensor) -> dict[str, Tensor]:
        centres, features, inds = self.vote_aggregation(vote_xyz, vote_features)
        raw = _rows(self.head, features)
        nh, ns = self.num_heading_bins, self.num_size_clusters
        parts = torch.split(raw, [2, 3, nh, nh, ns, 3 * ns, self.num_classes], dim=-1)
        objectness, offset, heading_scores, heading_norm, size_scores, size_norm, sem = parts
        size_norm = size_norm.reshape(*size_norm.shape[:-1], ns, 3)
        return {
            "aggregated_xyz": centres,
            "aggregated_inds": inds,
            "objectness_scores": objectness,
            "center": centres + offset,
            "heading_scores": heading_scores,
            "heading_residuals_normalized": heading_norm,
            "heading_residuals": heading_norm * (math.pi / nh),
            "size_scores": size_scores,
            "size_residuals_normalized": size_norm,
            "size_residuals": size_norm * self.mean_sizes,
            "sem_cls_scores": sem,
        }


class VoteNet(nn.Module):
    """Backbone → voting → proposals; ``forward(points)`` returns the seeds, votes and proposal predictions."""

    def __init__(self, backbone: nn.Module, num_classes: int, num_heading_bins: int, mean_sizes: Tensor | Sequence,
                 num_proposals: int = 256, radius: float = 0.3, nsample: int = 16) -> None:
        super().__init__()
        mean_sizes = torch.as_tensor(mean_sizes, dtype=torch.float32)
        if mean_sizes.ndim != 2 or mean_sizes.shape[1] != 3:
            raise ValueError(f"mean_sizes must be (size clusters, 3), got {tuple(mean_sizes.shape)}")
        self.backbone = backbone
        seed_dim = int(backbone.out_dim)
        self.voting = VotingModule(seed_dim)
        self.proposal = ProposalModule(num_classes, num_heading_bins, mean_sizes, num_proposals, radius, nsample,
                                       seed_dim)

    def forward(self, points: Tensor) -> dict[str, Tensor]:
        seeds = self.backbone(points)
        vote_xyz, vote_features = self.voting(seeds.xyz, seeds.features)
        out = self.proposal(vote_xyz, vote_features)
        out.update(seed_xyz=seeds.xyz, seed_inds=seeds.indices, vote_xyz=vote_xyz)
        return out
