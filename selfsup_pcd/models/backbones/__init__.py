"""Point-cloud encoders (pure PyTorch, channels-last (B, N, C) input, xyz first)."""

from .base import BackboneOutput
from .dgcnn import DGCNNEncoder
from .dgcnn_semseg import DGCNNSemsegEncoder
from .pointnet import PointNetEncoder

__all__ = ["BackboneOutput", "DGCNNEncoder", "DGCNNSemsegEncoder", "PointNetEncoder"]
