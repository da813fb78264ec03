"""MVR: multi-view-rendering pretraining of a point backbone (Tran et al., ACCV 2022; spec §3–§7).

A frozen 2D teacher (``MultiViewTeacher``) sees the rendered views; the point student (PointNet or DGCNN)
sees the points. Losses (spec §5), each weight configurable:

* ``L_point``: NT-Xent (τ = 0.5) between each object's sampled pixel and point embeddings, negatives
  within the object only (``nt_xent`` with one group per object). Pixel embeddings come from the
  trainable 1×1 pixel head on the teacher's trunk maps, read at the paired pixels of the maps upsampled
  to the image grid (``PixelHead``); point embeddings from ``point_project`` on the per-point features.
* ``L_global``: MSE between the student's projected global feature and the teacher's global embedding
  (detached: the teacher is frozen).
* ``L_reg``: PointNet's feature-transform regulariser, summed over the batch by default (quirk 6).

The teacher is frozen and in eval mode (``teacher.bn_mode: eval``); ``bn_mode: train`` keeps its
BatchNorm layers in train mode as the original does (quirk 1; batch statistics, so it needs the online
teacher). With ``teacher.online: false`` (default) the trunk's maps are computed once per dataset
(``mvr_teacher_cache``) at the start of fit and the datamodule ships them instead of the images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup_pcd.methods.base import OptimizerFactory, PretrainMethod, SchedulerFactory
from selfsup_pcd.methods.losses import nt_xent
from selfsup_pcd.models.heads import GlobalProjectionHead, PixelHead, PointProjectionHead
from selfsup_pcd.models.image import MultiViewTeacher, load_teacher
from selfsup_pcd.tasks.losses import orthogonality_penalty

log = logging.getLogger(__name__)

# ``teacher`` options: the network (MultiViewTeacher arguments), where its weights come from and how it runs.
TEACHER_DEFAULTS: dict[str, Any] = {
    "arch": "resnet50", "small_stem": True, "view_dim": 1024, "hidden_dim": 512, "out_dim": 128,
    "input_norm": None, "path": None, "strict_trunk": True, "bn_mode": "eval", "online": False,
    "cache_dtype": "float16", "cache_shapes_per_batch": 8,
}
_NETWORK_KEYS = ("arch", "small_stem", "view_dim", "hidden_dim", "out_dim", "input_norm")
LOSS_WEIGHTS = {"point": 1.0, "global": 1.0, "reg": 0.001}


def _plain(value: Any) -> Any:
    """Nested mappings / sequences (e.g. OmegaConf containers) as dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


class MVR(PretrainMethod):
    """Point student + frozen multi-view teacher with local (pixel↔point) and global objectives.

    ``teacher``: options of :data:`TEACHER_DEFAULTS` (``path`` null = random init, allowed with a warning
    for tests and demos). ``weights``: ``point``, ``global``, ``reg``. ``point_head_on``: ``all`` projects
    every point before picking the paired ones (the original: point-head BatchNorm statistics over all
    B·N points) or ``pairs`` (only the sampled points; cheaper, different BN statistics).
    """

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        teacher: Mapping[str, Any] | None = None,
        proj_dim: int = 128,
        hidden_dim: int = 512,
        temperature: float = 0.5,
        weights: Mapping[str, float] | None = None,
        reg_reduction: str = "sum",
        point_head_on: str = "all",
        pixel_head_order: str = "auto",
    ) -> None:
        super().__init__(backbone, optimizer, scheduler)
        # plain containers: Hydra passes DictConfigs, which weights-only checkpoint loading refuses
        teacher, weights = _plain(teacher or {}), _plain(weights or {})
        options = {**TEACHER_DEFAULTS, **teacher}
        unknown = set(options) - set(TEACHER_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown teacher options {sorted(unknown)}; known: {sorted(TEACHER_DEFAULTS)}")
        if options["bn_mode"] not in ("eval", "train"):
            raise ValueError(f"teacher.bn_mode must be eval or train, got {options['bn_mode']!r}")
        if options["bn_mode"] == "train" and not options["online"]:
            raise ValueError("teacher.bn_mode=train uses batch statistics, so the teacher's maps depend on the batch "
                             "and cannot be cached: set teacher.online=true")
        if point_head_on not in ("all", "pairs"):
            raise ValueError(f"point_head_on must be all or pairs, got {point_head_on!r}")
        loss_weights = {**LOSS_WEIGHTS, **weights}
        if set(loss_weights) != set(LOSS_WEIGHTS):
            raise ValueError(f"weights takes {sorted(LOSS_WEIGHTS)}, got {sorted(loss_weights)}")
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.teacher_options = options
        self.loss_weights = {k: float(v) for k, v in loss_weights.items()}
        self.temperature, self.reg_reduction, self.point_head_on = temperature, reg_reduction, point_head_on

        self.teacher = MultiViewTeacher(**{k: options[k] for k in _NETWORK_KEYS})
        if options["path"]:
            load_teacher(self.teacher, Path(options["path"]).expanduser(), strict_trunk=options["strict_trunk"])
        else:
            log.warning("MVR: teacher.path is null, the 2D teacher is randomly initialised (tests and demos only)")
        self.teacher.requires_grad_(False)
        self.pixel_head = PixelHead(self.teacher.trunk_dim, proj_dim, order=pixel_head_order)
        self.point_project = PointProjectionHead(backbone.point_dim, hidden_dim, proj_dim)
        self.global_project = GlobalProjectionHead(backbone.out_dim, hidden_dim, proj_dim)
        if self.teacher.out_dim != proj_dim:
            raise ValueError(f"teacher.out_dim={self.teacher.out_dim} must equal proj_dim={proj_dim} (global MSE)")
        self.teacher_features: Path | None = None

    # -- teacher ---------------------------------------------------------------------------------
    @property
    def online(self) -> bool:
        return bool(self.teacher_options["online"])

    def train(self, mode: bool = True) -> MVR:
        """Keeps the frozen teacher in eval mode unless ``teacher.bn_mode=train`` (the original's quirk 1)."""
        super().train(mode)
        if self.teacher_options["bn_mode"] == "eval":
            self.teacher.eval()
        return self

    def on_fit_start(self) -> None:
        """Cached teacher: computes (or finds) the trunk maps of every training view and hands them to the data."""
        if self.online:
            return
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "use_teacher_features"):
            raise ValueError("teacher.online=false needs a datamodule with a render cache (MVRDataModule); "
                             "set teacher.online=true to run the teacher on the batch's views")
        from selfsup_pcd.methods.mvr_teacher_cache import build_teacher_features, cache_key, feature_cache_path

        render_cache = datamodule.render_cache_path("train")
        dtype = self.teacher_options["cache_dtype"]
        if self.trainer.is_global_zero:
            build_teacher_features(self.teacher, render_cache, dtype, self.teacher_options["cache_shapes_per_batch"])
        self.trainer.strategy.barrier("mvr_teacher_features")
        self.teacher_features = feature_cache_path(render_cache, cache_key(self.teacher, render_cache, dtype))
        datamodule.use_teacher_features(self.teacher_features)

    def teacher_outputs(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(trunk maps (B·V, C, h, w), global target (B, out_dim)), without gradient."""
        with torch.no_grad():
            if "teacher_feats" in batch:
                cached = batch["teacher_feats"]
                feats = cached.flatten(0, 1).to(self.pixel_head.conv.weight.dtype)
                return feats, self.teacher.global_from_features(feats, cached.shape[1])
            if "views" not in batch:
                raise KeyError("an MVR batch needs `views` (online teacher) or `teacher_feats` (cached teacher)")
            feats, target = self.teacher(batch["views"])
            return feats, target

    # -- losses ----------------------------------------------------------------------------------
    def student_embeddings(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """(projected embeddings of the paired points (B, P, proj), projected global feature (B, proj),
        PointNet feature transform or None). A student with another input (voxels) overrides this."""
        index = batch["pairs"][..., 3].unsqueeze(-1)
        out = self.backbone(batch["points"], return_point_features=True)
        if self.point_head_on == "all":
            projected = self.point_project(out.point_feat)
            point = projected.gather(1, index.expand(-1, -1, projected.shape[-1]))
        else:
            picked = out.point_feat.gather(1, index.expand(-1, -1, out.point_feat.shape[-1]))
            point = self.point_project(picked)
        return point, self.global_project(out.global_feat), out.feature_transform

    def losses(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Every loss term of one batch and their weighted sum ``loss``."""
        pairs = batch["pairs"]
        batch_size, num_pairs, _ = pairs.shape
        point, global_feat, feature_transform = self.student_embeddings(batch)
        feats, target = self.teacher_outputs(batch)
        num_views = feats.shape[0] // batch_size
        image_size = tuple(int(s) for s in batch["image_size"])

        view = pairs[..., 0] + num_views * torch.arange(batch_size, device=pairs.device).unsqueeze(1)
        pixel = self.pixel_head(feats, view.reshape(-1), pairs[..., 1].reshape(-1), pairs[..., 2].reshape(-1),
                                image_size).view(batch_size, num_pairs, -1)
        terms = {
            "loss_point": nt_xent(point, pixel, self.temperature),
            "loss_global": F.mse_loss(global_feat, target.detach()),
        }
        if feature_transform is not None:
            terms["loss_reg"] = orthogonality_penalty(feature_transform, self.reg_reduction)
        weights = {"loss_point": "point", "loss_global": "global", "loss_reg": "reg"}
        terms["loss"] = sum(self.loss_weights[weights[name]] * value for name, value in terms.items())
        return terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        batch_size = batch["pairs"].shape[0]
        if batch_size < 2:  # every shape of the batch skipped for lack of pairs (or one left: no BN statistics)
            log.warning("MVR: batch %d has %d usable shapes, skipping the step", batch_idx, batch_size)
            return None
        terms = self.losses(batch)
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=True, prog_bar=name == "loss",
                     batch_size=batch_size)
        if "pair_shortage" in batch:
            self.log("train/pair_shortage", batch["pair_shortage"].float(), on_step=False, on_epoch=True,
                     reduce_fx="sum", batch_size=batch_size)
        return terms["loss"]
