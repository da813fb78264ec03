"""Training runs end to end: metrics file, exported backbone, bitwise resume, SIGKILL, DDP, evaluation."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from _cli import TINY_TRAIN, run_cli, start_cli

from selfsup_pcd.data.synthetic import CLASS_NAMES


def ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_resume_gives_bitwise_identical_weights_and_same_wandb_run(tmp_path):
    common = [*TINY_TRAIN, "logger=wandb", "test_after_fit=false"]
    run_cli("train", tmp_path, [*common, "run_name=straight", "trainer.max_epochs=2"])
    run_cli("train", tmp_path, [*common, "run_name=split", "trainer.max_epochs=1"])
    first = ckpt(tmp_path / "train/runs/split/checkpoints/last.ckpt")
    # same command, same run directory, one more epoch: resumes from last.ckpt automatically
    run_cli("train", tmp_path, [*common, "run_name=split", "trainer.max_epochs=2"])

    straight = ckpt(tmp_path / "train/runs/straight/checkpoints/last.ckpt")
    resumed = ckpt(tmp_path / "train/runs/split/checkpoints/last.ckpt")
    assert straight["epoch"] == resumed["epoch"] == 1
    assert straight["global_step"] == resumed["global_step"]
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), f"{key} differs after resume"
    # the optimizer state too (Adam moments)
    for a, b in zip(straight["optimizer_states"][0]["state"].values(),
                    resumed["optimizer_states"][0]["state"].values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"])

    run_id = first["wandb_run_id"]
    assert run_id and resumed["wandb_run_id"] == run_id
    offline_runs = sorted((tmp_path / "train/runs/split/wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(p.name.endswith(run_id) for p in offline_runs)
    assert straight["wandb_run_id"] != run_id


def test_sigkill_mid_epoch_then_resume_finishes(tmp_path):
    overrides = [*TINY_TRAIN, "data.train_per_class=60", "data.num_points=512", "data.batch_size=4",
                 "logger=csv", "run_name=killed", "trainer.max_epochs=2"]
    run_dir = tmp_path / "train/runs/killed"
    last = run_dir / "checkpoints/last.ckpt"
    proc = start_cli("train", tmp_path, overrides)
    try:
        deadline = time.time() + 300
        while not last.exists():
            assert proc.poll() is None, f"training ended before its first checkpoint:\n{proc.stderr.read()[-3000:]}"
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # well inside the second epoch
        assert proc.poll() is None, "training finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert ckpt(last)["epoch"] == 0, "the kill did not land in the second epoch"
    assert not (run_dir / "metrics.json").exists()

    run_cli("train", tmp_path, overrides)  # the same command resumes from last.ckpt
    state = ckpt(last)
    assert state["epoch"] == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test/oa"] <= 1.0 and "val/oa_best" in metrics


def test_ddp_two_cpu_processes_leave_one_run_directory(tmp_path):
    run_cli("train", tmp_path, [*TINY_TRAIN, "trainer=ddp_cpu", "trainer.max_epochs=1", "logger=csv",
                                "run_name=ddp"])
    runs = sorted((tmp_path / "train/runs").iterdir())
    assert [p.name for p in runs] == ["ddp"]
    assert sorted(p.name for p in (runs[0] / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    state = ckpt(runs[0] / "checkpoints/last.ckpt")
    # the train shapes are split over 2 ranks (batch 8, drop_last): half the steps of a single process
    per_rank = len(CLASS_NAMES) * 6 // 2
    assert state["global_step"] == per_rank // 8
    assert json.loads((runs[0] / "metrics.json").read_text())["test/oa"] >= 0.0


def test_train_then_linear_svm_eval_of_exported_backbone(tmp_path):
    run_cli("train", tmp_path, [*TINY_TRAIN, "trainer.max_epochs=2", "logger=csv", "run_name=cls"])
    run_dir = tmp_path / "train/runs/cls"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test/oa", "test/macc", "val/oa", "train/loss_epoch"} <= set(metrics)
    backbone = run_dir / "backbone.pt"
    assert backbone.is_file()

    # testing the Lightning checkpoint through the eval entry point reproduces the run's own test metrics
    run_cli("eval", tmp_path, [*TINY_TRAIN, "task=classification", "run_name=cls_test",
                               f"ckpt_path={run_dir / 'checkpoints/last.ckpt'}"])
    retested = json.loads((tmp_path / "eval/runs/cls_test/metrics.json").read_text())
    assert retested["test/oa"] == pytest.approx(metrics["test/oa"])
    assert retested["test/macc"] == pytest.approx(metrics["test/macc"])

    data = [o for o in TINY_TRAIN if o.startswith("data")]
    model = [o for o in TINY_TRAIN if o.startswith("model.backbone")]
    common = [*data, *model, "task=linear_svm", "task.shots=[1]", "task.draws=5", "task.cv_folds=2"]
    out = run_cli("eval", tmp_path, [*common, "run_name=svm", f"ckpt_path={backbone}"])
    assert "transferred" in out.stdout
    svm = json.loads((tmp_path / "eval/runs/svm/metrics.json").read_text())
    assert 0.0 <= svm["test/oa"] <= 1.0 and svm["test/1shot_draws"] == 5

    # a checkpoint that does not fit the configured backbone is refused, with the transfer report
    refused = run_cli("eval", tmp_path, [*data, "task=linear_svm", "run_name=wrong", f"ckpt_path={backbone}"],
                      check=False)
    assert refused.returncode != 0
    assert "partial load refused" in refused.stderr and "shape mismatch" in refused.stderr
