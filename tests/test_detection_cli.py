"""VoteNet detection through the entry point, as a user runs it: experiment=det_votenet_scannet on a few procedural
rooms in VoteNet's ScanNet layout (``python -m selfsup_pcd.synth votenet_scannet``), shrunk to seconds."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from selfsup_pcd.synth import main as synth

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import run_cli  # noqa: E402

# a small PointNet++ (16 seeds x 32), few points and proposals: the recipe's structure, not its size
TINY_DETECTION = ["data.num_points=512", "data.batch_size=2", "data.num_workers=0",
                  "model.backbone.npoints=[128,64,32,16]", "model.backbone.nsamples=[8,8,8,8]",
                  "model.backbone.sa_mlps=[[16,16,32],[32,32,32],[32,32,32],[32,32,32]]",
                  "model.backbone.fp_mlps=[[32,32],[32,32]]", "task.num_proposals=16", "trainer=cpu",
                  "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "logger=csv"]


@pytest.fixture(scope="module")
def rooms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five procedural rooms: three to train on, two held out (VoteNet's split lists beside the data folder)."""
    root = tmp_path_factory.mktemp("votenet_scannet")
    assert synth(["votenet_scannet", "--out", str(root), "--scenes", "5", "--points", "3000"]) == 0
    names = [f"scene{i:04d}_00" for i in range(5)]
    (root / "scannetv2_train.txt").write_text("\n".join(names[:3]) + "\n")
    (root / "scannetv2_val.txt").write_text("\n".join(names[3:]) + "\n")
    return root


def test_det_votenet_scannet_trains_and_reports_map(rooms: Path, tmp_path: Path) -> None:
    run_cli("train", tmp_path, ["experiment=det_votenet_scannet", f"data.root={rooms}", *TINY_DETECTION,
                                "run_name=det"])
    run_dir = tmp_path / "train/runs/det"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/map_25", "test/map_50", "val/map_25_best"):
        assert key in metrics, f"{key} missing from {sorted(metrics)}"
        assert 0.0 <= metrics[key] <= 1.0
    assert math.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
    assert (run_dir / "backbone.pt").is_file()


@pytest.mark.slow
def test_det_strl_votenet_scannet_fine_tunes_an_export_without_height(rooms: Path, tmp_path: Path) -> None:
    """The transfer row: an xyz-only backbone export loads fully (report printed); with height it is refused."""
    run_cli("train", tmp_path, ["experiment=det_votenet_scannet", f"data.root={rooms}", *TINY_DETECTION,
                                "run_name=source", "test_after_fit=false"])
    export = tmp_path / "train/runs/source/backbone.pt"
    proc = run_cli("train", tmp_path, ["experiment=det_strl_votenet_scannet", f"data.root={rooms}",
                                       *TINY_DETECTION, f"task.pretrained={export}", "run_name=finetune"])
    assert "input xyz only (no_height)" in proc.stdout
    assert "test/map_25" in json.loads((tmp_path / "train/runs/finetune/metrics.json").read_text())
    refused = run_cli("train", tmp_path, ["experiment=det_strl_votenet_scannet", f"data.root={rooms}",
                                          *TINY_DETECTION, f"task.pretrained={export}", "data.use_height=true",
                                          "model.backbone.in_channels=1", "run_name=height"], check=False)
    assert refused.returncode != 0 and "no_height" in refused.stderr
    missing = run_cli("train", tmp_path, ["experiment=det_strl_votenet_scannet", f"data.root={rooms}",
                                          *TINY_DETECTION, "run_name=nothing"], check=False)
    assert missing.returncode != 0 and "Missing mandatory value: task.pretrained" in missing.stderr
