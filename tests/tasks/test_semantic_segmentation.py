"""Semantic-segmentation task: room-level voting vs block level, the voxel path's de-voxelised metric, pretrained
encoders, the configs, and a short fit."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch import Tensor, nn
from torch.utils.data import DataLoader

from selfsup_pcd.checkpoints import CheckpointError, save_backbone
from selfsup_pcd.data.voxelize import IGNORE_INDEX
from selfsup_pcd.models.backbones import DGCNNSemsegEncoder, PointNetEncoder
from selfsup_pcd.models.semseg import DGCNNSegNetwork, PointNetSegNetwork
from selfsup_pcd.tasks.semantic_segmentation import CONFUSION_FILE, SemanticSegmentationTask
from selfsup_pcd.utils.hydra import CONFIG_DIR, register_resolvers

I = IGNORE_INDEX  # noqa: E741
NAMES = ["ceiling", "floor", "wall"]


def logit(probs: list[list[float]]) -> Tensor:
    """Logits whose softmax is ``probs``."""
    return torch.tensor(probs).clamp_min(1e-6).log()


class Identity3(nn.Module):
    """A real (trainable) layer set to the identity: the input channels are the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(3))
            self.linear.bias.zero_()

    def forward(self, points: Tensor) -> Tensor:
        return self.linear(points)


class VoxelNet(nn.Module):
    """Identity3 applied per voxel, called as a sparse network: (coords, feats) -> (M, classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = Identity3()

    def forward(self, coords: Tensor, feats: Tensor) -> Tensor:
        assert coords.shape == (feats.shape[0], 4)
        return self.layer(feats)


class FakeData(pl.LightningDataModule):
    """Fixed batches for val and test; ``room_labels`` only when ``rooms`` is given."""

    def __init__(self, batches: list[dict[str, Tensor]], rooms: list[np.ndarray] | None = None) -> None:
        super().__init__()
        self.batches, self.class_names = batches, NAMES
        if rooms is not None:
            self.room_labels = lambda stage: rooms

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)

    test_dataloader = val_dataloader


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kwargs)


def miou(confusion: list[list[int]]) -> float:
    """mIoU of a confusion (rows = targets) whose classes all occur: a loop for the tests' expected values."""
    c = len(confusion)
    ious = []
    for k in range(c):
        tp = confusion[k][k]
        union = sum(confusion[k]) + sum(confusion[r][k] for r in range(c)) - tp
        ious.append(tp / union)
    return sum(ious) / c


# Room 0: five points labelled 0, 1, 2, 1, 0; block A = points 0, 1, 3, 4 and block B = points 2, 3, 4, 2 (drawn
# with replacement) overlap at points 3 and 4, where they disagree:
# * point 3 (label 1): A (0.6, 0.4, 0) -> class 0, B (0, 0.45, 0.55) -> class 2; summed (0.6, 0.85, 0.55) -> 1, a
#   class neither block predicted (so not a first/last/most-confident block or a count majority);
# * point 4 (label 0): A (0.9, 0.1, 0) -> 0, B (0.05, 0.5, 0.45) -> 1; summed -> 0, while the product of the
#   probabilities (summed log-probabilities) would give class 1.
# Room 1: three points labelled 2, 2, ignore; block C = points 2, 0, 1, all correct.
ROOMS = [np.array([0, 1, 2, 1, 0]), np.array([2, 2, I])]
POINT_BATCHES = [
    {"points": torch.stack([logit([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.6, 0.4, 0.0], [0.9, 0.1, 0.0]]),
                            logit([[0.1, 0.1, 0.8], [0.0, 0.45, 0.55], [0.05, 0.5, 0.45], [0.2, 0.1, 0.7]])]),
     "labels": torch.tensor([[0, 1, 1, 0], [2, 1, 0, 2]]), "room": torch.tensor([0, 0]),
     "point_index": torch.tensor([[0, 1, 3, 4], [2, 3, 4, 2]])},
    {"points": logit([[0.3, 0.3, 0.4], [0.1, 0.1, 0.8], [0.2, 0.1, 0.7]]).unsqueeze(0),
     "labels": torch.tensor([[I, 2, 2]]), "room": torch.tensor([1]), "point_index": torch.tensor([[2, 0, 1]])},
]
# block level, counted by hand: (target, pred) = (0,0) (1,1) (1,0) (0,0) | (2,2) (1,2) (0,1) (2,2) | (2,2) (2,2)
BLOCK_CONFUSION = [[2, 1, 0], [1, 1, 1], [0, 0, 4]]
ROOM_CONFUSION = [[2, 0, 0], [0, 2, 0], [0, 0, 3]]  # every labelled original point right


@pytest.mark.parametrize("level", ["room", "block"])
def test_room_level_sums_block_probabilities(tmp_path, level):
    task = SemanticSegmentationTask(Identity3(), 3, metric_level=level)
    t = trainer(tmp_path)
    t.validate(task, datamodule=FakeData(POINT_BATCHES, ROOMS), verbose=False)
    m = {k: float(v) for k, v in t.callback_metrics.items()}
    assert m["val/miou_block"] == pytest.approx(miou(BLOCK_CONFUSION))
    assert m["val/oa_block"] == pytest.approx(7 / 10)
    assert m["val/miou_room"] == pytest.approx(1.0) and m["val/oa_room"] == pytest.approx(1.0)
    assert m["val/room_coverage"] == pytest.approx(1.0)
    assert m["val/miou"] == pytest.approx(m[f"val/miou_{level}"])
    assert m["val/iou_floor"] == pytest.approx(1.0 if level == "room" else 1 / 4)  # block: 1 / (3 + 2 - 1)

    t.test(task, datamodule=FakeData(POINT_BATCHES, ROOMS), verbose=False)
    saved = json.loads((tmp_path / CONFUSION_FILE).read_text())
    assert saved["class_names"] == NAMES and saved["headline"] == level
    assert saved["levels"]["block"]["confusion"] == BLOCK_CONFUSION
    assert saved["levels"]["room"]["confusion"] == ROOM_CONFUSION


def test_without_room_labels_block_level_is_the_headline(tmp_path):
    task = SemanticSegmentationTask(Identity3(), 3, metric_level="room")
    t = trainer(tmp_path)
    t.validate(task, datamodule=FakeData(POINT_BATCHES), verbose=False)
    m = {k: float(v) for k, v in t.callback_metrics.items()}
    assert "val/miou_room" not in m
    assert m["val/miou"] == pytest.approx(miou(BLOCK_CONFUSION))
    other = FakeData(POINT_BATCHES, ROOMS)
    other.ignore_index = 255
    with pytest.raises(ValueError, match="unlabelled points 255"):
        trainer(tmp_path).validate(task, datamodule=other, verbose=False)


def test_voxel_metric_scores_original_points_through_inverse(tmp_path):
    # 4 voxels labelled 0, 1, 2, 1 predicted 1, 1, 2, 1: voxel 0 (wrong) holds 4 of the 8 points, one point ignored
    batch = {"coords": torch.zeros(4, 4, dtype=torch.int32),
             "feats": logit([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]]),
             "labels": torch.tensor([0, 1, 2, 1]), "inverse": torch.tensor([0, 0, 0, 0, 1, 2, 2, 3]),
             "point_labels": torch.tensor([0, 0, 0, 0, 1, 2, I, 1]), "room": torch.tensor([0])}
    voxel_confusion = [[0, 1, 0], [0, 2, 0], [0, 0, 1]]
    point_confusion = [[0, 4, 0], [0, 2, 0], [0, 0, 1]]
    results = {}
    for level in ("point", "voxel"):
        task = SemanticSegmentationTask(VoxelNet(), 3, voxel_metric_level=level)
        t = trainer(tmp_path)
        t.test(task, datamodule=FakeData([batch]), verbose=False)
        results[level] = {k: float(v) for k, v in t.callback_metrics.items()}
    m = results["point"]
    # class 0 is never predicted: IoU 0; class 1: voxels 2 / 3, points 2 / 6; class 2: 1
    assert m["test/miou_voxel"] == pytest.approx((0 + 2 / 3 + 1) / 3)
    assert m["test/miou_point"] == pytest.approx((0 + 2 / 6 + 1) / 3)
    assert m["test/oa_voxel"] == pytest.approx(3 / 4) and m["test/oa_point"] == pytest.approx(3 / 7)
    assert m["test/miou"] == m["test/miou_point"]
    assert results["voxel"]["test/miou"] == pytest.approx(m["test/miou_voxel"])
    saved = json.loads((tmp_path / CONFUSION_FILE).read_text())
    assert saved["levels"]["voxel"]["confusion"] == voxel_confusion
    assert saved["levels"]["point"]["confusion"] == point_confusion
    assert math.isfinite(m["test/loss"])


def test_pretrained_strl_encoder_is_required_to_transfer_completely(tmp_path):
    save_backbone(tmp_path / "strl.pt", DGCNNSemsegEncoder(in_channels=3, k=20))
    strl = functools.partial(DGCNNSegNetwork, input_channels=(0, 3), knn_channels=(0, 3))
    task = SemanticSegmentationTask(DGCNNSemsegEncoder(in_channels=3, k=20), 13, network=strl,
                                    pretrained=str(tmp_path / "strl.pt"))
    assert task.transfer_report.complete and task.backbone is task.network.backbone
    with pytest.raises(CheckpointError, match="only partly transferred"):
        SemanticSegmentationTask(DGCNNSemsegEncoder(in_channels=9, k=20), 13, network=DGCNNSegNetwork,
                                 pretrained=str(tmp_path / "strl.pt"))
    frozen = SemanticSegmentationTask(DGCNNSemsegEncoder(in_channels=9, k=20), 13, network=DGCNNSegNetwork,
                                      pretrained=str(tmp_path / "strl.pt"), allow_partial_load=True,
                                      freeze_backbone=True)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert all(p.requires_grad for p in frozen.network.head.parameters())


@pytest.mark.parametrize("model, optimizer", [("dgcnn_seg", torch.optim.SGD), ("pointnet_seg", torch.optim.Adam)])
def test_configs_build_the_recipes(model, optimizer):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "task=semantic_segmentation", "trainer.max_epochs=100"])
    task = instantiate(cfg.task, backbone=instantiate(cfg.model.backbone), num_classes=13)
    assert task.network.head.mlp[-1].out_features == 13
    opt = task.configure_optimizers()
    assert isinstance(opt["optimizer"], optimizer)
    sched = opt["lr_scheduler"]["scheduler"]
    for _ in range(100):
        opt["optimizer"].step()
        sched.step()
    # cosine to 1e-3 after 100 epochs (DGCNN); x0.5 every 20 epochs from 1e-3 (PointNet)
    lr = opt["optimizer"].param_groups[0]["lr"]
    assert lr == pytest.approx(1e-3 if model == "dgcnn_seg" else 1e-3 * 0.5 ** 5)
    if model == "dgcnn_seg":
        assert task.hparams.label_smoothing == 0.2
    else:
        assert isinstance(task.network, PointNetSegNetwork) and not task.network.use_feature_transform_output


# -- a short fit ---------------------------------------------------------------------------------------------
def synthetic_blocks(seed: int, rooms: int = 2, points: int = 160, block: int = 40, train: bool = True):
    """Rooms whose label is decided by position (3 classes by x), and 9-channel blocks of them."""
    rng = np.random.default_rng(seed)
    labels, batches = [], []
    for r in range(rooms):
        xyz = rng.uniform(-1, 1, size=(points, 3)).astype(np.float32)
        label = np.digitize(xyz[:, 0], [-0.33, 0.33])
        labels.append(label)
        feats = np.concatenate([xyz, np.full((points, 3), 0.5, np.float32), (xyz + 1) / 2], axis=1)
        orders = [rng.permutation(points) for _ in range(3)] if train else [np.arange(points)]
        idx = np.concatenate(orders).reshape(-1, block)
        for i in range(0, len(idx), 4):
            chunk = idx[i:i + 4]
            batches.append({"points": torch.from_numpy(feats[chunk]), "labels": torch.from_numpy(label[chunk]),
                            "room": torch.full((len(chunk),), r), "point_index": torch.from_numpy(chunk)})
    return batches, labels


class SyntheticRooms(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.train, _ = synthetic_blocks(0)
        self.val, self.rooms = synthetic_blocks(1, train=False)
        self.class_names = NAMES

    def room_labels(self, stage: str) -> list[np.ndarray]:
        return self.rooms

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=None, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=None)


class EpochLosses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss_epoch"]))


def test_short_fit_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    encoder = PointNetEncoder(in_channels=9, mlp1=(16, 16), mlp2=(16, 32), input_transform=False)
    network = functools.partial(PointNetSegNetwork, hidden=(32, 16))
    task = SemanticSegmentationTask(encoder, 3, network=network,
                                    optimizer=functools.partial(torch.optim.Adam, lr=0.01))
    losses = EpochLosses()
    t = trainer(tmp_path, max_epochs=6, callbacks=[losses], num_sanity_val_steps=0)
    t.fit(task, datamodule=SyntheticRooms())
    assert losses.losses[-1] < 0.7 * losses.losses[0]
    m = {k: float(v) for k, v in t.callback_metrics.items()}
    assert m["val/room_coverage"] == 1.0
    assert 0.0 <= m["val/miou"] <= 1.0 and m["val/miou"] == m["val/miou_room"]
    assert m["val/miou_best"] >= m["val/miou"]
