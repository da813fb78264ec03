"""Losses shared by the classification and segmentation recipes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def smoothed_cross_entropy(logits: Tensor, target: Tensor, smoothing: float) -> Tensor:
    """Cross-entropy against ``onehot*(1-eps) + (1-onehot)*eps/(C-1)``, the DGCNN recipes' smoothing.

    This spreads eps over the C-1 wrong classes; ``F.cross_entropy(label_smoothing=eps)`` spreads it
    over all C classes, a slightly different target, so the recipes' form is written out here.
    """
    if smoothing == 0.0:
        return F.cross_entropy(logits, target)
    num_classes = logits.shape[-1]
    log_prob = F.log_softmax(logits, dim=-1)
    true = log_prob.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    rest = log_prob.sum(-1) - true
    return -((1.0 - smoothing) * true + smoothing / (num_classes - 1) * rest).mean()


def orthogonality_penalty(transform: Tensor, reduction: str = "sum") -> Tensor:
    """PointNet feature-transform regulariser ||T T^T - I||_F^2 / 2 per shape, summed (original) or averaged."""
    eye = torch.eye(transform.shape[-1], device=transform.device, dtype=transform.dtype)
    per_shape = (transform @ transform.transpose(1, 2) - eye).pow(2).sum(dim=(1, 2)) / 2
    if reduction == "sum":
        return per_shape.sum()
    if reduction == "mean":
        return per_shape.mean()
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
