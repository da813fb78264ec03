"""STRL (BYOL) pretraining on the real ModelNet40 subset in ../shared/data beats random init with few labels.

Protocol: STRL's PointNet (no T-nets, bias-free convs) pretrained with BYOL and STRL's object view chain on the
subset's train split (labels unused), for 3 pretraining seeds; its frozen features, and those of a randomly
initialised PointNet with the same seed, are scored by linear SVMs with 1 and 2 labelled shapes per class
(100 draws each, the whole test split as query set). Mean-class accuracy: mean ± std over the draws per seed,
then mean ± std over the seeds. Slow: several minutes per seed on a 2-core CPU.
"""

from __future__ import annotations

import json

import pytest
from _cli import run_cli
from _seeds import few_label_table

SUBSET = "modelnet40_normal_resampled"
SEEDS = (0, 1, 2)
EPOCHS = 5


@pytest.mark.slow
def test_strl_pretraining_beats_random_init_with_one_and_two_labels(shared_data, tmp_path) -> None:
    common = ["data=modelnet40", f"data.root={shared_data / SUBSET}", f"data.cache_dir={tmp_path / 'cache'}",
              "data.num_workers=0", "data.num_points=1024", "model=pointnet_strl",
              "++model.backbone.conv_bias=false", "logger=csv"]
    svm = ["task=linear_svm", "task.shots=[1,2]", "task.draws=100"]
    results: dict[str, dict[int, dict[str, float]]] = {"strl": {}, "random": {}}
    for seed in SEEDS:
        run_cli("train", tmp_path, [*common, "method=byol", f"seed={seed}", f"run_name=strl{seed}",
                                    f"trainer.max_epochs={EPOCHS}", "method.views.num_points=512"], timeout=3600)
        backbone = tmp_path / f"train/runs/strl{seed}/backbone.pt"
        run_cli("eval", tmp_path, [*common, *svm, f"seed={seed}", f"run_name=strl{seed}", f"ckpt_path={backbone}"])
        run_cli("eval", tmp_path, [*common, *svm, f"seed={seed}", f"run_name=random{seed}"])
        for kind in results:
            results[kind][seed] = json.loads((tmp_path / f"eval/runs/{kind}{seed}/metrics.json").read_text())

    lines, means = few_label_table(results, SEEDS)
    print("\n".join(["", *lines]))
    (tmp_path / "strl_vs_random.md").write_text("\n".join(lines) + "\n")
    for shots in (1, 2):
        assert means["strl", shots] > means["random", shots], "\n".join(lines)
