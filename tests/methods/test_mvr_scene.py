"""Scene-level MVR (issue #6 item 7): frame pairs with overlap, pixel↔voxel pairs, SR-UNet student."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _frames import write_rendered_frames

from selfsup_pcd.data.scannet_frame_views import ScanNetFrameViewsDataModule, frame_overlap


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scene_mvr")
    write_rendered_frames(root, 10, 160, 120)
    return root


def _datamodule(root: Path, **kwargs) -> ScanNetFrameViewsDataModule:
    options = {"voxel_size": 0.1, "image_size": (60, 80), "points_per_frame": 6000, "num_pairs": 128,
               "pixel_offset": 0.5, "val_fraction": 0.0, "batch_size": 2, "num_workers": 0, "min_overlap": 0.3}
    return ScanNetFrameViewsDataModule(root, **{**options, **kwargs})


def test_overlap_is_one_with_itself_and_drops_with_a_wrong_pose(frames_root: Path) -> None:
    dm = _datamodule(frames_root)
    scene = dm.scenes()[0]
    from selfsup_pcd.data.writers.scannet_frames import read_depth_png

    depth = [read_depth_png(scene.depth_path(i)) / 1000.0 for i in (0, 1)]
    fx, fy, cx, cy = scene.intrinsics
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    assert frame_overlap(depth[0], depth[0], K, scene.poses[0], scene.poses[0], 0.1, 4, 0.5) > 0.99
    near = frame_overlap(depth[0], depth[1], K, scene.poses[0], scene.poses[1], 0.1, 4, 0.5)
    wrong = scene.poses[1].copy()
    wrong[:3, 3] += [0.0, 0.0, 0.8]  # the camera raised by 80 cm: depths no longer agree
    assert near > 0.3
    assert frame_overlap(depth[0], depth[1], K, scene.poses[0], wrong, 0.1, 4, 0.5) < near / 2
    pairs = dm.frame_pairs(dm.scenes())
    assert pairs and all(p.overlap >= 0.3 and 0 < p.b - p.a <= dm.max_frame_gap for p in pairs)


def test_paired_pixels_show_their_voxels_colour(frames_root: Path) -> None:
    dm = _datamodule(frames_root)
    dataset = dm.build_dataset("train")
    dataset.train = False  # fixed draws, frames not swapped
    assert len(dataset) > 0
    errors, shuffled = [], []
    rng = np.random.default_rng(0)
    for index in range(min(4, len(dataset))):
        item = dataset[index]
        pairs = item["pairs"].numpy()
        views = item["views"].numpy().astype(np.float32) / 255.0
        voxel_rgb = item["feats"] + 0.5
        pixel_rgb = views[pairs[:, 0], pairs[:, 1], pairs[:, 2]]
        assert set(np.unique(pairs[:, 0])) <= {0, 1}
        errors.append(np.abs(pixel_rgb - voxel_rgb[pairs[:, 3]]).mean(1))
        shuffled.append(np.abs(pixel_rgb - voxel_rgb[rng.permutation(pairs[:, 3])]).mean(1))
        assert (pairs[:, 0] == 1).sum() > 0  # the second frame contributes pairs
    err, base = np.median(np.concatenate(errors)), np.median(np.concatenate(shuffled))
    assert err < 0.1 and err < 0.5 * base, (err, base)


def test_scene_mvr_trains_an_srunet_student_and_exports_it_to_semseg(frames_root: Path, tmp_path: Path) -> None:
    from selfsup_pcd.checkpoints import save_backbone
    from selfsup_pcd.methods.mvr_scene import SceneMVR
    from selfsup_pcd.models.backbones.srunet import SRUNet
    from selfsup_pcd.tasks.semantic_segmentation import SemanticSegmentationTask

    torch.manual_seed(0)
    dm = _datamodule(frames_root)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    student = SRUNet(in_channels=3, out_channels=None, arch="Res16UNet14A")
    method = SceneMVR(student, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                      teacher={"arch": "resnet18", "view_dim": 512, "online": True}, hidden_dim=64)
    optimizer = method.optimizer_factory(method.optimizer_parameters())
    method.train()
    losses = []
    for step in range(6):
        terms = method.losses(batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        if step == 0:
            assert all(p.grad is not None for p in student.parameters()), "a student layer got no gradient"
            assert all(p.grad is None for p in method.teacher.parameters())
            assert method.pixel_head.conv.weight.grad is not None
        optimizer.step()
        losses.append(float(terms["loss_point"].detach()))
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    # the exported student fills every layer of a semantic-segmentation SR-UNet but the new final layer
    path = tmp_path / "backbone.pt"
    save_backbone(path, student)
    task = SemanticSegmentationTask(backbone=SRUNet(in_channels=3, out_channels=5, arch="Res16UNet14A"),
                                    num_classes=5, pretrained=str(path), allow_partial_load=True)
    report = task.transfer_report
    not_loaded = [name for name, state in report.layers.items() if state != "loaded"]
    assert not_loaded and all("final" in name for name in not_loaded), not_loaded
    torch.testing.assert_close(task.network.net.conv0p1s1.kernel, student.net.conv0p1s1.kernel)


def test_scene_mvr_runs_from_the_command_line_and_exports_the_student(frames_root: Path, tmp_path: Path) -> None:
    import json

    from _cli import run_cli

    from selfsup_pcd.checkpoints import read_state_dict

    run_cli("train", tmp_path, [
        "experiment=mvr_srunet_scannet", f"data.root={frames_root}", "data.pixel_offset=0.5", "data.val_fraction=0",
        "data.voxel_size=0.1", "data.image_size=[60,80]", "data.points_per_frame=4000", "data.num_pairs=64",
        "data.batch_size=2", "data.num_workers=0", "model.backbone.arch=Res16UNet14A", "method.teacher.arch=resnet18",
        "method.teacher.view_dim=64", "method.hidden_dim=64", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "logger=csv", "run_name=scene_mvr"])
    run = tmp_path / "train/runs/scene_mvr"
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["train/loss_point"]) and np.isfinite(metrics["train/loss_global"])
    state, _ = read_state_dict(run / "backbone.pt")
    assert any(k.endswith("conv0p1s1.kernel") for k in state) and not any("final" in k for k in state)
