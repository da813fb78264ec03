"""`python -m selfsup_pcd.train experiment=mosd_semseg` end to end on one real mOSD scene per split (SR-UNet, tiny
settings): it trains, tests, and writes test metrics and confusion matrices that agree with each other and with the
test scene's points. Skipped where ../shared/data/mosd is absent."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _cli import run_cli

from selfsup_pcd.data.mosd import MOSDDataModule, read_mosd_scene
from selfsup_pcd.data.voxelize import IGNORE_INDEX
from selfsup_pcd.metrics.segmentation import semseg_scores

MAX_POINTS = 4000
VOXEL = 0.05
TRAIN, TEST = "learn0", "learn12"




def test_mosd_semseg_cli_writes_consistent_test_metrics(mosd_root, tmp_path) -> None:
    import torch

    run_cli("train", tmp_path, [
        "experiment=mosd_semseg", f"data.root={mosd_root}", f"data.train_scenes=[{TRAIN}]",
        f"data.test_scenes=[{TEST}]", f"data.max_points={MAX_POINTS}", f"data.voxel_size={VOXEL}", "data.batch_size=1",
        "data.num_workers=0",
        "model.backbone.arch=Res16UNet14A", "trainer.max_epochs=1", "callbacks=none", "logger=csv", "run_name=mosd",
    ], timeout=300)
    run = tmp_path / "train/runs/mosd"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("test/miou", "test/miou_point", "test/miou_voxel", "test/oa", "test/macc", "test/iou_table"):
        assert key in metrics, sorted(metrics)
    scores = {k: v for k, v in metrics.items() if k.startswith("test/") and any(
        part in k for part in ("miou", "/oa", "macc", "iou_"))}
    assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in scores.values()), scores
    assert metrics["test/miou"] == pytest.approx(metrics["test/miou_point"])  # SR-UNet's headline: point level

    report = json.loads((run / "test_confusion.json").read_text())
    assert report["class_names"] == ["table", "object"]
    assert report["headline"] == "point"
    point = torch.tensor(report["levels"]["point"]["confusion"])
    voxel = torch.tensor(report["levels"]["voxel"]["confusion"])
    # point level scores every labelled point of the test scene's fixed subset (every valid mOSD point is labelled)
    scene = read_mosd_scene(mosd_root / f"{TEST}.pcd")
    assert (scene.labels != IGNORE_INDEX).all()
    assert int(point.sum()) == min(MAX_POINTS, len(scene.labels))
    # ... and its rows are the subset's true class counts, whatever the network predicted
    data = MOSDDataModule(mosd_root, train_scenes=[TRAIN], test_scenes=[TEST], max_points=MAX_POINTS,
                          mode="voxels", voxel_size=VOXEL, seed=0)
    labels = data.room_labels("test")[0]
    assert point.sum(1).tolist() == np.bincount(labels, minlength=2).tolist()
    # voxel level scores every labelled voxel of the test scene
    sample = data.dataset("test")[0]
    assert int(voxel.sum()) == int((sample["labels"] != IGNORE_INDEX).sum()) == len(sample["coords"])
    # the headline is what the confusion matrix gives
    assert semseg_scores(point).miou == pytest.approx(metrics["test/miou"], abs=1e-6)
    assert semseg_scores(voxel).miou == pytest.approx(metrics["test/miou_voxel"], abs=1e-6)
    assert (run / "backbone.pt").is_file()
