"""Segmentation metrics: part segmentation (ShapeNetPart convention, downstream.md §4) and semantic segmentation.

Every shape belongs to one category, and each category owns a set of part ids (ShapeNetPart: 16 categories,
50 parts, ids contiguous per category). Conventions, as in PointNet, PointNet++ and DGCNN:

* the prediction for a point is the argmax over the parts **of the shape's ground-truth category** only
  (:func:`restrict_to_category`); the category is an input of the network, so this is not cheating;
* the IoU of part p in one shape is |pred = p ∧ gt = p| / |pred = p ∨ gt = p|, and **1 when p occurs in
  neither the ground truth nor the prediction** (the shape simply has no such part and none was predicted);
* shape IoU = mean over the parts of its category; **instance mIoU** = mean over shapes; **class mIoU** =
  mean over the categories present of their mean shape IoU; per-category mIoU = that category's mean.

Semantic-segmentation metrics (S3DIS, ScanNet; downstream.md §5) come from one confusion matrix accumulated
over a whole evaluation set (``torchmetrics`` ``MulticlassConfusionMatrix`` with ``ignore_index``: points with
the ignore label are left out of every figure), as the original codes' per-class ΣI/ΣU over the test set
(:func:`semseg_scores`):

* IoU of class c = TP / (TP + FP + FN); **NaN when c occurs in neither the targets nor the predictions**
  (nothing to score); a class that is predicted but absent from the targets has IoU 0;
* **mIoU** = mean over the classes whose IoU is defined (not NaN); with every class present in the test set
  (the papers' case) this is the plain mean over all classes;
* **OA** = correct / scored points; **mAcc** = mean recall over the classes present in the targets.

The papers score the points of the blocks the network saw (block level, quirk 2); :class:`RoomVotes` turns the
blocks' predictions into one prediction per original point of each room (room level).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
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


@dataclass
class SemsegScores:
    """mIoU, OA, mAcc (floats in [0, 1]) and per-class IoU (C,) float64, NaN where undefined."""

    miou: float
    oa: float
    macc: float
    iou: Tensor


def semseg_scores(confusion: Tensor) -> SemsegScores:
    """Scores of a (C, C) confusion matrix (rows = targets, columns = predictions); see the module docstring."""
    cm = torch.as_tensor(confusion).double()
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"need a square confusion matrix, got shape {tuple(cm.shape)}")
    total = cm.sum()
    if total == 0:
        raise ValueError("empty confusion matrix: no scored points")
    tp = torch.diagonal(cm)
    support, predicted = cm.sum(dim=1), cm.sum(dim=0)
    union = support + predicted - tp
    iou = torch.full_like(tp, float("nan"))
    defined = union > 0
    iou[defined] = tp[defined] / union[defined]
    present = support > 0
    return SemsegScores(miou=float(iou[defined].mean()), oa=float(tp.sum() / total),
                        macc=float((tp[present] / support[present]).mean()), iou=iou)


class RoomVotes:
    """Room-level (whole-scene) prediction from overlapping blocks: every block point adds its class
    probabilities to the original point it was sampled from; a point's prediction is the argmax of its sum.

    Votes are kept on the host, one (P_room, C) float32 array per room touched (about 4·C bytes per original
    point). Points no block covered get no prediction and are left out of the confusion (``coverage`` < 1,
    e.g. in Lightning's sanity check or with ``limit_val_batches``).
    """

    def __init__(self, room_sizes: Sequence[int], num_classes: int) -> None:
        self.room_sizes = [int(s) for s in room_sizes]
        self.num_classes = num_classes
        self.votes: dict[int, Tensor] = {}

    def _room(self, room: int) -> Tensor:
        if room not in self.votes:
            if not 0 <= room < len(self.room_sizes):
                raise IndexError(f"room {room} outside the {len(self.room_sizes)} rooms of this split")
            self.votes[room] = torch.zeros(self.room_sizes[room], self.num_classes)
        return self.votes[room]

    def update(self, room: Tensor, point_index: Tensor, probs: Tensor) -> None:
        """``room`` (B,), ``point_index`` (B, N) indices into each room's points, ``probs`` (B, N, C)."""
        room, point_index = room.cpu(), point_index.cpu().long()
        probs = probs.detach().float().cpu()
        for r in room.unique().tolist():
            sel = room == r
            self._room(r).index_add_(0, point_index[sel].reshape(-1), probs[sel].reshape(-1, self.num_classes))

    def all_reduce(self, reduce: Callable[[Tensor], Tensor]) -> None:
        """Sums the votes over processes: ``reduce`` is a sum all-reduce, called once per room in room order."""
        for r in range(len(self.room_sizes)):
            self.votes[r] = reduce(self._room(r))

    def confusion(self, room_labels: Sequence[Tensor | np.ndarray], ignore_index: int) -> tuple[Tensor, float]:
        """(C, C) int64 confusion over the covered, labelled original points, and the covered fraction of all
        points of the split."""
        c = self.num_classes
        cm = torch.zeros(c * c, dtype=torch.long)
        covered = 0
        total = sum(len(labels) for labels in room_labels)
        for r, votes in self.votes.items():
            labels = torch.as_tensor(np.asarray(room_labels[r]), dtype=torch.long)
            if len(labels) != len(votes):
                raise ValueError(f"room {r}: {len(labels)} labels but {len(votes)} points were voted on")
            hit = votes.sum(dim=1) > 0
            covered += int(hit.sum())
            keep = hit & (labels != ignore_index)
            target, pred = labels[keep], votes[keep].argmax(dim=1)
            if target.numel() and (int(target.min()) < 0 or int(target.max()) >= c):
                raise ValueError(f"room {r}: labels outside [0, {c}) other than ignore_index {ignore_index}")
            cm += torch.bincount(target * c + pred, minlength=c * c)
        return cm.view(c, c), covered / max(total, 1)
