"""Part segmentation: mIoU conventions on hand-made cases, the networks, and a CLI training run."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _cli import run_cli

from selfsup_pcd.data.shapenetpart import CATEGORIES
from selfsup_pcd.metrics.segmentation import PartSegmentationIoU, part_mask, restrict_to_category, shape_ious
from selfsup_pcd.models.backbones import DGCNNEncoder, PointNetEncoder
from selfsup_pcd.models.backbones.dgcnn_semseg import DGCNNSemsegEncoder
from selfsup_pcd.models.heads.part_seg import DGCNNPartSegHead, PointNetPartSegHead
from selfsup_pcd.models.part_seg import PartSegNetwork, encoder_features

# two toy categories: category 0 owns parts 0..3, category 1 owns parts 4..5
TOY = [4, 2]


# -- metric conventions ------------------------------------------------------------------------------------
def test_part_absent_from_gt_and_prediction_counts_one():
    mask = part_mask(TOY)
    pred = torch.tensor([[0, 1, 1, 1]])
    gt = torch.tensor([[0, 0, 1, 1]])
    # part 0: I 1 / U 2; part 1: I 2 / U 3; parts 2 and 3 absent from both: 1 each
    expected = (1 / 2 + 2 / 3 + 1 + 1) / 4
    assert shape_ious(pred, gt, torch.tensor([0]), mask).item() == pytest.approx(expected)
    # a part predicted but absent from the ground truth scores 0, not 1
    pred2 = torch.tensor([[0, 0, 1, 2]])
    assert shape_ious(pred2, gt, torch.tensor([0]), mask).item() == pytest.approx((1 + 1 / 2 + 0 + 1) / 4)


def test_predictions_are_restricted_to_the_category_parts():
    mask = part_mask(TOY)
    logits = torch.zeros(2, 3, 6)
    logits[0, :, 5] = 10.0  # a part of category 1 wins overall ...
    logits[0, :, 2] = 1.0  # ... but shape 0 is category 0: part 2 is its best own part
    logits[1, :, 0] = 10.0
    logits[1, :, 4] = 0.5
    pred = restrict_to_category(logits, torch.tensor([0, 1]), mask)
    assert pred.tolist() == [[2, 2, 2], [4, 4, 4]]


def test_instance_and_class_miou_weight_shapes_and_categories_differently():
    metric = PartSegmentationIoU(TOY)
    # category 0: a perfect shape (IoU 1) and a half-wrong one; category 1: one completely wrong shape
    metric.update(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 1, 2, 3]]), torch.tensor([0]))
    metric.update(torch.tensor([[0, 0, 0, 0]]), torch.tensor([[0, 0, 1, 1]]), torch.tensor([0]))
    metric.update(torch.tensor([[4, 4, 4, 4]]), torch.tensor([[5, 5, 5, 5]]), torch.tensor([1]))
    half = (2 / 4 + 0 + 1 + 1) / 4  # part 0: I 2 / U 4; part 1: I 0; parts 2, 3 absent
    out = metric.compute()
    assert out["instance_miou"].item() == pytest.approx((1 + half + 0) / 3)
    assert out["class_miou"].item() == pytest.approx(((1 + half) / 2 + 0) / 2)
    assert out["per_category"].tolist() == pytest.approx([(1 + half) / 2, 0.0])


def test_metric_matches_a_plain_loop_on_random_shapes():
    parts = [c.num_parts for c in CATEGORIES]
    starts = np.concatenate([[0], np.cumsum(parts)[:-1]])
    g = torch.Generator().manual_seed(0)
    cat = torch.randint(0, 16, (12,), generator=g)
    logits = torch.randn(12, 30, 50, generator=g)
    gt = torch.stack([starts[c] + torch.randint(0, parts[c], (30,), generator=g) for c in cat.tolist()])
    metric = PartSegmentationIoU(parts)
    metric.update(logits[:5], gt[:5], cat[:5])
    metric.update(logits[5:], gt[5:], cat[5:])
    out = metric.compute()
    per_shape, per_cat = [], {}
    for b in range(12):
        c = int(cat[b])
        own = list(range(starts[c], starts[c] + parts[c]))
        pred = np.array(own)[logits[b][:, own].argmax(-1).numpy()]
        ious = []
        for p in own:
            inter = np.sum((pred == p) & (gt[b].numpy() == p))
            union = np.sum((pred == p) | (gt[b].numpy() == p))
            ious.append(1.0 if union == 0 else inter / union)
        per_shape.append(np.mean(ious))
        per_cat.setdefault(c, []).append(np.mean(ious))
    assert out["instance_miou"].item() == pytest.approx(np.mean(per_shape))
    assert out["class_miou"].item() == pytest.approx(np.mean([np.mean(v) for v in per_cat.values()]))


# -- networks ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "encoder",
    [PointNetEncoder(mlp1=(16, 32), mlp2=(32, 64)), DGCNNEncoder(k=6, edge_dims=(16, 16, 32), emb_dim=64,
                                                                 pooling="max"),
     DGCNNSemsegEncoder(k=6, emb_dim=64)],
    ids=["pointnet", "dgcnn", "dgcnn_semseg"],
)
def test_layer_features_reproduce_the_encoder(encoder):
    torch.manual_seed(0)
    points = torch.randn(3, 48, 3)
    encoder.eval()
    with torch.no_grad():
        feats = encoder_features(encoder, points)
        reference = encoder(points, return_point_features=True)
    torch.testing.assert_close(feats.global_feat, reference.global_feat, rtol=1e-4, atol=1e-5)
    assert feats.skips.shape[:2] == (3, 48)


def test_paper_widths_give_the_original_head_inputs():
    pointnet = PartSegNetwork(PointNetEncoder(mlp1=(64, 128, 128), mlp2=(512, 2048)), PointNetPartSegHead, 16, 50)
    assert pointnet.head.mlp[0].in_features == 3024  # 64+128+128+128+512 + 2048 + 16
    dgcnn = PartSegNetwork(DGCNNSemsegEncoder(k=40), DGCNNPartSegHead, 16, 50, input_transform=True)
    assert dgcnn.head.mlp[0].in_features == 1280  # 192 + 1024 + 64
    assert dgcnn.transform_net is not None and dgcnn.transform_net.k == 40
    logits, transform = pointnet(torch.randn(2, 64, 3), torch.tensor([0, 15]))
    assert logits.shape == (2, 64, 50) and transform.shape == (2, 128, 128)


def test_split_first_layer_equals_the_expanded_concatenation():
    torch.manual_seed(0)
    head = DGCNNPartSegHead(skip_dim=24, global_dim=40, num_categories=16, num_parts=50, hidden=(32, 16)).eval()
    skips, glob, cat = torch.randn(2, 10, 24), torch.randn(2, 40), torch.tensor([3, 7])
    code = head.category_embed(F.one_hot(cat, 16).float())
    full = torch.cat([skips, glob.unsqueeze(1).expand(-1, 10, -1), code.unsqueeze(1).expand(-1, 10, -1)], dim=-1)
    expected = head.mlp(full.reshape(20, -1)).view(2, 10, 50)
    torch.testing.assert_close(head(skips, glob, cat), expected, rtol=1e-5, atol=1e-5)


# -- end to end ------------------------------------------------------------------------------------------------
def write_learnable_h5(root: Path, seed: int = 0, per_cat: int = 24, points: int = 64) -> Path:
    """A tiny ShapeNetPart h5 release whose parts are a function of position: Airplane (4 parts) by the
    signs of x and y, Mug (2 parts) by the sign of z."""
    rng = np.random.default_rng(seed)
    d = root / "hdf5_data"
    d.mkdir(parents=True)
    (d / "all_object_categories.txt").write_text("".join(f"{c.name} {c.synset}\n" for c in CATEGORIES))
    for split, count in (("train", per_cat), ("val", 4), ("test", 8)):
        data, label, pid = [], [], []
        for cat, start in ((0, 0), (11, 36)):
            xyz = rng.normal(size=(count, points, 3))
            xyz /= np.linalg.norm(xyz, axis=-1, keepdims=True)
            part = (xyz[..., 0] > 0) + 2 * (xyz[..., 1] > 0) if cat == 0 else (xyz[..., 2] > 0)
            data.append(xyz.astype(np.float32))
            label.append(np.full((count, 1), cat, dtype=np.uint8))
            pid.append((start + part).astype(np.uint8))
        with h5py.File(d / f"ply_data_{split}0.h5", "w") as h:
            h["data"], h["label"], h["pid"] = np.concatenate(data), np.concatenate(label), np.concatenate(pid)
        (d / f"{split}_hdf5_file_list.txt").write_text(f"ply_data_{split}0.h5\n")
    return root


PARTSEG_TINY = [
    "data=shapenetpart", "data.num_points=64", "data.batch_size=8", "data.num_workers=0", "data.sampling=first",
    "model=pointnet_partseg", "model.backbone.mlp1=[16,32]", "model.backbone.mlp2=[32,64]",
    "model.head.hidden=[32,32]", "model.backbone.input_transform=false", "model.backbone.feature_transform=false",
    "task=part_segmentation", "task.optimizer.lr=0.01", "logger=csv",
]


def test_cli_part_segmentation_learns_and_writes_mious(tmp_path):
    data = write_learnable_h5(tmp_path / "shapenet_part_seg_hdf5_data")
    run_cli("train", tmp_path / "logs", [*PARTSEG_TINY, f"data.root={data}", "run_name=scratch",
                                         "trainer.max_epochs=8"])
    run_dir = tmp_path / "logs/train/runs/scratch"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/instance_miou", "test/class_miou", "test/miou_Airplane", "test/miou_Mug", "test/acc",
                "val/instance_miou_best"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert "test/miou_Table" not in metrics  # absent categories are not reported
    # position decides the part here; guessing uniformly among the category's parts gives ~0.24, a constant ~0.16
    # (evaluation-mode figures of a net trained for 48 steps swing between epochs: the bar is low for them)
    assert metrics["train/instance_miou"] > 0.8 and metrics["test/instance_miou"] > 0.35
    # the exported encoder goes back into a part-seg network completely, with the report printed
    proc = run_cli("train", tmp_path / "logs", [*PARTSEG_TINY, f"data.root={data}", "run_name=finetune",
                                                "trainer.max_epochs=1", f"task.pretrained={run_dir / 'backbone.pt'}"])
    assert "Transfer (remap)" in proc.stdout and "4 / 4 encoder layers" in proc.stdout


def test_partial_transfer_is_refused_unless_allowed(tmp_path):
    from selfsup_pcd.checkpoints import CheckpointError, save_backbone
    from selfsup_pcd.tasks.part_segmentation import PartSegmentationTask

    save_backbone(tmp_path / "pn.pt", PointNetEncoder())
    make = functools.partial(PartSegmentationTask, backbone=PointNetEncoder(mlp1=(64, 128, 128), mlp2=(512, 2048)),
                             num_classes=16, head=PointNetPartSegHead, optimizer=torch.optim.Adam,
                             pretrained=str(tmp_path / "pn.pt"))
    with pytest.raises(CheckpointError, match="only partly transferred"):
        make()
    task = make(allow_partial_load=True, transfer_mode="name_shape")
    assert task.transfer_report.tensors.loaded  # stn1 arrived
    assert not any(k.startswith("backbone.mlp") for k in task.transfer_report.tensors.loaded)
