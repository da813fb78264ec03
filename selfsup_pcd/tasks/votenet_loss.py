"""VoteNet's training loss (``downstream.md`` §6): ``10 · (vote + 0.5 · objectness + box + 0.1 · sem)`` with
``box = centre + 0.1 · heading_cls + heading_reg + 0.1 · size_cls + size_reg``.

* vote: for each seed on an object, the smallest L1 distance between its vote and the (up to three) ground-truth
  votes of its point, averaged over those seeds;
* objectness: a proposal is positive when its cluster centre is within ``near`` (0.3 m) of a ground-truth
  centre, negative beyond ``far`` (0.6 m), ignored in between; cross-entropy weighted 0.2 / 0.8
  (negative / positive), averaged over the labelled proposals;
* centre: squared distance from each positive proposal's centre to its nearest ground-truth centre plus, for
  each ground-truth box, the squared distance to the nearest predicted centre (a two-sided Chamfer term);
* heading / size: cross-entropy of the bin / cluster of the assigned box (nearest centre) and a Huber loss
  (δ = 1) of the normalised residual at the true bin / cluster, over positive proposals;
* sem: cross-entropy of the assigned box's class over positive proposals.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

OBJECTNESS_WEIGHTS = (0.2, 0.8)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the masked entries; entries outside the mask may be inf (no ground truth) and never count."""
    mask = mask.to(values.dtype)
    return torch.where(mask > 0, values, torch.zeros_like(values)).mul(mask).sum() / (mask.sum() + 1e-6)


def _huber(x: Tensor, delta: float = 1.0) -> Tensor:
    return F.huber_loss(x, torch.zeros_like(x), reduction="none", delta=delta)


def vote_loss(pred: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
    inds = pred["seed_inds"].long()
    gt_votes = batch["vote_label"].gather(1, inds.unsqueeze(-1).expand(-1, -1, 9)).view(*inds.shape, 3, 3)
    mask = batch["vote_label_mask"].gather(1, inds)
    offset = (pred["vote_xyz"] - pred["seed_xyz"]).unsqueeze(2)  # (B, S, 1, 3)
    dist = (offset - gt_votes).abs().sum(-1).min(-1).values  # best of the three ground-truth votes
    return _masked_mean(dist, mask)


def assign_objects(centres: Tensor, gt_centres: Tensor, gt_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(distance of each proposal centre to its nearest real ground-truth centre (B, K), that box's index)."""
    dist = torch.cdist(centres, gt_centres)  # (B, K, M)
    dist = dist.masked_fill(gt_mask.unsqueeze(1) <= 0, float("inf"))
    nearest, index = dist.min(-1)
    return nearest, index


def votenet_loss(pred: dict[str, Tensor], batch: dict[str, Tensor], num_heading_bins: int, mean_sizes: Tensor,
                 near: float = 0.3, far: float = 0.6) -> dict[str, Tensor]:
    """Every term and the total ``loss`` (see the module docstring); ``mean_sizes`` (NS, 3) the size clusters."""
    gt_mask = batch["box_label_mask"].float()
    gt_centres = batch["center_label"]
    dist, assigned = assign_objects(pred["aggregated_xyz"], gt_centres, gt_mask)
    positive = (dist < near).float()
    labelled = ((dist < near) | (dist > far)).float()
    weights = torch.tensor(OBJECTNESS_WEIGHTS, device=dist.device, dtype=pred["objectness_scores"].dtype)
    objectness_ce = F.cross_entropy(pred["objectness_scores"].transpose(1, 2), positive.long(), weight=weights,
                                    reduction="none")
    terms = {"vote_loss": vote_loss(pred, batch), "objectness_loss": _masked_mean(objectness_ce, labelled)}

    def pick(label: Tensor) -> Tensor:  # the assigned box's label for every proposal
        return label.gather(1, assigned.view(*assigned.shape, *([1] * (label.ndim - 2))).expand(
            *assigned.shape, *label.shape[2:]))

    # centre: two-sided nearest squared distance
    sq = torch.cdist(pred["center"], gt_centres).pow(2)
    to_gt = sq.masked_fill(gt_mask.unsqueeze(1) <= 0, float("inf")).min(-1).values
    to_pred = sq.min(1).values
    terms["center_loss"] = _masked_mean(to_gt, positive) + _masked_mean(to_pred, gt_mask)

    heading_cls = pick(batch["heading_class_label"])
    terms["heading_cls_loss"] = _masked_mean(
        F.cross_entropy(pred["heading_scores"].transpose(1, 2), heading_cls, reduction="none"), positive)
    heading_target = pick(batch["heading_residual_label"]) / (math.pi / num_heading_bins)
    heading_pred = pred["heading_residuals_normalized"].gather(-1, heading_cls.unsqueeze(-1)).squeeze(-1)
    terms["heading_reg_loss"] = _masked_mean(_huber(heading_pred - heading_target), positive)

    size_cls = pick(batch["size_class_label"])
    terms["size_cls_loss"] = _masked_mean(
        F.cross_entropy(pred["size_scores"].transpose(1, 2), size_cls, reduction="none"), positive)
    index = size_cls.view(*size_cls.shape, 1, 1).expand(*size_cls.shape, 1, 3)
    size_pred = pred["size_residuals_normalized"].gather(2, index).squeeze(2)
    size_target = pick(batch["size_residual_label"]) / mean_sizes.to(size_pred)[size_cls]
    terms["size_reg_loss"] = _masked_mean(_huber(size_pred - size_target).mean(-1), positive)

    terms["sem_cls_loss"] = _masked_mean(
        F.cross_entropy(pred["sem_cls_scores"].transpose(1, 2), pick(batch["sem_cls_label"]), reduction="none"),
        positive)
    box = (terms["center_loss"] + 0.1 * terms["heading_cls_loss"] + terms["heading_reg_loss"]
           + 0.1 * terms["size_cls_loss"] + terms["size_reg_loss"])
    terms["box_loss"] = box
    terms["loss"] = 10.0 * (terms["vote_loss"] + 0.5 * terms["objectness_loss"] + box + 0.1 * terms["sem_cls_loss"])
    terms["positive_ratio"] = positive.mean().detach()
    return terms
