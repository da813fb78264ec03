"""SR-UNet as a VoteNet seed backbone (selfsup / PointContrast's ``net.backbone=sparseconv``, ``downstream.md`` §6).

Each cloud is voxelised (``selfsup_pcd.data.voxelize``, cells of ``voxel_size``, features = the mean of the
points' extra channels, or a constant 1 without any), the SR-UNet runs without its final layer
(``SRUNet(out_channels=None)``), ``num_seeds`` seeds are chosen by farthest-point sampling on the *points*, and
each seed takes the decoder feature of its voxel (de-voxelisation through ``inverse``), projected to
``out_dim`` by a linear layer when the decoder width differs. Seed coordinates are the points' own, not voxel
centres. Output and input are those of :class:`~.pointnet2.PointNet2Backbone` (:class:`~.pointnet2.SeedFeatures`).

Voxelisation runs in NumPy on the CPU (as in the data loaders); only the network runs on the points' device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from selfsup_pcd.data.voxelize import collate_voxels, voxelize

from . import pointnet2_ops as ops
from .pointnet2 import SeedFeatures
from .srunet import SRUNet


class SRUNetSeeds(nn.Module):
    """Points (B, N, 3 + in_channels) -> :class:`SeedFeatures` (B, num_seeds, out_dim) from a sparse U-Net.

    ``unet`` is a plain :class:`SRUNet`, so SR-UNet checkpoints (e.g. MVR scene pretraining) load into it
    (``pointnet2.load_pretrained`` picks it through ``pretrained_submodules``); ``proj`` is new.
    """

    pretrained_submodules = ("unet",)

    def __init__(self, in_channels: int = 0, voxel_size: float = 0.025, num_seeds: int = 1024, out_dim: int = 256,
                 arch: str = "Res16UNet34C", conv1_kernel_size: int = 3, bn_momentum: float = 0.02) -> None:
        super().__init__()
        if in_channels < 0 or voxel_size <= 0 or num_seeds < 1:
            raise ValueError("need in_channels >= 0, voxel_size > 0 and num_seeds >= 1")
        self.in_channels, self.voxel_size = int(in_channels), float(voxel_size)
        self.num_seeds, self.out_dim = int(num_seeds), int(out_dim)
        self.point_dim = self.out_dim
        self.unet = SRUNet(max(self.in_channels, 1), None, arch, conv1_kernel_size, bn_momentum)
        width = self.unet.feature_dim
        self.proj: nn.Module = nn.Identity() if width == self.out_dim else nn.Linear(width, self.out_dim)

    def input_layer_keys(self) -> set[str]:
        return {"unet.net.conv0p1s1.kernel"}

    def voxelize(self, points: Tensor) -> dict[str, Tensor]:
        """The batch as SR-UNet input: ``coords`` (M, 4), ``feats`` (M, C), ``inverse`` (B·N,) into the voxels."""
        clouds = points.detach().float().cpu().numpy()
        samples = []
        for cloud in clouds:
            extra = cloud[:, 3:] if self.in_channels else np.ones((len(cloud), 1), np.float32)
            vox = voxelize(cloud[:, :3], extra, self.voxel_size)
            samples.append({"coords": vox.coords, "feats": vox.feats, "inverse": vox.inverse})
        batch = collate_voxels(samples)
        return {k: v.to(points.device) for k, v in batch.items() if k in ("coords", "feats", "inverse")}

    def forward(self, points: Tensor) -> SeedFeatures:
        if points.ndim != 3 or points.shape[-1] != 3 + self.in_channels:
            raise ValueError(f"expected points (B, N, {3 + self.in_channels}) = xyz + in_channels="
                             f"{self.in_channels} features, got {tuple(points.shape)}")
        batch, n, _ = points.shape
        if self.num_seeds > n:
            raise ValueError(f"cannot take {self.num_seeds} seeds from {n} points")
        vox = self.voxelize(points)
        voxel_feats = self.unet.features(vox["coords"], vox["feats"])  # (M, feature_dim)
        xyz = points[..., :3].contiguous()
        seeds = ops.furthest_point_sample(xyz, self.num_seeds)  # (B, S)
        offsets = torch.arange(0, batch * n, n, device=points.device).unsqueeze(1)
        seed_voxel = vox["inverse"][(seeds + offsets).view(-1)]
        features = self.proj(voxel_feats[seed_voxel]).view(batch, self.num_seeds, -1)
        return SeedFeatures(xyz=ops.gather_points(xyz, seeds), features=features, indices=seeds)
