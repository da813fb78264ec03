"""3D detection metrics: upright-box IoU, 3D NMS, VoteNet's post-processing, VOC AP and the mAP accumulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup_pcd.metrics.detection import (
    DetectionMAP,
    box_iou_3d,
    box_iou_3d_pairwise,
    match_detections,
    nms_3d,
    select_detections,
    voc_ap,
)


def cube(x: float = 0.0, y: float = 0.0, z: float = 0.0, size: float = 1.0, yaw: float = 0.0) -> list[float]:
    return [x, y, z, size, size, size, yaw]


# -- IoU ------------------------------------------------------------------------------------------------------
def test_iou_of_known_boxes() -> None:
    a = torch.tensor(cube(), dtype=torch.float64)
    assert box_iou_3d(a, a).item() == pytest.approx(1.0)
    # shifted by half its length along x (or z): overlap 1/2, union 3/2
    assert box_iou_3d(a, torch.tensor(cube(x=0.5))).item() == pytest.approx(1 / 3)
    assert box_iou_3d(a, torch.tensor(cube(z=0.5))).item() == pytest.approx(1 / 3)
    assert box_iou_3d(a, torch.tensor(cube(x=1.5))).item() == 0.0
    assert box_iou_3d(a, torch.tensor(cube(x=0.2, y=0.2, z=1.5))).item() == 0.0  # footprints overlap, heights not
    # a unit square turned by 45° against the axis-aligned one: the diamond |x| + |y| <= √2/2 loses four corner
    # triangles of legs √2/2 - 1/2 outside |x|, |y| <= 1/2, together (√2 - 1)² = 3 - 2√2; overlap 2√2 - 2,
    # union 2 - (2√2 - 2) = 4 - 2√2, IoU (2√2 - 2) / (4 - 2√2) = 1/√2
    turned = torch.tensor(cube(yaw=math.pi / 4))
    assert box_iou_3d(a, turned).item() == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    # the same pair anywhere and at any common turn (general polygon path on both sides)
    both = torch.tensor([[3.0, -2.0, 1.0, 1.0, 1.0, 1.0, 0.3], [3.0, -2.0, 1.0, 1.0, 1.0, 1.0, 0.3 + math.pi / 4]])
    assert box_iou_3d(both[0], both[1]).item() == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    # a 2 x 1 box turned by 90° is the 1 x 2 box (axis-aligned fast path with swapped extents)
    long_x = torch.tensor([0.0, 0.0, 0.0, 2.0, 1.0, 1.0, math.pi / 2])
    long_y = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 1.0, 0.0])
    assert box_iou_3d(long_x, long_y).item() == pytest.approx(1.0)
    # the polygon path agrees with the fast path in the limit of a tiny turn
    nearly = torch.tensor([0.3, 0.1, 0.0, 2.0, 1.0, 1.0, 1e-7])
    assert box_iou_3d(nearly, long_y).item() == pytest.approx(box_iou_3d(nearly * torch.tensor([1.0] * 6 + [0.0]),
                                                                         long_y).item(), abs=1e-6)


def test_pairwise_iou_is_symmetric_and_matches_elementwise() -> None:
    rng = np.random.default_rng(0)
    boxes = np.column_stack([rng.uniform(0, 3, (12, 3)), rng.uniform(0.3, 1.5, (12, 3)), rng.uniform(-3, 3, 12)])
    boxes[::3, 6] = 0.0
    iou = box_iou_3d_pairwise(boxes, boxes)
    assert iou.shape == (12, 12) and torch.allclose(iou, iou.T, atol=1e-12)
    assert torch.allclose(iou.diagonal(), torch.ones(12, dtype=torch.float64))
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all() and (iou[~torch.eye(12, dtype=torch.bool)] > 0).any()
    assert iou[2, 7].item() == pytest.approx(box_iou_3d(boxes[2], boxes[7]).item())


# -- NMS ------------------------------------------------------------------------------------------------------
def test_nms_keeps_the_better_of_an_overlapping_pair_per_class() -> None:
    boxes = torch.tensor([cube(), cube(x=0.2), cube(x=5.0), cube(x=5.1)])  # pairs with IoU 2/3 and 9/11
    scores = torch.tensor([0.6, 0.9, 0.5, 0.4])
    assert nms_3d(boxes, scores, torch.tensor([0, 0, 1, 1])).tolist() == [1, 2]
    # different classes do not suppress each other per class, but do otherwise
    assert sorted(nms_3d(boxes, scores, torch.tensor([0, 1, 1, 2])).tolist()) == [0, 1, 2, 3]
    assert nms_3d(boxes, scores, per_class=False).tolist() == [1, 2]
    # a pair with IoU 1/3: suppressed at threshold 0.25, both kept at 0.34
    apart = torch.tensor([cube(), cube(x=0.5)])
    assert nms_3d(apart, torch.tensor([0.2, 0.8]), torch.tensor([0, 0]), iou_threshold=0.25).tolist() == [1]
    assert nms_3d(apart, torch.tensor([0.2, 0.8]), torch.tensor([0, 0]), iou_threshold=0.34).tolist() == [1, 0]
    assert nms_3d(torch.zeros(0, 7), torch.zeros(0), torch.zeros(0)).numel() == 0


def test_select_detections_per_class_proposals_and_confidence() -> None:
    boxes = torch.tensor([cube(), cube(x=0.1), cube(x=4.0), cube(x=8.0)])
    objectness = torch.tensor([0.9, 0.8, 0.04, 0.5])
    sem = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.5, 0.5], [0.2, 0.8]])
    out_boxes, scores, classes = select_detections(boxes, objectness, sem)
    # proposal 1 is suppressed by 0 (same arg-max class), 2 is below the 0.05 objectness threshold
    assert classes.tolist() == [0, 1, 0, 1]
    assert torch.allclose(scores, torch.tensor([0.63, 0.27, 0.10, 0.40]))
    assert torch.equal(out_boxes, boxes[[0, 0, 3, 3]])
    _, scores, classes = select_detections(boxes, objectness, sem, per_class_proposal=False, conf_threshold=0.01)
    assert classes.tolist() == [0, 1, 0] and torch.allclose(scores, torch.tensor([0.9, 0.5, 0.04]))
    _, _, classes = select_detections(boxes, objectness, sem, valid=torch.tensor([False, True, True, True]),
                                      per_class_proposal=False)
    assert classes.tolist() == [0, 1]  # without proposal 0, proposal 1 survives NMS


# -- AP -------------------------------------------------------------------------------------------------------
def test_voc_ap_is_the_area_under_the_precision_envelope() -> None:
    # ranking TP, FP, TP, FP with 3 ground-truth boxes: recall 1/3, 1/3, 2/3, 2/3; precision 1, 1/2, 2/3, 1/2;
    # envelope: 1 up to recall 1/3, 2/3 up to 2/3, 0 after: AP = 1/3 * 1 + 1/3 * 2/3 = 5/9
    assert voc_ap(np.array([1, 1, 2, 2]) / 3, np.array([1, 1 / 2, 2 / 3, 1 / 2])) == pytest.approx(5 / 9)
    assert voc_ap(np.array([]), np.array([])) == 0.0
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)


def test_map_matches_a_hand_computed_case_with_two_classes() -> None:
    # Sample 1: class A ground truth a1 (unit cube at the origin) and a2 (at x = 5);
    #   detections of A: 0.9 at (10, 10) (false positive, highest score), 0.8 exactly on a1,
    #   0.7 on a2 shifted by 0.2 in x (IoU 0.8 / 1.2 = 2/3: a hit at 0.25 and at 0.5).
    #   Ranking FP, TP, TP; npos 2 -> recall 0, 1/2, 1; precision 0, 1/2, 2/3; envelope 2/3 everywhere:
    #   AP_A = 1/2 * 2/3 + 1/2 * 2/3 = 2/3 at both thresholds.
    # Sample 2: class B ground truth b1 at (0, 5); detections of B: 0.6 on b1 shifted by 0.5 in x (IoU 1/3),
    #   0.3 exactly on b1; and a class-C detection with no class-C ground truth (left out of the mean).
    #   @0.25: 0.6 takes b1 (TP), 0.3 finds b1 taken (FP): recall 1, 1; precision 1, 1/2 -> AP_B = 1.
    #   @0.5: 0.6 misses (FP), 0.3 takes b1 (TP): recall 0, 1; precision 0, 1/2 -> AP_B = 1/2.
    # mAP@0.25 = (2/3 + 1) / 2 = 5/6; mAP@0.5 = (2/3 + 1/2) / 2 = 7/12.
    metric = DetectionMAP(num_classes=3, class_names=["A", "B", "C"])
    metric.update([torch.tensor([cube(10, 10), cube(), cube(5.2)])], [torch.tensor([0.9, 0.8, 0.7])],
                  [torch.tensor([0, 0, 0])], [torch.tensor([cube(), cube(5.0)])], [torch.tensor([0, 0])])
    metric.update([torch.tensor([cube(0.5, 5), cube(0, 5), cube(20, 20)])], [torch.tensor([0.6, 0.3, 0.95])],
                  [torch.tensor([1, 1, 2])], [torch.tensor([cube(0, 5)])], [torch.tensor([1])])
    result = metric.compute()
    assert result["AP@0.25/A"].item() == pytest.approx(2 / 3) and result["AP@0.5/A"].item() == pytest.approx(2 / 3)
    assert result["AP@0.25/B"].item() == pytest.approx(1.0) and result["AP@0.5/B"].item() == pytest.approx(0.5)
    assert "AP@0.25/C" not in result
    assert result["mAP@0.25"].item() == pytest.approx(5 / 6)
    assert result["mAP@0.5"].item() == pytest.approx(7 / 12)
    assert result["AR@0.25"].item() == pytest.approx(1.0) and result["AR@0.5"].item() == pytest.approx(1.0)


def test_ap_at_050_and_025_differ_on_a_box_between_them() -> None:
    gt = torch.tensor([cube()])
    det = torch.tensor([cube(x=0.45)])  # IoU 0.55 / 1.45 = 0.379
    assert 0.25 < box_iou_3d(gt[0], det[0]).item() < 0.5
    assert match_detections(det, torch.tensor([0.5]), gt, [0.25, 0.5]).tolist() == [[True, False]]
    metric = DetectionMAP(num_classes=1)
    metric.update(det[None], torch.tensor([[0.5]]), torch.tensor([[0]]), gt[None], torch.tensor([[0]]))
    result = metric.compute()
    assert result["mAP@0.25"].item() == 1.0 and result["mAP@0.5"].item() == 0.0


def test_padded_batches_masks_and_missing_detections() -> None:
    # the datamodules' padded form: (B, M, 7) ground truth with a mask, predictions with a mask
    gt = torch.zeros(2, 4, 7)
    gt[0, 0], gt[0, 1], gt[1, 0] = torch.tensor(cube()), torch.tensor(cube(3)), torch.tensor(cube(0, 3))
    gt_mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)
    gt_cls = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]])
    pred = torch.zeros(2, 3, 7)
    pred[0, 0], pred[0, 1] = torch.tensor(cube()), torch.tensor(cube(3))
    pred_mask = torch.tensor([[True, True, False], [False, False, False]])
    metric = DetectionMAP(num_classes=2)
    metric.update(pred, torch.ones(2, 3), torch.tensor([[0, 1, 1], [0, 0, 0]]), gt, gt_cls, pred_mask, gt_mask)
    result = metric.compute()
    # class 0: one hit, one ground-truth box of sample 2 never detected -> recall 1/2 at precision 1: AP 1/2
    assert result["AP@0.25/0"].item() == pytest.approx(0.5) and result["AP@0.25/1"].item() == pytest.approx(1.0)
    assert result["mAP@0.5"].item() == pytest.approx(0.75)
    assert int(metric.gt_count.sum()) == 3
    metric.reset()
    metric.update([torch.zeros(0, 7)], [torch.zeros(0)], [torch.zeros(0, dtype=torch.long)], [gt[0, :1]],
                  [torch.tensor([0])])
    assert metric.compute()["mAP@0.25"].item() == 0.0


def test_merged_states_equal_one_accumulator() -> None:
    """What DDP's gather does (cat of the per-process lists, sum of the counts) gives the single-process result."""
    rng = np.random.default_rng(1)

    def sample() -> tuple:
        gt = np.column_stack([rng.uniform(0, 6, (3, 2)), np.zeros(3), np.ones((3, 3)), rng.uniform(-1, 1, 3)])
        det = gt[rng.integers(0, 3, 4)] + np.column_stack([rng.normal(0, 0.3, (4, 2)), np.zeros((4, 5))])
        scores, classes = torch.tensor(rng.uniform(size=(1, 4))), torch.tensor(rng.integers(0, 2, (1, 4)))
        gt_classes = torch.tensor(rng.integers(0, 2, (1, 3)))
        return torch.tensor(det)[None], scores, classes, torch.tensor(gt)[None], gt_classes

    samples = [sample() for _ in range(6)]
    whole, part_a, part_b = DetectionMAP(2), DetectionMAP(2), DetectionMAP(2)
    for k, s in enumerate(samples):
        whole.update(*s)
        (part_a if k % 2 else part_b).update(*s)
    part_a.det_scores.extend(part_b.det_scores)
    part_a.det_classes.extend(part_b.det_classes)
    part_a.det_tp.extend(part_b.det_tp)
    part_a.gt_count += part_b.gt_count
    expected, got = whole.compute(), part_a.compute()
    assert expected.keys() == got.keys()
    assert all(torch.allclose(expected[k], got[k]) for k in expected)
    assert 0 < expected["mAP@0.25"].item() < 1
