"""3D object detection with VoteNet (ScanNet, SUN RGB-D; ``downstream.md`` §6).

Trains :class:`~selfsup_pcd.models.detection.votenet.VoteNet` on a backbone (PointNet++ or SR-UNet seeds) with
VoteNet's loss (``tasks.votenet_loss``). Validation and test decode every proposal's box, drop proposals with no
input point inside (VoteNet's ``remove_empty_box``), run VoteNet's post-processing (3D NMS at ``nms_iou``,
per class; objectness ≥ ``conf_threshold``; one box per class scored objectness × class probability) and score
them with ``DetectionMAP``: ``<stage>/map_25`` and ``<stage>/map_50`` (mAP at IoU 0.25 / 0.5) and
``<stage>/ap_25/<class>``. ``val/map_25_best`` is the best validation value over epochs; the reported figures are
the last epoch's ``test/*`` (``eval.selection``-style best-on-test is not offered: quirk 1 of the spec).

Pretrained weights (``pretrained``): a seed backbone (``PointNet2Backbone``, ``SRUNetSeeds``: anything with
``input_layer_keys``) loads through ``models.backbones.pointnet2.load_pretrained``, SR-UNet checkpoints into
``SRUNetSeeds.unet``, and the report is printed. Its input layer must fit: STRL pretrains on xyz only, so the
detector needs ``in_channels=0`` (VoteNet's ``--no_height``); an xyz-only export into a height backbone is refused
with that fix unless ``allow_partial_load`` (all but the input layer, reported). Other backbones go through
``SupervisedTask.init_encoder``. At set-up the backbone's ``in_channels`` must equal the datamodule's
``num_input_features`` (height / colour), so a mismatch fails before the first batch with the fix.

ScanNet's boxes are axis-aligned (datamodule ``axis_aligned``): predicted boxes are then decoded with yaw 0, as
VoteNet's ScanNet ``class2angle`` does, whatever the (trained towards 0) heading residual says.

The size clusters (one mean size per class) come from the datamodule (``mean_sizes``, computed from the
training boxes) at set-up and are kept in checkpoints, so a resumed or tested run decodes with the sizes it
trained with. ``num_heading_bins`` must match the datamodule's (ScanNet 1, SUN RGB-D 12).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from selfsup_pcd.checkpoints import TransferReport
from selfsup_pcd.data.boxes import decode_boxes
from selfsup_pcd.metrics.detection import DetectionMAP, select_detections
from selfsup_pcd.models.backbones.pointnet2 import load_pretrained as load_seed_backbone
from selfsup_pcd.models.detection.votenet import VoteNet
from selfsup_pcd.tasks.base import OptimizerFactory, SchedulerFactory, SupervisedTask
from selfsup_pcd.tasks.votenet_loss import votenet_loss


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def decode_predictions(pred: dict[str, Tensor], num_heading_bins: int,
                       axis_aligned: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(boxes (B, K, 7), objectness probability (B, K), class probabilities (B, K, C)) of every proposal;
    ``axis_aligned`` sets every yaw to 0 (ScanNet)."""
    heading_cls = pred["heading_scores"].argmax(-1)
    heading_res = pred["heading_residuals"].gather(-1, heading_cls.unsqueeze(-1)).squeeze(-1)
    size_cls = pred["size_scores"].argmax(-1)
    index = size_cls.view(*size_cls.shape, 1, 1).expand(*size_cls.shape, 1, 3)
    size_res = pred["size_residuals"].gather(2, index).squeeze(2)
    boxes = decode_boxes(pred["center"], heading_cls, heading_res, size_cls, size_res,
                         pred["mean_sizes"], num_heading_bins)
    boxes = boxes.to(pred["center"].dtype)
    if axis_aligned:
        boxes = torch.cat([boxes[..., :6], torch.zeros_like(boxes[..., 6:])], dim=-1)
    return (boxes, pred["objectness_scores"].softmax(-1)[..., 1],
            pred["sem_cls_scores"].softmax(-1))


def is_seed_backbone(backbone: nn.Module) -> bool:
    """Seed backbones name their input layer, which is what the no_height rule of a pretrained load is about."""
    return callable(getattr(backbone, "input_layer_keys", None))


def load_pretrained_seeds(backbone: nn.Module, path: str, allow_input_mismatch: bool = False) -> TransferReport:
    """Loads a pretrained export into a seed backbone and prints what was loaded, with the input features."""
    report = load_seed_backbone(backbone, path, allow_input_mismatch=allow_input_mismatch)
    channels = int(getattr(backbone, "in_channels", 0))
    inputs = "xyz only (no_height)" if channels == 0 else f"xyz + {channels} feature(s) (height / colour)"
    print(f"Pretrained {type(backbone).__name__} backbone, input {inputs}, from {path}:")
    print(report.summary())
    if report.missing:
        print(f"  not loaded (initialised from scratch): {', '.join(report.missing)}")
    return report


def boxes_with_points(points: Tensor, boxes: Tensor) -> Tensor:
    """(K,) bool: box k (upright, yaw) holds at least one of ``points`` (N, 3)."""
    d = points[:, None, :3] - boxes[None, :, :3]
    c, s = torch.cos(boxes[:, 6]), torch.sin(boxes[:, 6])
    local = torch.stack([d[..., 0] * c + d[..., 1] * s, -d[..., 0] * s + d[..., 1] * c, d[..., 2]], dim=-1)
    return (local.abs() <= boxes[None, :, 3:6] / 2).all(-1).any(0)


class DetectionTask(SupervisedTask):
    """VoteNet on ``backbone``; see the module docstring. ``num_classes`` is the datamodule's class count."""

    best_metric = "val/map_25"
    best_key = "best_val_map_25"

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        num_heading_bins: int = 1,
        num_proposals: int = 256,
        vote_radius: float = 0.3,
        vote_nsample: int = 16,
        nms_iou: float = 0.25,
        conf_threshold: float = 0.05,
        per_class_nms: bool = True,
        per_class_proposal: bool = True,
        remove_empty_box: bool = True,
        pretrained: str | None = None,
        transfer_mode: str = "remap",
        allow_partial_load: bool = False,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.num_classes, self.num_heading_bins = num_classes, num_heading_bins
        self.network = VoteNet(backbone, num_classes, num_heading_bins, torch.ones(num_classes, 3), num_proposals,
                               vote_radius, vote_nsample)
        # set from the datamodule at set-up unless a checkpoint brings them (state dict loads after setup)
        self.register_buffer("sizes_from_data", torch.tensor(False))
        self.init_encoder(self.network, pretrained, transfer_mode, allow_partial_load, freeze_backbone)
        self.optimizer_factory = optimizer if optimizer is not None else default_optimizer
        self.scheduler_factory = scheduler
        self.post = {"nms_iou": nms_iou, "conf_threshold": conf_threshold, "per_class_nms": per_class_nms,
                     "per_class_proposal": per_class_proposal}
        self.remove_empty_box = remove_empty_box
        self.maps = nn.ModuleDict({s: DetectionMAP(num_classes) for s in ("val", "test")})
        self.class_names: list[str] | None = None
        self.axis_aligned = False

    @property
    def backbone(self) -> nn.Module:
        return self.network.backbone

    def load_encoder(self, target: nn.Module, pretrained: str, transfer_mode: str, allow_partial_load: bool) -> Any:
        """Seed backbones load by name with the height (no_height) rule; other backbones by layer transfer."""
        if not is_seed_backbone(self.backbone):
            return super().load_encoder(target, pretrained, transfer_mode, allow_partial_load)
        if transfer_mode != "remap":
            raise ValueError(f"a seed backbone loads by name (transfer_mode=remap), got {transfer_mode!r}")
        return load_pretrained_seeds(self.backbone, pretrained, allow_partial_load)

    def setup(self, stage: str | None = None) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        bins = getattr(datamodule, "num_heading_bins", self.num_heading_bins)
        if bins != self.num_heading_bins:
            raise ValueError(f"the datamodule encodes headings in {bins} bins but task.num_heading_bins="
                             f"{self.num_heading_bins}; set task.num_heading_bins={bins}")
        features = getattr(datamodule, "num_input_features", None)
        channels = getattr(self.backbone, "in_channels", None)
        if features is not None and channels is not None and int(features) != int(channels):
            raise ValueError(f"the datamodule gives {features} feature(s) after xyz (height / colour) but the backbone "
                             f"takes in_channels={channels}; set model.backbone.in_channels={features} or change "
                             "data.use_height / data.use_color (a pretrained xyz-only backbone needs 0: no_height)")
        self.axis_aligned = bool(getattr(datamodule, "axis_aligned", False))
        self.class_names = list(getattr(datamodule, "class_names", []) or []) or None
        if self.class_names is not None and len(self.class_names) == self.num_classes:
            for metric in self.maps.values():
                metric.class_names = list(self.class_names)
        if not bool(self.sizes_from_data) and hasattr(datamodule, "mean_sizes"):
            sizes = torch.as_tensor(datamodule.mean_sizes, dtype=torch.float32)
            self.network.proposal.mean_sizes.copy_(sizes)
            self.sizes_from_data.fill_(True)

    def forward(self, points: Tensor) -> dict[str, Tensor]:
        pred = self.network(points)
        pred["mean_sizes"] = self.network.proposal.mean_sizes
        return pred

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        pred = self(batch["points"])
        terms = votenet_loss(pred, batch, self.num_heading_bins, self.network.proposal.mean_sizes)
        size = batch["points"].shape[0]
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, prog_bar=name == "loss",
                     batch_size=size)
        if stage != "train":
            self._score(pred, batch, stage)
        return terms["loss"]

    @torch.no_grad()
    def _score(self, pred: dict[str, Tensor], batch: dict[str, Tensor], stage: str) -> None:
        boxes, objectness, sem_probs = decode_predictions(pred, self.num_heading_bins, self.axis_aligned)
        det_boxes, det_scores, det_classes = [], [], []
        for b in range(boxes.shape[0]):
            valid = boxes_with_points(batch["points"][b], boxes[b]) if self.remove_empty_box else None
            out = select_detections(boxes[b], objectness[b], sem_probs[b], valid=valid, **self.post)
            det_boxes.append(out[0])
            det_scores.append(out[1])
            det_classes.append(out[2])
        self.maps[stage].update(det_boxes, det_scores, det_classes, batch["gt_boxes"], batch["sem_cls_label"],
                                gt_mask=batch["box_label_mask"] > 0)

    def _log_epoch(self, stage: str) -> float:
        if stage == "train":
            return 0.0
        result = self.maps[stage].compute()
        self.maps[stage].reset()
        value = 0.0
        for key, metric in result.items():
            name = key.replace("mAP@0.25", "map_25").replace("mAP@0.5", "map_50").replace("AP@0.25", "ap_25") \
                .replace("AP@0.5", "ap_50").replace("AR@0.25", "ar_25").replace("AR@0.5", "ar_50")
            self.log(f"{stage}/{name}", float(metric))
            if name == "map_25":
                value = float(metric)
        return value
