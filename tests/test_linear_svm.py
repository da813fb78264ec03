"""Linear-SVM protocols on feature matrices with known structure."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.svm import SVC

from selfsup_pcd.tasks.linear_svm import LinearSVMEvaluation, draw_support


def blobs(n_per_class: int, classes: list[int], seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = {c: np.eye(16)[c % 16] * 4 for c in classes}
    x = np.concatenate([centres[c] + spread * rng.normal(size=(n_per_class, 16)) for c in classes])
    y = np.repeat(classes, n_per_class)
    return x.astype(np.float32), y


def test_draw_support_takes_k_distinct_per_class():
    labels = np.array([0] * 5 + [3] * 7 + [7] * 2)
    idx = draw_support(labels, 2, np.random.default_rng(0))
    assert len(set(idx)) == len(idx) == 6
    assert sorted(np.bincount(labels[idx]).tolist()) == [0] * 5 + [2, 2, 2]
    with pytest.raises(ValueError, match="fewer than shots=3"):
        draw_support(labels, 3, np.random.default_rng(0))


def test_strl_protocol_is_linear_svc_c1_unscaled():
    x_tr, y_tr = blobs(20, [0, 1, 3], seed=0, spread=3.0)
    x_te, y_te = blobs(10, [0, 1, 3], seed=1, spread=3.0)
    ours = LinearSVMEvaluation(protocol="strl")
    model, chosen = ours.fit_full(x_tr, y_tr)
    reference = SVC(kernel="linear", C=1.0).fit(x_tr, y_tr)
    assert chosen == {"svm/C": 1.0}
    np.testing.assert_array_equal(model.predict(x_te), reference.predict(x_te))


def test_standard_protocol_chooses_c_on_train_only():
    x_tr, y_tr = blobs(30, [0, 1, 2], seed=0, spread=1.5)
    x_te, y_te = blobs(10, [0, 1, 2], seed=1, spread=1.5)
    ev = LinearSVMEvaluation(protocol="standard", c_grid=[1e-3, 1.0], cv_folds=3)
    first = ev.evaluate_features(x_tr, y_tr, x_te, y_te)
    # scrambling the test labels must not change the chosen C
    second = ev.evaluate_features(x_tr, y_tr, x_te, np.roll(y_te, 7))
    assert first["svm/C"] == second["svm/C"]
    assert first["test/oa"] > 0.9 and second["test/oa"] < first["test/oa"]


def test_few_shot_is_deterministic_and_harder_with_fewer_shots():
    x_tr, y_tr = blobs(40, [0, 1, 2, 3], seed=0, spread=2.0)
    x_te, y_te = blobs(20, [0, 1, 2, 3], seed=1, spread=2.0)
    ev = LinearSVMEvaluation(shots=[1, 10], draws=30, full_labels=False, seed=5)
    a = ev.evaluate_features(x_tr, y_tr, x_te, y_te)
    b = ev.evaluate_features(x_tr, y_tr, x_te, y_te)
    assert a == b
    assert a["test/1shot_macc_mean"] < a["test/10shot_macc_mean"]
    assert a["test/1shot_macc_std"] > 0
    other_seed = LinearSVMEvaluation(shots=[1], draws=30, full_labels=False, seed=6)
    assert other_seed.evaluate_features(x_tr, y_tr, x_te, y_te)["test/1shot_macc_mean"] != a["test/1shot_macc_mean"]
