"""Projection heads of the contrastive / distillation methods (MVR spec §4), channels-last.

Both heads are ``Linear → BN → ReLU → Linear``. ``PointProjectionHead`` is the original's per-point
``Conv1d(D, 512, 1) → BN → ReLU → Conv1d(512, 128, 1)``; on a channels-last (rows, D) matrix a 1×1
Conv1d is a Linear, and BatchNorm1d of (rows, C) takes its statistics over all rows, exactly as
BatchNorm1d of (B, C, N) does over B·N. ``GlobalProjectionHead`` is the original's
``Linear(D, 512, bias=False) → BN → ReLU → Linear(512, 128)`` (a bias before BN is redundant).
"""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """``Linear(in_dim, hidden) → BN → ReLU → Linear(hidden, out_dim)`` on (..., in_dim) features.

    Leading dimensions are flattened into rows for the BatchNorm, so (B, N, D) point features are
    normalised with statistics over all B·N points.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, hidden_bias: bool = True) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=hidden_bias),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        return self.mlp(x.reshape(-1, x.shape[-1])).view(*lead, self.out_dim)


class PointProjectionHead(ProjectionHead):
    """Per-point head (original ``point_project``: 1×1 Conv1d D→512, BN, ReLU, 1×1 Conv1d 512→128)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, hidden_bias=True)


class GlobalProjectionHead(ProjectionHead):
    """Global head (original ``global_project``: Linear D→512 without bias, BN, ReLU, Linear 512→128)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, hidden_bias=False)


def bilinear_at_pixels(feats: Tensor, view: Tensor, row: Tensor, col: Tensor, grid_hw: tuple[int, int]) -> Tensor:
    """``feats`` (V, C, h, w) bilinearly upsampled to ``grid_hw`` (align_corners=True), read at pixels.

    Equals ``F.interpolate(feats, grid_hw, mode="bilinear", align_corners=True)[view, :, row, col]`` but
    reads only the 4 neighbours of each requested pixel instead of building the upsampled maps.
    Returns (M, C) for M = len(view).
    """
    num_views, channels, h, w = feats.shape
    rows = feats.permute(0, 2, 3, 1).reshape(num_views * h * w, channels)
    out_h, out_w = grid_hw
    scale_y = (h - 1) / (out_h - 1) if out_h > 1 else 0.0
    scale_x = (w - 1) / (out_w - 1) if out_w > 1 else 0.0
    src_y = row.to(feats.dtype) * scale_y
    src_x = col.to(feats.dtype) * scale_x
    y0 = src_y.floor().long().clamp_(0, h - 1)
    x0 = src_x.floor().long().clamp_(0, w - 1)
    y1 = (y0 + 1).clamp_(max=h - 1)
    x1 = (x0 + 1).clamp_(max=w - 1)
    ly = (src_y - y0.to(feats.dtype)).unsqueeze(1)
    lx = (src_x - x0.to(feats.dtype)).unsqueeze(1)
    base = view.long() * (h * w)

    def read(y: Tensor, x: Tensor) -> Tensor:
        return rows.index_select(0, base + y * w + x)

    top = read(y0, x0) * (1 - lx) + read(y0, x1) * lx
    bottom = read(y1, x0) * (1 - lx) + read(y1, x1) * lx
    return top * (1 - ly) + bottom * ly


class PixelHead(nn.Module):
    """Trainable 1×1 conv on image features, read at pixels of the image grid (MVR ``convup``).

    The original applies ``Conv2d(C, 128, 1)`` to the (V, C, h, w) trunk output, upsamples the result
    bilinearly to the image size (align_corners=True) and indexes the paired pixels. A 1×1 conv is
    linear per location and bilinear weights sum to one, so projecting and interpolating commute; this
    head does whichever order is cheaper: project the small grid first when it has fewer cells than
    there are pixels to read (4×4 maps of 32×32 views), else read the pixels first and project those.
    The weight keeps the original's Conv2d shape (out, C, 1, 1).
    """

    def __init__(self, in_dim: int, out_dim: int = 128, order: str = "auto") -> None:
        super().__init__()
        if order not in ("auto", "project_first", "sample_first"):
            raise ValueError(f"order must be auto, project_first or sample_first, got {order!r}")
        self.order = order
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, feats: Tensor, view: Tensor, row: Tensor, col: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        """``feats`` (V, C, h, w); ``view``, ``row``, ``col`` (M,) -> (M, out_dim) pixel embeddings."""
        num_views, _, h, w = feats.shape
        project_first = self.order == "project_first" or (
            self.order == "auto" and num_views * h * w <= view.numel())
        weight = self.conv.weight.flatten(1)
        if project_first:
            return bilinear_at_pixels(self.conv(feats), view, row, col, grid_hw)
        return nn.functional.linear(bilinear_at_pixels(feats, view, row, col, grid_hw), weight, self.conv.bias)
