"""Part-segmentation metrics (ShapeNetPart convention, downstream.md §4).

Every shape belongs to one category, and each category owns a set of part ids (ShapeNetPart: 16 categories,
50 parts, ids contiguous per category). Conventions, as in PointNet, PointNet++ and DGCNN:

* the prediction for a point is the argmax over the parts **of the shape's ground-truth category** only
  (:func:`restrict_to_category`); the category is an input of the network, so this is not cheating;
* the IoU of part p in one shape is |pred = p ∧ gt = p| / |pred = p ∨ gt = p|, and **1 when p occurs in
  neither the ground truth nor the prediction** (the shape simply has no such part and none was predicted);
* shape IoU = mean over the parts of its category; **instance mIoU** = mean over shapes; **class mIoU** =
  mean over the categories present of their mean shape IoU; per-category mIoU = that category's mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def part_mask(parts_per_category: Sequence[int]) -> Tensor:
    """(C, P) bool: mask[c, p] is True when part p belongs to category c (parts numbered in category order)."""
    counts = torch.as_tensor(list(parts_per_category), dtype=torch.long)
    if counts.numel() == 0 or bool((counts <= 0).any()):
        raise ValueError(f"every category needs at least one part, got {list(parts_per_category)}")
    owner = torch.repeat_interleave(torch.arange(len(counts)), counts)  # (P,) category of each part
    return owner.unsqueeze(0) == torch.arange(len(counts)).unsqueeze(1)


def restrict_to_category(logits: Tensor, category: Tensor, mask: Tensor) -> Tensor:
    """Predicted part (B, N) = argmax of ``logits`` (B, N, P) over the parts of each shape's ``category`` (B,)."""
    allowed = mask.to(logits.device)[category]  # (B, P)
    masked = logits.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    return masked.argmax(dim=-1)


def shape_ious(pred: Tensor, target: Tensor, category: Tensor, mask: Tensor) -> Tensor:
    """IoU (B,) of every shape: mean over its category's parts; a part absent from both counts 1."""
    batch, num_parts = pred.shape[0], mask.shape[1]
    if pred.shape != target.shape or pred.dim() != 2 or category.shape != (batch,):
        raise ValueError(f"need pred/target (B, N) and category (B,), got {pred.shape}, {target.shape}, "
                         f"{category.shape}")
    mask = mask.to(pred.device)
    offset = (torch.arange(batch, device=pred.device) * num_parts).unsqueeze(1)
    size = batch * num_parts
    pred_count = torch.bincount((pred + offset).flatten(), minlength=size)
    gt_count = torch.bincount((target + offset).flatten(), minlength=size)
    hit = pred == target
    inter = torch.bincount((target + offset)[hit], minlength=size)
    inter, union = inter.view(batch, num_parts).double(), (pred_count + gt_count).view(batch, num_parts).double()
    union = union - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    own = mask[category].double()  # (B, P)
    return (iou * own).sum(1) / own.sum(1)


class PartSegmentationIoU(Metric):
    """Accumulates shape IoUs per category (summed over processes in DDP); see the module docstring.

    ``update(logits_or_pred, target, category)``: logits (B, N, P) are restricted to the category's parts
    first; integer predictions (B, N) are used as they are. ``compute()`` returns a dict with
    ``instance_miou``, ``class_miou`` (both floats in [0, 1]) and ``per_category`` (C,) (NaN where a
    category never occurred).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, parts_per_category: Sequence[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("mask", part_mask(parts_per_category), persistent=False)
        num_categories = self.mask.shape[0]
        self.add_state("iou_sum", torch.zeros(num_categories, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_categories, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, category: Tensor) -> None:
        if pred.is_floating_point():
            pred = restrict_to_category(pred, category, self.mask)
        ious = shape_ious(pred, target, category, self.mask)
        self.iou_sum.index_add_(0, category, ious)
        self.count.index_add_(0, category, torch.ones_like(ious))

    def compute(self) -> dict[str, Tensor]:
        if self.count.sum() == 0:
            raise ValueError("PartSegmentationIoU.compute() called before any update")
        present = self.count > 0
        per_category = torch.full_like(self.iou_sum, float("nan"))
        per_category[present] = self.iou_sum[present] / self.count[present]
        return {
            "instance_miou": self.iou_sum.sum() / self.count.sum(),
            "class_miou": per_category[present].mean(),
            "per_category": per_category,
        }
