"""Semantic-segmentation metrics: scores from a hand-counted confusion matrix, NaN-aware class mean, room votes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from selfsup_pcd.data.voxelize import IGNORE_INDEX
from selfsup_pcd.metrics.segmentation import RoomVotes, semseg_scores

I = IGNORE_INDEX  # noqa: E741


def test_scores_match_hand_counts_with_ignored_points():
    # 3 classes, 12 points of which 2 carry the ignore label (their predictions must not count anywhere)
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, I, I, 2])
    pred = torch.tensor([0, 0, 1, 2, 1, 1, 0, 2, 1, 0, 2, 2])
    cm = MulticlassConfusionMatrix(3, ignore_index=I)
    cm.update(pred[:5], target[:5])
    cm.update(pred[5:], target[5:])
    confusion = cm.compute()
    # rows = targets, columns = predictions, counted by hand from the lists above
    assert confusion.tolist() == [[2, 1, 1],
                                  [1, 2, 0],
                                  [0, 1, 2]]
    s = semseg_scores(confusion)
    # class 0: TP 2, FN 2, FP 1 -> 2/5; class 1: TP 2, FN 1, FP 2 -> 2/5; class 2: TP 2, FN 1, FP 1 -> 2/4
    iou = [2 / 5, 2 / 5, 2 / 4]
    assert s.iou.tolist() == pytest.approx(iou)
    assert s.miou == pytest.approx(sum(iou) / 3)
    assert s.oa == pytest.approx(6 / 10)  # 10 scored points, 6 correct
    assert s.macc == pytest.approx((2 / 4 + 2 / 3 + 2 / 3) / 3)


def test_class_absent_everywhere_is_excluded_but_a_false_positive_class_counts_zero():
    # class 2 never occurs and is never predicted; class 3 is predicted once but never occurs
    confusion = torch.tensor([[3, 1, 0, 0],
                              [0, 2, 0, 1],
                              [0, 0, 0, 0],
                              [0, 0, 0, 0]])
    s = semseg_scores(confusion)
    assert math.isnan(s.iou[2].item())
    assert s.iou[3].item() == 0.0
    # class 0: 3 / (4 + 3 - 3) = 3/4; class 1: 2 / (3 + 3 - 2) = 2/4
    assert s.miou == pytest.approx((3 / 4 + 2 / 4 + 0.0) / 3)
    assert s.macc == pytest.approx((3 / 4 + 2 / 3) / 2)  # recall over the classes present in the targets
    with pytest.raises(ValueError, match="empty"):
        semseg_scores(torch.zeros(3, 3))


def test_room_votes_sum_probabilities_over_overlapping_blocks():
    # room 0: 3 points labelled 0, 1, 2; two blocks both contain point 1 and disagree about it
    votes = RoomVotes([3, 2], num_classes=3)
    probs = torch.tensor([[[0.8, 0.1, 0.1], [0.6, 0.4, 0.0]],   # block A: points 0, 1 -> point 1 says class 0
                          [[0.0, 0.45, 0.55], [0.1, 0.1, 0.8]]])  # block B: points 1, 2 -> point 1 says class 2
    votes.update(torch.tensor([0, 0]), torch.tensor([[0, 1], [1, 2]]), probs)
    labels = [np.array([0, 1, 2]), np.array([1, 1])]
    confusion, coverage = votes.confusion(labels, IGNORE_INDEX)
    # point 1 sums to (0.6, 0.85, 0.55): class 1, which neither block predicted on its own
    assert confusion.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert coverage == pytest.approx(3 / 5)  # room 1 was never covered: left out, not scored as class 0
    with pytest.raises(IndexError):
        votes.update(torch.tensor([2]), torch.tensor([[0]]), torch.ones(1, 1, 3))
