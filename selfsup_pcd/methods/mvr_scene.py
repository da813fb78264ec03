"""Scene-level MVR: the MVR objectives with a voxel student (SR-UNet) on RGB-D frame pairs (issue #6 item 7).

The views are two real colour frames instead of renders (``data.scannet_frame_views``), so the teacher runs
online on the batch's views (``teacher.online: true``). The student is an ``SRUNet`` built without its final
layer (``out_channels: null``): its decoder features are the per-point features of point MVR, a voxel standing
for the points it holds. Losses as MVR (``methods.mvr``): NT-Xent between each paired voxel's projected
feature and its pixel's embedding, negatives within the frame pair; MSE between the projected max-pooled voxel
features of the cloud and the teacher's global embedding of the two views. The MVR paper gives none of the
design of this branch, so results are labelled "ours" (``multiview_rendering.md`` §4).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from selfsup_pcd.methods.mvr import MVR


def sample_max(features: Tensor, sample: Tensor, num_samples: int) -> Tensor:
    """Per-sample max over rows: ``features`` (M, C), ``sample`` (M,) sample index -> (num_samples, C)."""
    out = features.new_full((num_samples, features.shape[1]), float("-inf"))
    return out.scatter_reduce(0, sample.long().unsqueeze(1).expand_as(features), features, reduce="amax")


class SceneMVR(MVR):
    """MVR whose student reads a sparse voxel batch (``coords``, ``feats``) instead of dense points."""

    def student_embeddings(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, None]:
        coords, pairs = batch["coords"], batch["pairs"]
        batch_size = pairs.shape[0]
        voxel_feats = self.backbone(coords, batch["feats"])
        sample = coords[:, 0].long()
        counts = torch.bincount(sample, minlength=batch_size)
        offsets = torch.cumsum(counts, 0) - counts
        index = pairs[..., 3] + offsets.unsqueeze(1)  # (B, P) rows of the concatenated voxels
        if self.point_head_on == "all":
            point = self.point_project(voxel_feats)[index]
        else:
            point = self.point_project(voxel_feats[index])
        global_feat = self.global_project(sample_max(voxel_feats, sample, batch_size))
        return point, global_feat, None
