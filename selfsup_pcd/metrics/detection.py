"""3D detection metrics as VoteNet evaluates them: upright-box IoU, 3D NMS, per-class VOC AP, mAP@0.25 / @0.5.

Boxes are ``(cx, cy, cz, dx, dy, dz, yaw)`` (full sizes, counter-clockwise yaw; ``selfsup_pcd.data.boxes``).

* **IoU** of two upright boxes = area of the intersection of their footprints (convex polygons, clipped
  exactly) × the overlap of their z ranges, over the union of the volumes. Pairs of boxes whose yaws are both
  multiples of π/2 take an axis-aligned fast path (ScanNet's boxes are all axis-aligned).
* **NMS** (``nms_3d``): greedy in score order; a box suppresses the later ones whose IoU with it exceeds
  ``iou_threshold`` (0.25 in VoteNet); ``per_class`` only among boxes of the same class (VoteNet's evaluation
  setting). ``select_detections`` is VoteNet's post-processing of the proposals (NMS on objectness, then one
  box per class with score objectness × class probability, or one per proposal), kept where objectness ≥
  ``conf_threshold`` (0.05). VoteNet also drops proposals with no input point inside; that needs the
  points and is left to the caller.
* **AP** (VOC, as VoteNet's ``eval_det``; written from its description): per class, detections of all
  samples sorted by confidence; each is a true positive when the ground-truth box of its sample with the
  highest IoU has IoU ≥ the threshold and no earlier detection took it, a false positive otherwise (also
  when that best box is taken, even if another one overlaps enough: VOC's rule). Precision/recall over the
  ranking, AP = area under the precision envelope with all points (``use_07_metric=False``). mAP = mean over
  the classes that occur in the ground truth (a class with ground truth but no detection has AP 0; classes
  only detected are left out). VoteNet counts a match at IoU > threshold; here ≥ (the issue's wording): the
  two differ only at exact equality.

Matching only looks at the boxes of a detection's own sample, and, within a sample, at higher-scored
detections, so it is done per sample at ``update`` time: ``DetectionMAP`` keeps per detection its class, score
and a true-positive flag per threshold, and per class the number of ground-truth boxes. Those are list and sum
states, which torchmetrics gathers over DDP processes at ``compute``, so the metric is DDP-safe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

_QUARTER = math.pi / 2
_MAX_VERTS = 8  # two convex quadrilaterals intersect in at most 8 vertices


# -- IoU --------------------------------------------------------------------------------------------------
def _footprint(boxes: Tensor) -> Tensor:
    """(P, 4, 2) counter-clockwise footprint corners."""
    signs = boxes.new_tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    local = signs * boxes[:, None, 3:5] / 2
    c, s = torch.cos(boxes[:, 6:7]), torch.sin(boxes[:, 6:7])
    x = local[..., 0] * c - local[..., 1] * s
    y = local[..., 0] * s + local[..., 1] * c
    return torch.stack([x, y], dim=-1) + boxes[:, None, :2]


def _clip(poly: Tensor, count: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """One Sutherland-Hodgman step, batched: keep the part of each polygon left of the directed line a -> b."""
    slots = poly.shape[1]
    idx = torch.arange(slots, device=poly.device)
    valid = idx[None] < count[:, None]
    nxt_idx = torch.where(idx[None] + 1 < count[:, None], idx[None] + 1, torch.zeros_like(idx[None]))
    nxt = torch.gather(poly, 1, nxt_idx[..., None].expand(-1, -1, 2))
    edge = (b - a)[:, None]

    def side(p: Tensor) -> Tensor:
        return edge[..., 0] * (p[..., 1] - a[:, None, 1]) - edge[..., 1] * (p[..., 0] - a[:, None, 0])

    d_cur, d_nxt = side(poly), side(nxt)
    in_cur, in_nxt = d_cur >= 0, d_nxt >= 0
    keep = valid & in_cur
    cross = valid & (in_cur != in_nxt)
    t = (d_cur / torch.where(cross, d_cur - d_nxt, torch.ones_like(d_cur)))[..., None]
    hit = poly + t * (nxt - poly)
    out = torch.stack([poly, hit], dim=2).reshape(len(poly), 2 * slots, 2)
    mask = torch.stack([keep, cross], dim=2).reshape(len(poly), 2 * slots)
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :_MAX_VERTS]
    out = torch.gather(out, 1, order[..., None].expand(-1, -1, 2))
    return out, mask.sum(1).clamp(max=_MAX_VERTS)


def _polygon_area(poly: Tensor, count: Tensor) -> Tensor:
    """Shoelace area of polygons padded with their first vertex."""
    idx = torch.arange(poly.shape[1], device=poly.device)
    poly = torch.where((idx[None] < count[:, None])[..., None], poly, poly[:, :1])
    nxt = torch.roll(poly, -1, dims=1)
    area = 0.5 * (poly[..., 0] * nxt[..., 1] - poly[..., 1] * nxt[..., 0]).sum(1)
    return torch.where(count >= 3, area.abs(), torch.zeros_like(area))


def _footprint_intersection(a: Tensor, b: Tensor) -> Tensor:
    """(P,) area of the intersection of the footprints of box pairs a[i], b[i] (any yaws)."""
    poly = _footprint(a)
    count = torch.full((len(a),), 4, dtype=torch.long, device=a.device)
    clip = _footprint(b)
    for k in range(4):
        poly, count = _clip(poly, count, clip[:, k], clip[:, (k + 1) % 4])
    return _polygon_area(poly, count)


def _quarter_turns(yaw: Tensor, tol: float) -> tuple[Tensor, Tensor]:
    """(is a multiple of π/2, odd multiple) per yaw."""
    turns = yaw / _QUARTER
    nearest = torch.round(turns)
    return (turns - nearest).abs() < tol, nearest.long() % 2 == 1


def box_iou_3d(a: Tensor | np.ndarray, b: Tensor | np.ndarray, aligned_tol: float = 1e-9) -> Tensor:
    """IoU of upright boxes ``a`` and ``b`` (..., 7), broadcast against each other; float64."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    a, b = torch.broadcast_tensors(a, b)
    shape = a.shape[:-1]
    a, b = a.reshape(-1, 7), b.reshape(-1, 7)
    inter_area = torch.zeros(len(a), dtype=torch.float64, device=a.device)
    a_ok, a_odd = _quarter_turns(a[:, 6], aligned_tol)
    b_ok, b_odd = _quarter_turns(b[:, 6], aligned_tol)
    fast = a_ok & b_ok
    if fast.any():
        def extents(box: Tensor, odd: Tensor) -> Tensor:
            return torch.where(odd[:, None], box[:, [4, 3]], box[:, [3, 4]])

        ea, eb = extents(a[fast], a_odd[fast]), extents(b[fast], b_odd[fast])
        lo = torch.maximum(a[fast, :2] - ea / 2, b[fast, :2] - eb / 2)
        hi = torch.minimum(a[fast, :2] + ea / 2, b[fast, :2] + eb / 2)
        inter_area[fast] = (hi - lo).clamp(min=0).prod(1)
    z_lo = torch.maximum(a[:, 2] - a[:, 5] / 2, b[:, 2] - b[:, 5] / 2)
    z_hi = torch.minimum(a[:, 2] + a[:, 5] / 2, b[:, 2] + b[:, 5] / 2)
    # polygons only for pairs that can meet: z ranges overlap and the footprints' circumcircles intersect
    reach = (a[:, 3:5].norm(dim=1) + b[:, 3:5].norm(dim=1)) / 2
    slow = ~fast & (z_hi > z_lo) & ((a[:, :2] - b[:, :2]).norm(dim=1) < reach)
    if slow.any():
        inter_area[slow] = _footprint_intersection(a[slow], b[slow])
    inter = inter_area * (z_hi - z_lo).clamp(min=0)
    union = a[:, 3:6].prod(1) + b[:, 3:6].prod(1) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
    return iou.reshape(shape)


def box_iou_3d_pairwise(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor:
    """(N, M) IoU of every box of ``a`` (N, 7) with every box of ``b`` (M, 7); float64."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    a, b = a.reshape(-1, 7), b.reshape(-1, 7)
    return box_iou_3d(a[:, None, :], b[None, :, :])


# -- NMS ------------------------------------------------------------------------------------------------
def nms_3d(boxes: Tensor, scores: Tensor, classes: Tensor | None = None, iou_threshold: float = 0.25,
           per_class: bool = True) -> Tensor:
    """Indices (int64, descending score) of the boxes greedy 3D NMS keeps; see the module docstring."""
    boxes = torch.as_tensor(boxes).reshape(-1, 7)
    scores = torch.as_tensor(scores).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    pairs = torch.triu_indices(len(order), len(order), offset=1, device=boxes.device)
    if per_class:
        if classes is None:
            raise ValueError("per_class NMS needs classes")
        cls = torch.as_tensor(classes).reshape(-1)[order].to(boxes.device)
        pairs = pairs[:, cls[pairs[0]] == cls[pairs[1]]]
    ranked = boxes[order]
    over = box_iou_3d(ranked[pairs[0]], ranked[pairs[1]]) > iou_threshold
    suppress = np.zeros((len(order), len(order)), dtype=bool)
    i, j = pairs[:, over.to(pairs.device)].cpu().numpy()
    suppress[i, j] = True
    alive = np.ones(len(order), dtype=bool)
    for i in range(len(order)):
        if alive[i]:
            alive[i + 1:] &= ~suppress[i, i + 1:]
    return order[torch.from_numpy(alive).to(order.device)]


def select_detections(boxes: Tensor, objectness: Tensor, sem_probs: Tensor, nms_iou: float = 0.25,
                      per_class_nms: bool = True, per_class_proposal: bool = True, conf_threshold: float = 0.05,
                      valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """VoteNet's post-processing of one sample's proposals -> (boxes (D, 7), scores (D,), classes (D,)).

    ``boxes`` (P, 7), ``objectness`` (P,) probabilities, ``sem_probs`` (P, C) class probabilities; ``valid``
    (P,) bool, e.g. proposals with points inside. NMS scores proposals by objectness (per class: by their arg-max
    class); a kept proposal with objectness ≥ ``conf_threshold`` yields one box per class scored objectness ×
    probability (``per_class_proposal``) or one box of its arg-max class scored objectness.
    """
    sem_probs = torch.as_tensor(sem_probs)
    objectness = torch.as_tensor(objectness).reshape(-1)
    boxes = torch.as_tensor(boxes).reshape(-1, 7)
    candidates = torch.arange(len(boxes), device=boxes.device)
    if valid is not None:
        candidates = candidates[torch.as_tensor(valid, device=boxes.device).reshape(-1)]
    sem_cls = sem_probs.argmax(-1)
    kept = candidates[nms_3d(boxes[candidates], objectness[candidates], sem_cls[candidates], nms_iou,
                             per_class_nms)]
    kept = kept[objectness[kept] >= conf_threshold]
    if not per_class_proposal:
        return boxes[kept], objectness[kept], sem_cls[kept]
    num_classes = sem_probs.shape[-1]
    classes = torch.arange(num_classes, device=boxes.device).repeat(len(kept))
    rows = kept.repeat_interleave(num_classes)
    return boxes[rows], (objectness[rows] * sem_probs[rows, classes]), classes


# -- AP -------------------------------------------------------------------------------------------------
def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC AP with all points: area under the monotone (right-to-left maximum) envelope of precision."""
    rec = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    prec = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    steps = np.flatnonzero(rec[1:] != rec[:-1])
    return float(np.sum((rec[steps + 1] - rec[steps]) * prec[steps + 1]))


def match_detections(det_boxes: Tensor, det_scores: Tensor, gt_boxes: Tensor,
                     thresholds: Sequence[float]) -> Tensor:
    """(D, T) bool: detection d (all of one class in one sample) is a true positive at threshold t (VOC rule)."""
    flags = torch.zeros(len(det_boxes), len(thresholds), dtype=torch.bool)
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return flags
    order = torch.sort(torch.as_tensor(det_scores).cpu(), descending=True, stable=True).indices
    iou = box_iou_3d_pairwise(det_boxes, gt_boxes).cpu()[order]
    best_iou, best = iou.max(dim=1)
    for t, thr in enumerate(thresholds):
        taken = np.zeros(len(gt_boxes), dtype=bool)
        for rank, d in enumerate(order.tolist()):
            j = int(best[rank])
            if float(best_iou[rank]) >= thr and not taken[j]:
                taken[j] = True
                flags[d, t] = True
    return flags


def _as_list(x: Tensor | Sequence[Tensor], mask: Tensor | None) -> list[Tensor]:
    items = list(x) if isinstance(x, torch.Tensor) else [torch.as_tensor(v) for v in x]
    if mask is not None:
        items = [v[torch.as_tensor(m, device=v.device).bool()] for v, m in zip(items, mask)]
    return items


class DetectionMAP(Metric):
    """Per-class AP and mAP at IoU thresholds (0.25, 0.5), VoteNet's ``eval_det``; see the module docstring.

    ``update`` takes a batch as padded tensors, pred ``(B, P, 7)``, ``(B, P)``, ``(B, P)`` with an optional
    ``pred_mask`` (B, P) and gt ``(B, M, 7)``, ``(B, M)`` with ``gt_mask`` (B, M) (the datamodules' ``gt_boxes``,
    ``sem_cls_label``, ``box_label_mask``), or as lists of per-sample tensors. ``compute`` returns
    ``mAP@<t>`` and ``AR@<t>`` (mean recall at the end of the ranking) per threshold, and ``AP@<t>/<class>``
    for the classes in the ground truth.
    """

    full_state_update = False

    def __init__(self, num_classes: int, iou_thresholds: Sequence[float] = (0.25, 0.5),
                 class_names: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.iou_thresholds = [float(t) for t in iou_thresholds]
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        self.add_state("det_scores", default=[], dist_reduce_fx="cat")
        self.add_state("det_classes", default=[], dist_reduce_fx="cat")
        self.add_state("det_tp", default=[], dist_reduce_fx="cat")
        self.add_state("gt_count", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred_boxes: Tensor | Sequence[Tensor], pred_scores: Tensor | Sequence[Tensor],
               pred_classes: Tensor | Sequence[Tensor], gt_boxes: Tensor | Sequence[Tensor],
               gt_classes: Tensor | Sequence[Tensor], pred_mask: Tensor | None = None,
               gt_mask: Tensor | None = None) -> None:
        pb, ps, pc = (_as_list(x, pred_mask) for x in (pred_boxes, pred_scores, pred_classes))
        gb, gc = (_as_list(x, gt_mask) for x in (gt_boxes, gt_classes))
        if not len(pb) == len(ps) == len(pc) == len(gb) == len(gc):
            raise ValueError("predictions and ground truth hold different numbers of samples")
        scores, classes, flags = [], [], []
        for boxes, score, cls, gboxes, gcls in zip(pb, ps, pc, gb, gc):
            boxes, gboxes = boxes.detach().reshape(-1, 7).cpu(), gboxes.detach().reshape(-1, 7).cpu()
            score = score.detach().reshape(-1).cpu()
            cls, gcls = cls.reshape(-1).long().cpu(), gcls.reshape(-1).long().cpu()
            if len(boxes) != len(score) or len(boxes) != len(cls) or len(gboxes) != len(gcls):
                raise ValueError(f"a sample has {len(boxes)} boxes, {len(score)} scores, {len(cls)} classes "
                                 f"and {len(gboxes)} ground-truth boxes with {len(gcls)} classes")
            if (cls < 0).any() or (cls >= self.num_classes).any() or (gcls < 0).any() or \
                    (gcls >= self.num_classes).any():
                raise ValueError(f"class ids must be in 0..{self.num_classes - 1}")
            self.gt_count += torch.bincount(gcls, minlength=self.num_classes).to(self.gt_count.device)
            tp = torch.zeros(len(boxes), len(self.iou_thresholds), dtype=torch.bool)
            for c in torch.unique(cls).tolist():
                d, g = cls == c, gcls == c
                tp[d] = match_detections(boxes[d], score[d], gboxes[g], self.iou_thresholds)
            scores.append(score.double())
            classes.append(cls)
            flags.append(tp)
        device = self.gt_count.device
        # one (possibly empty) tensor per update keeps every process's list non-empty for the DDP gather
        self.det_scores.append(torch.cat(scores).to(device) if scores else torch.zeros(0, dtype=torch.float64,
                                                                                      device=device))
        self.det_classes.append(torch.cat(classes).to(device) if classes else torch.zeros(0, dtype=torch.long,
                                                                                         device=device))
        self.det_tp.append((torch.cat(flags) if flags else torch.zeros(0, len(self.iou_thresholds),
                                                                        dtype=torch.bool)).to(device))

    @staticmethod
    def _cat(state: list[Tensor] | Tensor) -> Tensor | None:
        if isinstance(state, torch.Tensor):
            return state
        return torch.cat(state) if state else None

    def per_class_ap(self) -> dict[float, dict[int, tuple[float, float]]]:
        """{threshold: {class: (AP, final recall)}} over the classes present in the ground truth."""
        scores, classes, tp = self._cat(self.det_scores), self._cat(self.det_classes), self._cat(self.det_tp)
        if scores is None:
            scores, classes = torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
            tp = torch.zeros(0, len(self.iou_thresholds), dtype=torch.bool)
        scores, classes = scores.cpu().numpy(), classes.cpu().numpy()
        tp = tp.cpu().numpy().reshape(-1, len(self.iou_thresholds))
        npos = self.gt_count.cpu().numpy()
        out: dict[float, dict[int, tuple[float, float]]] = {t: {} for t in self.iou_thresholds}
        for c in np.flatnonzero(npos > 0):
            mine = np.flatnonzero(classes == c)
            mine = mine[np.argsort(-scores[mine], kind="stable")]
            for t, thr in enumerate(self.iou_thresholds):
                hits = tp[mine, t].astype(np.float64)
                tps, fps = np.cumsum(hits), np.cumsum(1.0 - hits)
                recall = tps / npos[c]
                precision = tps / np.maximum(tps + fps, np.finfo(np.float64).eps)
                out[thr][int(c)] = (voc_ap(recall, precision), float(recall[-1]) if len(recall) else 0.0)
        return out

    def compute(self) -> dict[str, Tensor]:
        results: dict[str, Tensor] = {}
        for thr, per_class in self.per_class_ap().items():
            aps = [ap for ap, _ in per_class.values()]
            recalls = [r for _, r in per_class.values()]
            results[f"mAP@{thr:g}"] = torch.tensor(float(np.mean(aps)) if aps else float("nan"))
            results[f"AR@{thr:g}"] = torch.tensor(float(np.mean(recalls)) if recalls else float("nan"))
            for c, (ap, _) in per_class.items():
                results[f"AP@{thr:g}/{self.class_names[c]}"] = torch.tensor(ap)
        return results
