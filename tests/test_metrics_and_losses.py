"""Metric and loss definitions against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

from selfsup_pcd.metrics import accuracy_from_confusion
from selfsup_pcd.tasks.losses import orthogonality_penalty, smoothed_cross_entropy
from selfsup_pcd.tasks.schedules import BatchNormMomentumSchedule, step_decay_with_floor


def test_accuracy_from_confusion_hand_computed():
    # rows = targets: class 0 has 3 shapes (2 right), class 1 has 1 (right), class 2 never occurs
    cm = np.array([[2, 1, 0], [0, 1, 0], [0, 0, 0]])
    oa, macc = accuracy_from_confusion(cm)
    assert oa == pytest.approx(3 / 4)
    assert macc == pytest.approx((2 / 3 + 1) / 2)  # absent class 2 does not count


def test_macc_matches_sklearn_balanced_accuracy():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 200), rng.integers(0, 6, 200)
    cm = np.zeros((6, 6), int)
    np.add.at(cm, (y, p), 1)
    assert accuracy_from_confusion(cm)[1] == pytest.approx(balanced_accuracy_score(y, p))


def test_smoothed_cross_entropy_hand_computed():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    target = torch.tensor([0])
    eps = 0.2
    logp = F.log_softmax(logits, dim=1)[0]
    expected = -((1 - eps) * logp[0] + eps / 2 * (logp[1] + logp[2]))
    torch.testing.assert_close(smoothed_cross_entropy(logits, target, eps), expected)
    torch.testing.assert_close(smoothed_cross_entropy(logits, target, 0.0), F.cross_entropy(logits, target))


def test_orthogonality_penalty_sum_vs_mean():
    eye = torch.eye(4).repeat(3, 1, 1)
    assert orthogonality_penalty(eye).item() == 0.0
    scaled = 2 * eye  # T T^T - I = 3 I: ||.||^2 = 9 * 4 = 36, /2 = 18 per shape
    assert orthogonality_penalty(scaled, "sum").item() == pytest.approx(54.0)
    assert orthogonality_penalty(scaled, "mean").item() == pytest.approx(18.0)


def test_step_decay_floor_and_bn_momentum():
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = step_decay_with_floor(opt, step_size=20, gamma=0.7, min_lr=1e-5)
    lrs = []
    for _ in range(400):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[19] == pytest.approx(1e-3) and lrs[20] == pytest.approx(7e-4)
    assert min(lrs) == pytest.approx(1e-5)
    assert lrs[-1] == pytest.approx(1e-5) and lrs[200] > 1e-5
    bn = BatchNormMomentumSchedule(initial=0.5, decay=0.5, step=20, floor=0.01)
    assert bn.momentum(0) == 0.5 and bn.momentum(39) == 0.25
    assert bn.momentum(1000) == 0.01 and math.isclose(bn.momentum(100), max(0.5 * 0.5**5, 0.01))
