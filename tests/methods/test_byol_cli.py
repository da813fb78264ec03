"""BYOL through the entry points: bitwise resume (EMA target included), export, linear-SVM evaluation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _cli import run_cli  # noqa: E402

DATA = ["data=procedural", "data.train_per_class=4", "data.test_per_class=2", "data.num_points=128",
        "data.batch_size=8"]
MODEL = ["model=pointnet_strl", "model.backbone.mlp1=[16,16]", "model.backbone.mlp2=[16,32,64]",
         "++model.backbone.conv_bias=false"]  # STRL: bias-free convs
TINY_BYOL = [*DATA, *MODEL, "method=byol", "method.views.num_points=64", "method.hidden_dim=64",
             "method.projection_dim=32", "logger=csv",
             # schedules that do not depend on max_epochs, so 1 + 1 epochs can equal 2
             "method.ema_total_steps=24", "method.scheduler.max_epochs=4", "method.scheduler.warmup_epochs=1"]


def ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_resume_is_bitwise_and_the_export_is_evaluated(tmp_path) -> None:
    run_cli("train", tmp_path, [*TINY_BYOL, "run_name=straight", "trainer.max_epochs=2"])
    run_cli("train", tmp_path, [*TINY_BYOL, "run_name=split", "trainer.max_epochs=1"])
    run_cli("train", tmp_path, [*TINY_BYOL, "run_name=split", "trainer.max_epochs=2"])  # resumes last.ckpt

    straight = ckpt(tmp_path / "train/runs/straight/checkpoints/last.ckpt")
    resumed = ckpt(tmp_path / "train/runs/split/checkpoints/last.ckpt")
    assert straight["global_step"] == resumed["global_step"] == 12
    keys = straight["state_dict"].keys()
    assert keys == resumed["state_dict"].keys()
    assert any(k.startswith("target_backbone.") for k in keys) and any(k.startswith("probe.") for k in keys)
    for key in keys:
        assert torch.equal(straight["state_dict"][key], resumed["state_dict"][key]), f"{key} differs after resume"
    for a, b in zip(straight["optimizer_states"][0]["state"].values(),
                    resumed["optimizer_states"][0]["state"].values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    assert torch.equal(straight["byol_view_generator"], resumed["byol_view_generator"])
    # the target moved away from its initial copy of the online network, but is not the online network
    online, target = straight["state_dict"]["backbone.mlp2.6.weight"], straight["state_dict"][
        "target_backbone.mlp2.6.weight"]
    assert not torch.equal(online, target)

    run_dir = tmp_path / "train/runs/straight"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"train/loss_epoch", "val/loss", "train/probe_acc", "val/probe_acc", "train/tau"} <= set(metrics)
    assert 0.0 <= metrics["train/loss_epoch"] <= 8.0
    exported = torch.load(run_dir / "backbone.pt", weights_only=False)
    for key, value in exported["state_dict"].items():
        assert torch.equal(value, straight["state_dict"][f"backbone.{key}"])  # the online backbone

    out = run_cli("eval", tmp_path, [*DATA, *MODEL, "task=linear_svm", "task.shots=[1]", "task.draws=5",
                                     "task.cv_folds=2", "run_name=svm", f"ckpt_path={run_dir / 'backbone.pt'}"])
    assert "transferred 30 / 30 tensors" in out.stdout
    svm = json.loads((tmp_path / "eval/runs/svm/metrics.json").read_text())
    assert 0.0 <= svm["test/oa"] <= 1.0 and svm["test/1shot_draws"] == 5
