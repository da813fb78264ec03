"""VoteNet detection: the loss on hand-made cases, gradients, box decoding against the data's encoding, the
evaluation pipeline (remove-empty, NMS, mAP) and pretrained loading with the no_height rule."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from selfsup_pcd.checkpoints import CheckpointError
from selfsup_pcd.data.boxes import encode_boxes
from selfsup_pcd.data.votenet import MAX_NUM_OBJ, box_targets
from selfsup_pcd.methods.byol import BYOL
from selfsup_pcd.models.backbones.pointnet2 import PointNet2Backbone
from selfsup_pcd.models.detection.votenet import VoteNet
from selfsup_pcd.tasks.detection import DetectionTask, decode_predictions
from selfsup_pcd.tasks.votenet_loss import OBJECTNESS_WEIGHTS, votenet_loss
from selfsup_pcd.utils.hydra import CONFIG_DIR

TINY = {"npoints": (64, 32, 16, 8), "nsamples": (8, 8, 8, 8),
        "sa_mlps": ((16, 16, 32), (32, 32, 32), (32, 32, 32), (32, 32, 32)), "fp_mlps": ((32, 32), (32, 32))}


pytestmark = pytest.mark.usefixtures("one_thread")


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) <= 1 else abs(x) - 0.5


# ------------------------------------------------------------------------------------------------ the loss
NH, NC = 4, 6
MEAN_SIZES = torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.6, 0.8], [2.0, 1.5, 0.5], [1.0, 2.0, 1.0],
                           [0.4, 0.4, 0.9], [1.2, 0.8, 0.7]])
GT_CENTRES = [(0.0, 0.0, 0.5), (3.0, 0.0, 0.5)]
GT_CLASSES = [1, 4]
GT_HEADING = [(1, 0.2), (3, -0.1)]  # (bin, residual in radians)


def hand_batch() -> dict[str, torch.Tensor]:
    """One scene, two boxes (the rest padding), four points: 0 and 1 on objects, 2 and 3 on none."""
    m = MAX_NUM_OBJ
    batch = {"center_label": torch.zeros(1, m, 3), "heading_class_label": torch.zeros(1, m, dtype=torch.long),
             "heading_residual_label": torch.zeros(1, m), "size_class_label": torch.zeros(1, m, dtype=torch.long),
             "size_residual_label": torch.zeros(1, m, 3), "sem_cls_label": torch.zeros(1, m, dtype=torch.long),
             "box_label_mask": torch.zeros(1, m)}
    for k in range(2):
        batch["center_label"][0, k] = torch.tensor(GT_CENTRES[k])
        batch["heading_class_label"][0, k], batch["heading_residual_label"][0, k] = GT_HEADING[k]
        batch["size_class_label"][0, k] = batch["sem_cls_label"][0, k] = GT_CLASSES[k]
        batch["size_residual_label"][0, k] = torch.tensor([0.1, -0.2, 0.05]) * (k + 1)
        batch["box_label_mask"][0, k] = 1.0
    votes = torch.zeros(1, 4, 9)
    votes[0, 0] = torch.tensor([0.1, 0.2, 0.3, 1.0, 1.0, 1.0, -0.5, 0.0, 0.0])  # three different votes
    votes[0, 1] = torch.tensor([2.0, 0.0, 0.0] * 3)
    votes[0, 2] = torch.tensor([9.0] * 9)  # off every object: must not count
    batch["vote_label"] = votes
    batch["vote_label_mask"] = torch.tensor([[1, 1, 0, 0]])
    return batch


def hand_prediction() -> dict[str, torch.Tensor]:
    """Three proposals: on the first centre (positive), 0.45 m from the second (ignored), far away (negative)."""
    g = torch.Generator().manual_seed(0)
    k = 3
    aggregated = torch.tensor([[GT_CENTRES[0], (3.45, 0.0, 0.5), (10.0, 10.0, 0.5)]])
    return {
        "aggregated_xyz": aggregated,
        "objectness_scores": torch.tensor([[[0.0, 2.0], [5.0, -5.0], [1.0, 0.0]]]),
        "center": torch.tensor([[GT_CENTRES[0], GT_CENTRES[1], GT_CENTRES[1]]]),
        "heading_scores": torch.randn(1, k, NH, generator=g),
        "heading_residuals_normalized": torch.randn(1, k, NH, generator=g),
        "size_scores": torch.randn(1, k, NC, generator=g),
        "size_residuals_normalized": torch.randn(1, k, NC, 3, generator=g),
        "sem_cls_scores": torch.randn(1, k, NC, generator=g),
        # seeds: points 0, 2, 1 (the middle one is off every object)
        "seed_inds": torch.tensor([[0, 2, 1]]),
        "seed_xyz": torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]]),
        "vote_xyz": torch.tensor([[[0.9, 1.1, 1.0], [5.0, 5.0, 5.0], [2.5, 0.0, 0.5]]]),
    }


def test_loss_terms_on_a_hand_made_scene() -> None:
    batch, pred = hand_batch(), hand_prediction()
    terms = votenet_loss(pred, batch, NH, MEAN_SIZES)

    # votes: seed 0 (offset (0.9, 1.1, 1.0)) is nearest to its second vote (L1 0.2), seed 2 (offset (1.5, 0, 0.5))
    # has three equal votes (2, 0, 0): L1 1.0; seed 1 is on no object
    want_vote = (min(abs(0.9 - 0.1) + abs(1.1 - 0.2) + abs(1.0 - 0.3), 0.1 + 0.1 + 0.0,
                     abs(0.9 + 0.5) + 1.1 + 1.0) + 1.0) / 2
    assert terms["vote_loss"].item() == pytest.approx(want_vote, abs=1e-5)

    # objectness: proposal 0 positive (label 1, weight 0.8), 1 ignored, 2 negative (label 0, weight 0.2);
    # VoteNet's normalisation: the weighted sum over the labelled proposals / their count
    w_neg, w_pos = OBJECTNESS_WEIGHTS
    want_obj = (w_pos * math.log(1 + math.exp(-2.0)) + w_neg * math.log(1 + math.exp(-1.0))) / 2
    assert terms["objectness_loss"].item() == pytest.approx(want_obj, abs=1e-5)
    assert terms["positive_ratio"].item() == pytest.approx(1 / 3)

    # centres equal to the ground truth: both sides of the Chamfer term vanish
    assert terms["center_loss"].item() == pytest.approx(0.0, abs=1e-6)

    # box and class terms: the positive proposal 0 only, assigned to box 0
    h_cls, h_res = GT_HEADING[0]
    want = F.cross_entropy(pred["heading_scores"][0, 0], torch.tensor(h_cls)).item()
    assert terms["heading_cls_loss"].item() == pytest.approx(want, abs=1e-5)
    target = h_res / (math.pi / NH)
    want = huber(pred["heading_residuals_normalized"][0, 0, h_cls].item() - target)
    assert terms["heading_reg_loss"].item() == pytest.approx(want, abs=1e-5)
    cls = GT_CLASSES[0]
    want = F.cross_entropy(pred["size_scores"][0, 0], torch.tensor(cls)).item()
    assert terms["size_cls_loss"].item() == pytest.approx(want, abs=1e-5)
    target = batch["size_residual_label"][0, 0] / MEAN_SIZES[cls]
    want = np.mean([huber(v) for v in (pred["size_residuals_normalized"][0, 0, cls] - target).tolist()])
    assert terms["size_reg_loss"].item() == pytest.approx(want, abs=1e-5)
    want = F.cross_entropy(pred["sem_cls_scores"][0, 0], torch.tensor(cls)).item()
    assert terms["sem_cls_loss"].item() == pytest.approx(want, abs=1e-5)

    box = (terms["center_loss"] + 0.1 * terms["heading_cls_loss"] + terms["heading_reg_loss"]
           + 0.1 * terms["size_cls_loss"] + terms["size_reg_loss"])
    assert terms["box_loss"].item() == pytest.approx(box.item(), abs=1e-6)
    want = 10 * (want_vote + 0.5 * want_obj + box.item() + 0.1 * terms["sem_cls_loss"].item())
    assert terms["loss"].item() == pytest.approx(want, rel=1e-5)


def test_centre_loss_is_the_two_sided_nearest_squared_distance() -> None:
    batch, pred = hand_batch(), hand_prediction()
    # positive proposal 0 moved 0.1 m; the second centre keeps two exact predictions; padding boxes never count
    pred["center"] = torch.tensor([[(0.1, 0.0, 0.5), GT_CENTRES[1], (7.0, 7.0, 7.0)]])
    terms = votenet_loss(pred, batch, NH, MEAN_SIZES)
    assert terms["center_loss"].item() == pytest.approx(0.01 + (0.01 + 0.0) / 2, abs=1e-6)
    # moving the ignored proposal's centre changes nothing on the first side, only the second
    pred["center"][0, 1] = torch.tensor([3.2, 0.0, 0.5])
    terms = votenet_loss(pred, batch, NH, MEAN_SIZES)
    assert terms["center_loss"].item() == pytest.approx(0.01 + (0.01 + 0.04) / 2, abs=1e-6)


def test_no_positive_proposal_leaves_box_terms_zero_and_finite() -> None:
    batch, pred = hand_batch(), hand_prediction()
    pred["aggregated_xyz"] = pred["aggregated_xyz"] + 20.0  # every proposal far: all negative
    terms = votenet_loss(pred, batch, NH, MEAN_SIZES)
    assert terms["positive_ratio"].item() == 0.0
    for name in ("heading_cls_loss", "heading_reg_loss", "size_cls_loss", "size_reg_loss", "sem_cls_loss"):
        assert terms[name].item() == 0.0, name
    assert all(torch.isfinite(v) for v in terms.values())


def test_gradients_reach_every_votenet_parameter() -> None:
    torch.manual_seed(0)
    net = VoteNet(PointNet2Backbone(in_channels=1, **TINY), NC, NH, MEAN_SIZES, num_proposals=8, radius=0.5,
                  nsample=8)
    points = torch.rand(2, 256, 4) * torch.tensor([3.0, 3.0, 1.0, 1.0])
    pred = net(points)
    # ground truth at some of the proposal clusters, so every head has positives
    batch = {k: v.expand(2, *v.shape[1:]).clone() for k, v in hand_batch().items() if k != "vote_label"}
    batch["center_label"][:, :2] = pred["aggregated_xyz"][:, :2].detach()
    batch["vote_label"] = torch.rand(2, 256, 9)
    batch["vote_label_mask"] = (torch.arange(256) % 2).expand(2, 256)
    terms = votenet_loss(pred, batch, NH, MEAN_SIZES)
    assert terms["positive_ratio"].item() > 0
    terms["loss"].backward()
    no_grad = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"no gradient for {no_grad}"


# ------------------------------------------------------------------------------------------ decoding
def prediction_from_targets(targets: dict[str, np.ndarray], mean_sizes: np.ndarray, num_heading_bins: int,
                            sem_cls: np.ndarray) -> dict[str, torch.Tensor]:
    """What a perfect network outputs for these encoded boxes: one-hot scores, the residuals at the true
    bin / cluster and noise everywhere else."""
    g = torch.Generator().manual_seed(1)
    k, nc = len(targets["center"]), len(mean_sizes)
    big = 30.0
    heading_scores = torch.zeros(1, k, num_heading_bins)
    heading_res = torch.randn(1, k, num_heading_bins, generator=g)
    size_scores = torch.zeros(1, k, nc)
    size_res = torch.randn(1, k, nc, 3, generator=g)
    sem = torch.zeros(1, k, nc)
    for i in range(k):
        heading_scores[0, i, targets["heading_class"][i]] = big
        heading_res[0, i, targets["heading_class"][i]] = float(targets["heading_residual"][i])
        size_scores[0, i, targets["size_class"][i]] = big
        size_res[0, i, targets["size_class"][i]] = torch.as_tensor(targets["size_residual"][i])
        sem[0, i, sem_cls[i]] = big
    return {"center": torch.as_tensor(targets["center"], dtype=torch.float32)[None],
            "heading_scores": heading_scores, "heading_residuals": heading_res, "size_scores": size_scores,
            "size_residuals": size_res, "mean_sizes": torch.as_tensor(mean_sizes, dtype=torch.float32),
            "objectness_scores": torch.tensor([[[0.0, big]]]).expand(1, k, 2), "sem_cls_scores": sem}


@pytest.mark.parametrize("num_heading_bins", [1, 12])
def test_decode_predictions_inverts_the_datasets_encoding(num_heading_bins: int) -> None:
    rng = np.random.default_rng(num_heading_bins)
    k, nc = 7, 5
    mean_sizes = rng.uniform(0.4, 2.0, (nc, 3))
    sem = rng.integers(0, nc, k)
    yaw = rng.uniform(-math.pi, math.pi, k) if num_heading_bins > 1 else np.zeros(k)
    boxes = np.concatenate([rng.uniform(-3, 3, (k, 3)), mean_sizes[sem] * rng.uniform(0.7, 1.3, (k, 3)),
                            yaw[:, None]], axis=1)
    pred = prediction_from_targets(encode_boxes(boxes, sem, mean_sizes, num_heading_bins), mean_sizes,
                                   num_heading_bins, sem)
    decoded, objectness, sem_probs = decode_predictions(pred, num_heading_bins)
    assert decoded.shape == (1, k, 7)
    np.testing.assert_allclose(decoded[0, :, :6].numpy(), boxes[:, :6], atol=1e-5)
    turn = (decoded[0, :, 6].double().numpy() - boxes[:, 6] + math.pi) % (2 * math.pi) - math.pi
    np.testing.assert_allclose(turn, 0.0, atol=1e-5)
    assert torch.all(objectness > 0.99)
    assert torch.equal(sem_probs.argmax(-1)[0], torch.as_tensor(sem))


def test_axis_aligned_decoding_drops_the_heading_residual() -> None:
    mean_sizes = np.ones((2, 3))
    boxes = np.array([[0.0, 0.0, 0.5, 1.0, 2.0, 1.0, 0.0]])
    targets = encode_boxes(boxes, np.array([1]), mean_sizes, 1)
    targets["heading_residual"] = np.array([0.05])  # what a ScanNet network predicts: near, not exactly, 0
    pred = prediction_from_targets(targets, mean_sizes, 1, np.array([1]))
    assert decode_predictions(pred, 1)[0][0, 0, 6].item() == pytest.approx(0.05)
    assert decode_predictions(pred, 1, axis_aligned=True)[0][0, 0, 6].item() == 0.0


# ---------------------------------------------------------------------------------- evaluation pipeline
def scene_with_boxes() -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Three boxes of two classes and points on (inside) them."""
    boxes = np.array([[0.0, 0.0, 0.5, 1.0, 0.8, 1.0, 0.0], [3.0, 1.0, 0.4, 2.0, 1.5, 0.8, 0.0],
                      [-2.0, 2.0, 0.45, 0.5, 0.5, 0.9, 0.0]])
    classes = np.array([2, 0, 2])
    rng = np.random.default_rng(0)
    points = np.concatenate([b[:3] + rng.uniform(-0.4, 0.4, (50, 3)) * b[3:6] for b in boxes])
    return boxes, classes, torch.as_tensor(points, dtype=torch.float32)


@pytest.mark.parametrize("remove_empty", [True, False])
def test_perfect_predictions_score_map_one_after_remove_empty_and_nms(remove_empty: bool) -> None:
    boxes, classes, points = scene_with_boxes()
    nc = 3
    mean_sizes = np.array([[1.5, 1.5, 0.8], [1.0, 1.0, 1.0], [0.8, 0.7, 0.9]])
    task = DetectionTask(PointNet2Backbone(in_channels=0, **TINY), num_classes=nc, remove_empty_box=remove_empty)
    task.network.proposal.mean_sizes.copy_(torch.as_tensor(mean_sizes))
    # proposals: the three boxes, a near-duplicate of box 0 (NMS), and a confident box where no point is
    dup = boxes[0] + np.array([0.05, 0, 0, 0, 0, 0, 0])
    empty = np.array([10.0, 10.0, 0.5, 1.0, 1.0, 1.0, 0.0])
    proposals = np.concatenate([boxes, dup[None], empty[None]])
    prop_classes = np.array([*classes, classes[0], classes[0]])
    pred = prediction_from_targets(encode_boxes(proposals, prop_classes, mean_sizes, 1), mean_sizes, 1,
                                   prop_classes)
    # class 2 ranks: empty 0.99, box 0 0.95, duplicate 0.9, box 2 0.85; an unsuppressed duplicate or a kept empty
    # box is a false positive ranked before a hit
    probability = torch.tensor([0.95, 0.8, 0.85, 0.9, 0.99])
    pred["objectness_scores"] = torch.stack([torch.log1p(-probability), torch.log(probability)], -1)[None]
    batch = {"points": points[None], **{k: v[None] for k, v in box_targets(boxes, classes, mean_sizes, 1).items()}}
    task._score(pred, batch, "val")
    result = task.maps["val"].compute()
    if remove_empty:
        assert result["mAP@0.25"].item() == pytest.approx(1.0)
        assert result["mAP@0.5"].item() == pytest.approx(1.0)
    else:  # class 2: precisions 1/2, 2/3 at recalls 1/2, 1; VOC's envelope takes 2/3 for both -> AP 2/3
        assert result["mAP@0.25"].item() == pytest.approx((2 / 3 + 1) / 2)


# ------------------------------------------------------------------------------ pretrained: no_height
def byol_export(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """backbone.pt as experiment=strl_votenet_scannet writes it (BYOL on an xyz-only PointNet++)."""
    torch.manual_seed(5)
    backbone = PointNet2Backbone(in_channels=0, **TINY)
    with torch.no_grad():  # not an initialisation: loading must be told apart from a fresh network
        for p in backbone.parameters():
            p.add_(torch.randn_like(p))
    views = OmegaConf.load(Path(CONFIG_DIR) / "method/views/strl_scene.yaml")
    views.num_points = 64
    module = BYOL(backbone, optimizer=partial(torch.optim.Adam), views=instantiate(views), hidden_dim=16,
                  projection_dim=8)
    path = module.export(tmp_path, {"note": "test"})[0]
    return path, {k: v.clone() for k, v in backbone.state_dict().items()}


def test_byol_export_loads_fully_into_an_xyz_only_votenet(tmp_path, capsys) -> None:
    path, source = byol_export(tmp_path)
    task = DetectionTask(PointNet2Backbone(in_channels=0, **TINY), num_classes=4, pretrained=str(path))
    assert task.transfer_report.complete
    for key, value in task.backbone.state_dict().items():
        assert torch.equal(value, source[key]), key
    out = capsys.readouterr().out
    assert "xyz only (no_height)" in out and f"transferred {len(source)} / {len(source)} tensors" in out


def test_byol_export_into_a_height_votenet_is_refused_with_the_no_height_fix(tmp_path, capsys) -> None:
    path, source = byol_export(tmp_path)
    with pytest.raises(CheckpointError, match="no_height") as err:
        DetectionTask(PointNet2Backbone(in_channels=1, **TINY), num_classes=4, pretrained=str(path))
    assert "in_channels=0" in str(err.value)
    # told to, it loads all but the input layer and says so
    task = DetectionTask(PointNet2Backbone(in_channels=1, **TINY), num_classes=4, pretrained=str(path),
                         allow_partial_load=True)
    first = "sa1.mlp_module.layer0.conv.weight"
    assert task.transfer_report.missing == [first]
    assert torch.equal(task.backbone.state_dict()["fp2.mlp.layer1.conv.weight"], source["fp2.mlp.layer1.conv.weight"])
    out = capsys.readouterr().out
    assert "xyz + 1 feature(s)" in out and first in out


def test_srunet_checkpoint_loads_into_the_seed_backbones_unet(tmp_path, capsys) -> None:
    pytest.importorskip("MinkowskiEngine")
    from selfsup_pcd.checkpoints import save_backbone
    from selfsup_pcd.models.backbones.srunet import SRUNet
    from selfsup_pcd.models.backbones.srunet_seeds import SRUNetSeeds

    torch.manual_seed(2)
    source = SRUNet(1, None, "Res16UNet14A")
    path = tmp_path / "srunet.pt"
    save_backbone(path, source)
    task = DetectionTask(SRUNetSeeds(in_channels=0, voxel_size=0.1, num_seeds=16, out_dim=32, arch="Res16UNet14A"),
                         num_classes=3, pretrained=str(path))
    assert task.transfer_report.complete
    key = "net.conv0p1s1.kernel"
    assert torch.equal(task.backbone.unet.state_dict()[key], source.state_dict()[key])
    assert "SRUNetSeeds backbone, input xyz only (no_height)" in capsys.readouterr().out


def test_setup_refuses_a_backbone_whose_input_differs_from_the_data() -> None:
    class Data:
        num_heading_bins, num_input_features, class_names = 1, 1, ["a", "b"]
        mean_sizes = np.ones((2, 3))

    class Trainer:
        datamodule = Data()

    task = DetectionTask(PointNet2Backbone(in_channels=0, **TINY), num_classes=2)
    task._trainer = Trainer()
    with pytest.raises(ValueError, match="in_channels=1"):
        task.setup("fit")
    Data.num_input_features = 0
    task.setup("fit")
    assert task.maps["val"].class_names == ["a", "b"]
    assert torch.equal(task.network.proposal.mean_sizes, torch.ones(2, 3))
    Data.num_heading_bins = 12
    with pytest.raises(ValueError, match="num_heading_bins=12"):
        task.setup("fit")
