"""Acceptance check of VoteNet detection (issue #8): trained on CPU on procedural rooms in VoteNet's ScanNet layout
(boxes known by construction), it must reach mAP@0.25 >= 0.5 on held-out rooms.

Runs the real entry point (``experiment=det_votenet_scannet``) with the recipe's structure (loss, BN-momentum
schedule, step decay, NMS, mAP) and a CPU-sized network: 2048 points a room, a narrow PointNet++ (256 seeds x 128),
128 proposals. The rooms hold 9 of the 18 ScanNet classes (table, chair, sofa, bed, desk, bookshelf, cabinet,
toilet, bathtub; mAP averages over the classes present in the held-out boxes). One intra-op thread (the CLI's
OMP_NUM_THREADS=1): on a shared 2-core machine more threads only wait. Prints the validation curve, the final
mAP@0.25 / mAP@0.5 and the wall time.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import pytest

from selfsup_pcd.synth import main as synth

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import run_cli  # noqa: E402

TRAIN_ROOMS, HELD_OUT_ROOMS = 48, 12
EPOCHS = 250
# Radii scaled with the sparsity: 2048 points on a room's ~140 m² (floor, ceiling, walls, furniture) are ~0.25 m
# apart, so VoteNet's 0.2 m first balls (tuned for 40k points on ScanNet) would hold one or two points and the seeds
# could not vote (held-out vote loss stayed at the zero-offset level); with these radii it falls.
NETWORK = ["model.backbone.npoints=[512,256,128,64]", "model.backbone.nsamples=[16,16,8,8]",
           "model.backbone.radii=[0.5,1.0,1.6,2.4]", "task.vote_radius=0.5",
           "model.backbone.sa_mlps=[[32,32,64],[64,64,128],[64,64,128],[64,64,128]]",
           "model.backbone.fp_mlps=[[128,128],[128,128]]", "task.num_proposals=128"]
RECIPE = ["data.num_points=2048", "data.batch_size=8", "data.num_workers=0", "task.optimizer.lr=0.002",
          f"trainer.max_epochs={EPOCHS}", f"task.scheduler.milestones=[{int(EPOCHS * 0.6)},{int(EPOCHS * 0.85)}]",
          "trainer.check_val_every_n_epoch=25", "trainer=cpu", "logger=csv"]
TARGET_MAP_25 = 0.5


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue #8 open: on 2 CPU cores the best held-out mAP@0.25 reached was 0.017 "
                   "(about 500 steps); VoteNet's ScanNet schedule is ~27k steps. XPASS means the target is met: "
                   "remove this mark")
def test_votenet_reaches_map25_half_on_held_out_procedural_rooms(tmp_path: Path) -> None:
    root = tmp_path / "rooms"
    assert synth(["votenet_scannet", "--out", str(root), "--scenes", str(TRAIN_ROOMS + HELD_OUT_ROOMS),
                  "--points", "20000", "--seed", "0"]) == 0
    names = [f"scene{i:04d}_00" for i in range(TRAIN_ROOMS + HELD_OUT_ROOMS)]
    (root / "scannetv2_train.txt").write_text("\n".join(names[:TRAIN_ROOMS]) + "\n")
    (root / "scannetv2_val.txt").write_text("\n".join(names[TRAIN_ROOMS:]) + "\n")  # held out: val = test

    start = time.perf_counter()
    run_cli("train", tmp_path, ["experiment=det_votenet_scannet", f"data.root={root}", *RECIPE, *NETWORK,
                                "run_name=procedural"], timeout=3600)
    wall = time.perf_counter() - start
    run_dir = tmp_path / "train/runs/procedural"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "csv/metrics.csv", newline="") as fh:
        curve = [(int(row["epoch"]), float(row["val/map_25"]), float(row["val/map_50"]))
                 for row in csv.DictReader(fh) if row.get("val/map_25")]
    print("\nheld-out validation curve (epoch, mAP@0.25, mAP@0.5):")
    for epoch, m25, m50 in curve:
        print(f"  {epoch:4d}  {m25:.3f}  {m50:.3f}")
    print(f"VoteNet on procedural rooms: held-out mAP@0.25 {metrics['test/map_25']:.3f}, mAP@0.5 "
          f"{metrics['test/map_50']:.3f}; {EPOCHS} epochs of {TRAIN_ROOMS} rooms in {wall / 60:.1f} min (1 thread)")
    assert metrics["test/map_25"] >= TARGET_MAP_25
