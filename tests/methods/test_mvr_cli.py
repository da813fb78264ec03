"""MVR through the entry points: render + teacher cache from nothing, bitwise resume, and the exported
backbone consumed by the linear-SVM evaluation."""

from __future__ import annotations

import json

import torch
from _cli import run_cli

from selfsup_pcd.checkpoints import BACKBONE_FORMAT

MODEL = ["model=pointnet", "model.backbone.mlp2=[32,64,128]"]
TINY_MVR = [
    "experiment=mvr_demo",
    "data.source.train_per_class=1",
    "data.source.num_points=128",
    "data.num_points=128",
    "data.render.num_views=6",
    "data.render.resolution=16",
    "data.render.workers=0",
    "data.batch_size=4",
    "data.pairs.num_pairs=32",
    *MODEL,
    "method.teacher.path=null",
    "method.teacher.view_dim=32",
    "method.teacher.hidden_dim=32",
    "method.teacher.out_dim=16",
    "method.proj_dim=16",
    "method.hidden_dim=32",
    "logger=csv",
]


def ckpt(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_mvr_resumes_bitwise_and_its_backbone_feeds_the_svm(tmp_path) -> None:
    common = [*TINY_MVR, f"paths.cache_dir={tmp_path / 'cache'}"]
    out = run_cli("train", tmp_path, [*common, "run_name=straight", "trainer.max_epochs=2"])
    renders = tmp_path / "cache/renders/procedural_demo"
    assert (renders / "train.h5").is_file() and len(list(renders.glob("train.teacher_*.h5"))) == 1
    run_cli("train", tmp_path, [*common, "run_name=split", "trainer.max_epochs=1"])
    run_cli("train", tmp_path, [*common, "run_name=split", "trainer.max_epochs=2"])  # resumes from last.ckpt

    straight = ckpt(tmp_path / "train/runs/straight/checkpoints/last.ckpt")
    resumed = ckpt(tmp_path / "train/runs/split/checkpoints/last.ckpt")
    assert straight["global_step"] == resumed["global_step"] == 6
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), f"{key} differs after resume"
    for a, b in zip(straight["optimizer_states"][0]["state"].values(),
                    resumed["optimizer_states"][0]["state"].values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    metrics = json.loads((tmp_path / "train/runs/straight/metrics.json").read_text())
    assert {"train/loss_point", "train/loss_global", "train/loss_reg", "train/pair_shortage"} <= set(metrics)
    assert "exported" in out.stdout

    # backbone.pt holds the student only, equal to the checkpoint's backbone
    exported = ckpt(tmp_path / "train/runs/straight/backbone.pt")
    assert exported["format"] == BACKBONE_FORMAT
    student = {k[len("backbone."):]: v for k, v in straight["state_dict"].items() if k.startswith("backbone.")}
    assert exported["state_dict"].keys() == student.keys()
    assert all(torch.equal(exported["state_dict"][k], v) for k, v in student.items())

    svm = ["data=procedural", "data.train_per_class=2", "data.test_per_class=1", "data.num_points=128", *MODEL,
           "task.shots=[1]", "task.draws=5", "task.cv_folds=2", "run_name=svm",
           f"ckpt_path={tmp_path / 'train/runs/straight/backbone.pt'}"]
    evaluated = run_cli("eval", tmp_path, svm)
    total = len(student)
    assert f"transferred {total} / {total} tensors" in evaluated.stdout
    scores = json.loads((tmp_path / "eval/runs/svm/metrics.json").read_text())
    assert 0.0 <= scores["test/oa"] <= 1.0 and scores["test/1shot_draws"] == 5
