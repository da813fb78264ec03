"""Acceptance checks on the real ModelNet40 subset in ../shared/data (skipped where it is absent)."""

from __future__ import annotations

import json

import pytest
from _cli import run_cli

SUBSET = "modelnet40_normal_resampled"


@pytest.fixture()
def modelnet_overrides(shared_data, tmp_path):
    return ["data=modelnet40", f"data.root={shared_data / SUBSET}", f"data.cache_dir={tmp_path / 'cache'}",
            "data.num_workers=0"]


def test_supervised_pointnet_reaches_90_percent(modelnet_overrides, tmp_path):
    run_cli("train", tmp_path, [*modelnet_overrides, "model=pointnet", "trainer.max_epochs=4", "logger=csv",
                                "run_name=pointnet", "task.scheduler.T_max=4"])
    metrics = json.loads((tmp_path / "train/runs/pointnet/metrics.json").read_text())
    assert metrics["test/oa"] >= 0.90, metrics


def test_linear_svm_random_init_on_real_subset(modelnet_overrides, tmp_path):
    """Random-init PointNet: full-label SVM near 100%, 1-shot far lower and variable (label-scarce regime)."""
    run_cli("eval", tmp_path, [*modelnet_overrides, "task=linear_svm", "task.shots=[1,2]", "task.draws=100",
                               "run_name=svm"])
    metrics = json.loads((tmp_path / "eval/runs/svm/metrics.json").read_text())
    assert metrics["test/oa"] >= 0.95
    assert 0.45 <= metrics["test/1shot_macc_mean"] <= 0.90
    assert metrics["test/1shot_macc_std"] >= 0.05
    assert metrics["test/1shot_macc_mean"] < metrics["test/2shot_macc_mean"] < metrics["test/macc"]
