"""Few-shot episodes: deterministic under a seed, support and query disjoint; the classifier and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _cli import run_cli

from selfsup_pcd.tasks.few_shot import FewShotEvaluation, make_episodes

TRAIN = np.repeat(np.arange(8), 30)  # 8 classes x 30 train shapes
TEST = np.repeat(np.arange(8), 25)


def test_folds_are_fixed_by_the_seed():
    a = make_episodes(TRAIN, TEST, ways=5, shots=10, queries=20, folds=10, seed=3)
    b = make_episodes(TRAIN, TEST, ways=5, shots=10, queries=20, folds=10, seed=3)
    c = make_episodes(TRAIN, TEST, ways=5, shots=10, queries=20, folds=10, seed=4)
    assert len(a) == 10
    for x, y in zip(a, b):
        assert np.array_equal(x.classes, y.classes) and np.array_equal(x.support, y.support)
        assert np.array_equal(x.query, y.query)
    assert any(not np.array_equal(x.support, z.support) for x, z in zip(a, c))
    # folds differ from each other (different classes or shapes)
    assert len({tuple(e.support) for e in a}) == 10


@pytest.mark.parametrize("same_split", [False, True], ids=["query_from_test", "query_from_train"])
def test_episode_structure_and_disjoint_support_and_query(same_split):
    episodes = make_episodes(TRAIN, None if same_split else TEST, ways=3, shots=5, queries=20, folds=10, seed=0)
    query_labels = TRAIN if same_split else TEST
    for e in episodes:
        assert len(e.classes) == len(set(e.classes.tolist())) == 3
        assert sorted(np.bincount(TRAIN[e.support], minlength=8)[e.classes].tolist()) == [5, 5, 5]
        assert sorted(np.bincount(query_labels[e.query], minlength=8)[e.classes].tolist()) == [20, 20, 20]
        assert set(TRAIN[e.support]) == set(query_labels[e.query]) == set(e.classes.tolist())
        assert len(set(e.support.tolist())) == 15 and len(set(e.query.tolist())) == 60
        if same_split:  # the same pool of shapes: no shape may be both support and query
            assert not set(e.support.tolist()) & set(e.query.tolist())


def test_classes_without_enough_shapes_are_not_drawn():
    train = np.array([0] * 12 + [1] * 12 + [2] * 3)  # class 2 has too few support shapes
    test = np.array([0] * 20 + [1] * 20 + [2] * 20)
    episodes = make_episodes(train, test, ways=2, shots=10, queries=20, folds=5, seed=0)
    assert all(e.classes.tolist() == [0, 1] for e in episodes)
    with pytest.raises(ValueError, match="3-way 10-shot .* only 2 qualify"):
        make_episodes(train, test, ways=3, shots=10, queries=20, folds=5, seed=0)


def blobs(labels: np.ndarray, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.eye(16)[labels] * 4 + spread * rng.normal(size=(len(labels), 16))).astype(np.float32)


def test_accuracy_tracks_how_separable_the_features_are():
    ev = FewShotEvaluation(ways=[5], shots=[1, 10], queries=20, folds=10, seed=0)
    easy = ev.evaluate_features(blobs(TRAIN, 0.5, 0), TRAIN, blobs(TEST, 0.5, 1), TEST)
    assert easy["test/5way10shot_acc_mean"] > 0.98 and easy["test/5way10shot_acc_folds"] == 10
    noise = ev.evaluate_features(blobs(TRAIN, 50.0, 0), TRAIN, blobs(TEST, 50.0, 1), TEST)
    assert 0.1 < noise["test/5way10shot_acc_mean"] < 0.4  # chance is 0.2
    assert noise["test/5way10shot_acc_std"] > 0
    hard = ev.evaluate_features(blobs(TRAIN, 2.5, 0), TRAIN, blobs(TEST, 2.5, 1), TEST)
    assert hard["test/5way1shot_acc_mean"] < hard["test/5way10shot_acc_mean"]
    logistic = FewShotEvaluation(ways=5, shots=10, classifier="logistic", seed=0)
    assert logistic.evaluate_features(blobs(TRAIN, 0.5, 0), TRAIN, blobs(TEST, 0.5, 1), TEST)[
        "test/5way10shot_acc_mean"] > 0.98


def test_cli_eval_few_shot_on_procedural_shapes(tmp_path):
    overrides = ["task=few_shot", "task.ways=[5]", "task.shots=[2]", "task.queries=3", "task.folds=4",
                 "data=procedural", "data.train_per_class=4", "data.test_per_class=3", "data.num_points=128",
                 "model=pointnet", "model.backbone.mlp2=[32,64,128]", "logger=csv", "run_name=fs"]
    run_cli("eval", tmp_path, [*overrides, "seed=1"])
    metrics = json.loads((tmp_path / "eval/runs/fs/metrics.json").read_text())
    assert set(metrics) == {"test/5way2shot_acc_mean", "test/5way2shot_acc_std", "test/5way2shot_acc_folds"}
    assert 0.0 <= metrics["test/5way2shot_acc_mean"] <= 1.0 and metrics["test/5way2shot_acc_folds"] == 4


def test_run_on_scanobjectnn_files(tmp_path):
    import h5py
    import torch

    from selfsup_pcd.data.scanobjectnn import ScanObjectNNDataModule
    from selfsup_pcd.models.backbones import PointNetEncoder

    rng = np.random.default_rng(0)
    for split, per_class in (("training", 4), ("test", 3)):
        labels = np.repeat(np.arange(15), per_class)
        path = tmp_path / "main_split_nobg" / f"{split}_objectdataset.h5"
        path.parent.mkdir(exist_ok=True)
        with h5py.File(path, "w") as h:
            h["data"] = rng.normal(size=(len(labels), 32, 3)).astype(np.float32)
            h["label"] = labels
            h["mask"] = np.ones((len(labels), 32), dtype=np.int64)
    dm = ScanObjectNNDataModule(tmp_path, variant="obj_only", num_points=32, batch_size=16, num_workers=0)
    torch.manual_seed(0)
    ev = FewShotEvaluation(ways=[5], shots=[2], queries=3, folds=3, seed=0, device="cpu")
    metrics = ev.run(PointNetEncoder(mlp1=(16,), mlp2=(16, 32)), dm)
    assert metrics["test/5way2shot_acc_folds"] == 3 and 0 <= metrics["test/5way2shot_acc_mean"] <= 1
    episodes = make_episodes(dm.labels("train"), dm.labels("test"), 5, 2, 3, 3, 0)
    assert all(len(e.query) == 15 for e in episodes)
