"""SR-UNet and DGCNN-seg trained on real mOSD table-top scans beat the majority-class baseline (table everywhere).

Protocol: ``experiment=mosd_semseg`` on the default split of ../shared/data/mosd/learn (train on 9 scenes, test on
learn12, learn28, learn43), for 3 seeds, each network trained from scratch through the CLI and tested at its last
epoch. Scores: the test confusion matrices the task writes (``test_confusion.json``); SR-UNet at point level (every
point takes its voxel's prediction; headline) and voxel level, DGCNN-seg at room level (every point of the scene,
votes of the blocks holding it; headline) and block level. The baseline predicts "table" for every test point,
scored by the same metric code (torchmetrics confusion matrix + ``semseg_scores``) on the same points.

Sized for a 2-core CPU (a few minutes a seed), so smaller than the experiment's recipe:

* every scene is cut to a fixed random 50,000 of its ~190,000 valid points (``data.max_points``; the subset
  depends on the seed), for training and testing alike, and for the baseline;
* SR-UNet: Res16UNet14A at 3 cm (the experiment: Res16UNet34C at 2 cm), 15 epochs of 9 scenes, batch 1 (30 epochs),
  BN momentum 0.1 (with the recipe's 0.02 the running statistics would keep 7% of their initial values after
  135 steps);
* DGCNN-seg: 512 points a block, batch 8, 10 epochs (the experiment: 1024 points, batch 16, 30 epochs);
* no validation passes (validation = the test scenes here, so nothing is selected on it).
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import pytest
import torch
from _cli import run_cli
from torchmetrics.classification import MulticlassConfusionMatrix

from selfsup_pcd.data.mosd import MOSD_CLASSES, MOSDDataModule
from selfsup_pcd.data.voxelize import IGNORE_INDEX
from selfsup_pcd.metrics.segmentation import semseg_scores

SEEDS = (0, 1, 2)
MAX_POINTS = 50_000
COMMON = [
    "experiment=mosd_semseg", f"data.max_points={MAX_POINTS}", "data.num_workers=0", "callbacks=none", "logger=csv",
    "export_backbone=false", "trainer.check_val_every_n_epoch=1000", "trainer.num_sanity_val_steps=0",
]
NETWORKS = {
    # name: (overrides, (headline level, other level))
    "SR-UNet": (["model.backbone.arch=Res16UNet14A", "data.voxel_size=0.03", "model.backbone.bn_momentum=0.1",
                 "data.batch_size=1", "trainer.max_epochs=15"], ("point", "voxel")),
    "DGCNN-seg": (["model=dgcnn_seg", "data.num_points=512", "data.batch_size=8", "trainer.max_epochs=10"],
                  ("room", "block")),
}




def majority_baseline(labels: list[np.ndarray], majority: int = 0) -> tuple[float, int]:
    """(mIoU, number of scored points) of predicting ``majority`` for every labelled point."""
    metric = MulticlassConfusionMatrix(len(MOSD_CLASSES), ignore_index=IGNORE_INDEX)
    for lab in labels:
        target = torch.as_tensor(lab, dtype=torch.long)
        metric.update(torch.full_like(target, majority), target)
    confusion = metric.compute()
    return semseg_scores(confusion).miou, int(confusion.sum())


def cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


@pytest.mark.slow
def test_srunet_and_dgcnn_beat_the_majority_class_on_mosd(mosd_root, tmp_path) -> None:
    results: dict[tuple[str, str], list[float]] = {}
    baseline: list[float] = []
    seconds: dict[str, list[float]] = {name: [] for name in NETWORKS}
    for seed in SEEDS:
        data = MOSDDataModule(mosd_root, max_points=MAX_POINTS, seed=seed)
        labels = data.room_labels("test")
        miou, scored = majority_baseline(labels)
        # the majority class of the training scenes is the one predicted
        train = np.concatenate(data.room_labels("train"))
        assert np.bincount(train[train != IGNORE_INDEX]).argmax() == 0
        baseline.append(miou)
        for name, (overrides, levels) in NETWORKS.items():
            run_name = f"{name.lower()}{seed}"
            start = time.perf_counter()
            run_cli("train", tmp_path, [*COMMON, f"data.root={mosd_root}", f"seed={seed}", f"run_name={run_name}",
                                        *overrides], timeout=1800)
            seconds[name].append(time.perf_counter() - start)
            run = tmp_path / "train/runs" / run_name
            report = json.loads((run / "test_confusion.json").read_text())
            metrics = json.loads((run / "metrics.json").read_text())
            assert report["headline"] == levels[0]
            headline = torch.tensor(report["levels"][levels[0]]["confusion"])
            # the headline level scores every test point, as the baseline does
            assert int(headline.sum()) == scored
            assert semseg_scores(headline).miou == pytest.approx(metrics["test/miou"], abs=1e-6)
            for level in levels:
                results[name, level] = [*results.get((name, level), []),
                                        semseg_scores(torch.tensor(report["levels"][level]["confusion"])).miou]

    lines = ["", f"mOSD test mIoU (%), learn12/28/43, {MAX_POINTS} points a scene; mean ± std over seeds {SEEDS}",
             "| model | level | " + " | ".join(f"seed {s}" for s in SEEDS) + " | mean ± std | s/run |",
             "|---|---|" + "---|" * (len(SEEDS) + 2)]
    for (name, level), values in results.items():
        runtime = f"{statistics.mean(seconds[name]):.0f}"
        lines.append(f"| {name} | {level} | " + " | ".join(f"{100 * v:.1f}" for v in values)
                     + f" | {cell(values)} | {runtime} |")
    lines.append("| majority (table) | all points | " + " | ".join(f"{100 * v:.1f}" for v in baseline)
                 + f" | {cell(baseline)} | - |")
    print("\n".join(lines))
    (tmp_path / "mosd_semseg.md").write_text("\n".join(lines) + "\n")
    for name, (_, levels) in NETWORKS.items():
        values = results[name, levels[0]]
        assert statistics.mean(values) > statistics.mean(baseline), "\n".join(lines)
        assert all(v > b for v, b in zip(values, baseline)), "\n".join(lines)
