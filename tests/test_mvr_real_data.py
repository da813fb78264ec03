"""MVR pretraining on the real ModelNet40 subset in ../shared/data beats random init and shuffled correspondences.

Protocol (issue #4, real-data acceptance): the subset's train split is rendered as point splats (12 views of
32×32, the render defaults); a small SimCLR teacher (ResNet-18, small stem) is trained on those renders once,
with seed 0, for ``TEACHER_STEPS`` steps of ``TEACHER_BATCH`` views (a fraction of one epoch: a CPU budget,
far from the original's 1,000 epochs), and that one teacher is shared by every MVR run below. PointNet (T-nets,
feature transform) is MVR-pretrained on the train split (labels unused) with the paper-row recipe
``experiment=mvr_pointnet_modelnet40`` at CPU sizes: the frozen teacher in eval mode with cached trunk maps
(the corrected default instead of quirk 1's online train-mode BatchNorm), ``EPOCHS`` epochs of batch
``BATCH`` on the first ``POINTS`` points of each shape (instead of 400 epochs of batch 32 on 1,024 points).
For each of 3 pretraining seeds the same run is repeated with ``data.pairs.shuffle=true`` (point indices
permuted among each object's pairs: the correspondences are broken, everything else is kept), and a PointNet
at random init with that seed is the second control. Frozen features (1,024 points, train and test split) are
scored by linear SVMs with 1 and 2 labelled shapes per class (100 draws, the same draws for the three
backbones of a seed, the whole test split as query set). Mean-class accuracy: mean ± std over the draws per
seed, then mean ± std over the seeds. Two runs go in parallel (one thread each). Slow: ~18 minutes on an
otherwise idle 2-core CPU, ~30 when the machine is shared.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _cli import run_cli
from _seeds import few_label_table

SUBSET = "modelnet40_normal_resampled"
SEEDS = (0, 1, 2)
TEACHER_STEPS = 10
TEACHER_BATCH = 256
EPOCHS = 3
BATCH = 8
POINTS = 512
TIMEOUT = 3600


def _wait_for_teacher_features(render_dir: Path, failed: threading.Event) -> None:
    """Blocks until the teacher-feature cache is complete (the first MVR run writes it; two would race)."""
    deadline = time.monotonic() + TIMEOUT
    while not [p for p in render_dir.glob("train.teacher_*.h5") if not p.name.endswith(".partial.h5")]:
        if failed.is_set():
            raise RuntimeError("the teacher or the first MVR run failed")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no teacher-feature cache in {render_dir}")
        time.sleep(5)


@pytest.mark.slow
def test_mvr_pretraining_beats_random_init_and_shuffled_pairs_with_one_and_two_labels(shared_data, tmp_path) -> None:
    root = shared_data / SUBSET
    base = [f"paths.cache_dir={tmp_path / 'cache'}", "logger=csv"]
    teacher = [*base, "data=render_views", "data@data.source=modelnet40", "data.source_name=modelnet40",
               f"data.source.root={root}", "data.num_workers=0", f"data.batch_size={TEACHER_BATCH}",
               "method=simclr_teacher", "method.teacher.arch=resnet18", "seed=0", "run_name=teacher",
               "trainer.max_epochs=1", f"+trainer.max_steps={TEACHER_STEPS}"]
    mvr = [*base, "experiment=mvr_pointnet_modelnet40", f"data.source.root={root}", "data.num_workers=0",
           f"data.batch_size={BATCH}", f"data.num_points={POINTS}", "method.teacher.arch=resnet18",
           f"method.teacher.path={tmp_path / 'train/runs/teacher/teacher.pt'}", "method.teacher.bn_mode=eval",
           "method.teacher.online=false", f"trainer.max_epochs={EPOCHS}"]
    svm = [*base, "data=modelnet40", f"data.root={root}", "data.num_workers=0", "data.num_points=1024",
           "model=pointnet", "task=linear_svm", "task.shots=[1,2]", "task.draws=100",
           "task.full_labels=false"]
    variants = {"mvr": [], "shuffled": ["data.pairs.shuffle=true"]}
    failed = threading.Event()

    def pretrain_and_score(kind: str, seed: int) -> None:
        run = f"{kind}{seed}"
        run_cli("train", tmp_path, [*mvr, *variants[kind], f"seed={seed}", f"run_name={run}"], timeout=TIMEOUT)
        run_cli("eval", tmp_path, [*svm, f"seed={seed}", f"run_name={run}",
                                   f"ckpt_path={tmp_path / f'train/runs/{run}/backbone.pt'}"], timeout=TIMEOUT)

    def lane_mvr() -> None:  # renders, trains the teacher, then MVR (its first run writes the teacher features)
        try:
            run_cli("train", tmp_path, teacher, timeout=TIMEOUT)
            for seed in SEEDS:
                pretrain_and_score("mvr", seed)
        except BaseException:
            failed.set()
            raise

    def lane_controls() -> None:  # random init while the teacher trains, then the shuffled-pairs runs
        for seed in SEEDS:
            run_cli("eval", tmp_path, [*svm, f"seed={seed}", f"run_name=random{seed}"], timeout=TIMEOUT)
        _wait_for_teacher_features(tmp_path / "cache/renders/modelnet40", failed)
        for seed in SEEDS:
            pretrain_and_score("shuffled", seed)

    with ThreadPoolExecutor(max_workers=2) as pool:
        lanes = [pool.submit(lane_mvr), pool.submit(lane_controls)]
        for lane in lanes:
            lane.result()

    results = {kind: {s: json.loads((tmp_path / f"eval/runs/{kind}{s}/metrics.json").read_text()) for s in SEEDS}
               for kind in ("mvr", "shuffled", "random")}
    lines, means = few_label_table(results, SEEDS)
    print("\n".join(["", *lines]))
    (tmp_path / "mvr_vs_controls.md").write_text("\n".join(lines) + "\n")
    for shots in (1, 2):
        assert means["mvr", shots] > means["random", shots], "\n".join(lines)
        assert means["mvr", shots] > means["shuffled", shots], "\n".join(lines)
