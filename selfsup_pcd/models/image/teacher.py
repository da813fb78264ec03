"""The multi-view 2D teacher of MVR (spec §4: ``Model2D_MV`` / ``Model2D_pixel`` without the pixel head).

A torchvision ResNet trunk ``f`` (optionally with the small-image stem of leftthomas/SimCLR: 3×3 stride-1
first conv, no max-pool), a view projection ``t`` and a projection head ``g`` applied to the max over views.
Parameter names follow the original checkpoint (``f.0`` … ``f.6``, ``t``, ``g``) so a released teacher
loads unchanged. Inputs are images in [0, 1] without mean/std normalisation (the original used
``ToTensor`` only); ``input_norm="imagenet"`` normalises for ImageNet-pretrained torchvision weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from selfsup_pcd.checkpoints import (
    CheckpointError,
    TransferReport,
    atomic_torch_save,
    best_prefix,
    read_state_dict,
    transfer_state,
)

log = logging.getLogger(__name__)

TEACHER_FORMAT = "selfsup_pcd/teacher"
TEACHER_FORMAT_VERSION = 1
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# the constructor arguments that define the architecture (checked when a teacher file is loaded)
_CONFIG_KEYS = ("arch", "small_stem", "view_dim", "hidden_dim", "out_dim")


class MultiViewTeacher(nn.Module):
    """Spec §4 Model2D_MV/Model2D_pixel minus the trainable pixel head.

    ``f``: the ResNet trunk (conv1, bn1, relu, [maxpool unless ``small_stem``], layer1..layer4), no pooling
    or FC — 4×4 maps at 32×32 input with the small stem. ``t``: Linear trunk_dim → view_dim (no bias) per
    view; the max over views then ``g``: Linear → BN1d → ReLU → Linear gives the shape's global embedding.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        small_stem: bool = True,
        view_dim: int = 1024,
        hidden_dim: int = 512,
        out_dim: int = 128,
        input_norm: str | None = None,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown teacher arch {arch!r}; choose one of {ARCHS}")
        if input_norm not in (None, "imagenet"):
            raise ValueError(f"input_norm must be None or 'imagenet', got {input_norm!r}")
        self.arch, self.small_stem = arch, small_stem
        self.view_dim, self.hidden_dim, self.out_dim, self.input_norm = view_dim, hidden_dim, out_dim, input_norm
        resnet = getattr(torchvision.models, arch)(weights=None)
        self.trunk_dim: int = resnet.fc.in_features
        modules: list[nn.Module] = []
        # torchvision child name -> index in f, for loading torchvision-format state dicts
        self.torchvision_index: dict[str, int] = {}
        for name, module in resnet.named_children():
            if name in ("avgpool", "fc") or (small_stem and name == "maxpool"):
                continue
            if name == "conv1" and small_stem:
                module = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.torchvision_index[name] = len(modules)
            modules.append(module)
        self.f = nn.Sequential(*modules)
        self.t = nn.Linear(self.trunk_dim, view_dim, bias=False)
        self.g = nn.Sequential(
            nn.Linear(view_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        mean, std = (_IMAGENET_MEAN, _IMAGENET_STD) if input_norm == "imagenet" else ((0.0,) * 3, (1.0,) * 3)
        # not persistent: checkpoints of the original (which has no such buffers) load without missing keys
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def config(self) -> dict[str, Any]:
        """Constructor arguments; stored in teacher files so they rebuild the same network."""
        return {"arch": self.arch, "small_stem": self.small_stem, "view_dim": self.view_dim,
                "hidden_dim": self.hidden_dim, "out_dim": self.out_dim, "input_norm": self.input_norm}

    def trunk_features(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) float in [0, 1] -> (N, trunk_dim, h, w); h = H / 8 with the small stem."""
        if self.input_norm is not None:
            images = (images - self.input_mean) / self.input_std
        return self.f(images)

    def global_from_features(self, feats: Tensor, num_views: int) -> Tensor:
        """(B·V, C, h, w) trunk maps -> avg-pool -> t -> max over the V views -> g -> (B, out_dim)."""
        if feats.shape[0] % num_views:
            raise ValueError(f"{feats.shape[0]} feature maps are not a multiple of num_views={num_views}")
        per_view = self.t(F.adaptive_avg_pool2d(feats, 1).flatten(1))
        pooled = per_view.view(-1, num_views, per_view.shape[-1]).amax(dim=1)
        return self.g(pooled)

    def forward(self, views: Tensor) -> tuple[Tensor, Tensor]:
        """(B, V, 3, H, W) -> (trunk maps (B·V, C, h, w), global embedding (B, out_dim), not normalised)."""
        if views.dim() != 5:
            raise ValueError(f"views must be (B, V, 3, H, W), got shape {tuple(views.shape)}")
        feats = self.trunk_features(views.flatten(0, 1))
        return feats, self.global_from_features(feats, views.shape[1])

    def torchvision_to_f(self, key: str) -> str | None:
        """``layer1.0.conv1.weight`` -> ``f.3.0.conv1.weight`` (small stem); None for keys outside the trunk."""
        head, _, rest = key.partition(".")
        index = self.torchvision_index.get(head)
        return None if index is None else f"f.{index}.{rest}"


def save_teacher(path: str | Path, teacher: MultiViewTeacher, meta: Mapping[str, Any] | None = None) -> None:
    """Writes the teacher's weights with its constructor arguments (atomic)."""
    payload = {
        "format": TEACHER_FORMAT,
        "version": TEACHER_FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in teacher.state_dict().items()},
        "meta": {**dict(meta or {}), **teacher.config()},
    }
    atomic_torch_save(payload, path)


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """State dict and, for our own teacher files, their meta."""
    if not path.is_file():
        raise CheckpointError(f"teacher checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({err})") from err
    if isinstance(obj, Mapping) and obj.get("format") == TEACHER_FORMAT:
        if obj.get("version", 0) > TEACHER_FORMAT_VERSION:
            raise CheckpointError(f"{path}: teacher format version {obj['version']} is newer than this code")
        return dict(obj["state_dict"]), dict(obj.get("meta", {}))
    return read_state_dict(path)[0], None


def _torchvision_state(teacher: MultiViewTeacher, state: Mapping[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Renames a torchvision ResNet state dict (any prefix) onto ``f``; ``fc`` and other keys stay unmapped."""
    tv_keys = {f"{name}.{rest}" for name, index in teacher.torchvision_index.items()
               for rest in teacher.f[index].state_dict()}
    prefix = best_prefix(state, tv_keys)
    conv1 = state.get(f"{prefix}conv1.weight")
    if conv1 is None or f"{prefix}layer1.0.conv1.weight" not in state:
        raise CheckpointError(
            f"{path}: not a teacher checkpoint: expected the original MVR teacher keys (f.0.weight, f.1.*, ..., "
            f"t.weight, g.*), a torchvision ResNet state dict (conv1.weight, bn1.*, layer1..4.*) or a "
            f"{TEACHER_FORMAT} file; found keys {list(state)[:8]}")
    expected = teacher.f[0].kernel_size[0]
    if conv1.dim() != 4 or conv1.shape[-1] != expected:
        stem = "small stem (3x3 stride-1 conv1)" if teacher.small_stem else "standard stem (7x7 conv1)"
        raise CheckpointError(
            f"{path}: conv1 is {tuple(conv1.shape)} but the teacher has the {stem}; build it with "
            f"small_stem={not teacher.small_stem} to load these weights")
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(prefix):
            target = teacher.torchvision_to_f(key[len(prefix):])
            mapped[target if target is not None else f"<unmapped>.{key[len(prefix):]}"] = value
    return mapped


def load_teacher(teacher: MultiViewTeacher, path: str | Path, strict_trunk: bool = True) -> TransferReport:
    """Loads teacher weights from (a) the original MVR checkpoint (keys ``f.*``, ``t``, ``g``, any prefix such
    as ``module.``), (b) a torchvision-format ResNet state dict (``fc`` ignored; ``t``/``g`` stay at their
    initialisation) or (c) a file of :func:`save_teacher`.

    Raises :class:`CheckpointError` naming the file for an unknown layout, a stem or architecture that does
    not fit, and — with ``strict_trunk`` — any trunk tensor left unloaded. Returns the transfer report.
    """
    path = Path(path)
    state, meta = _read(path)
    if meta is not None:
        theirs = {k: meta.get(k) for k in _CONFIG_KEYS}
        ours = {k: teacher.config()[k] for k in _CONFIG_KEYS}
        if theirs != ours:
            raise CheckpointError(f"{path}: teacher file was saved for {theirs}, the network is {ours}")
        if "input_norm" in meta and meta["input_norm"] != teacher.input_norm:
            # the weights fit, but the images it learned from were normalised differently: features shift
            log.warning("%s: teacher trained with input_norm=%s, loaded into input_norm=%s (set "
                        "method.teacher.input_norm=%s to match)", path, meta["input_norm"], teacher.input_norm,
                        meta["input_norm"])
    target = teacher.state_dict()
    prefix = best_prefix(state, set(target))
    if f"{prefix}f.0.weight" in state:
        report = transfer_state(teacher, state, prefix=prefix, source=str(path))
    else:
        report = transfer_state(teacher, _torchvision_state(teacher, state, path), prefix="", source=str(path))
    trunk_missing = [k for k in report.missing if k.startswith("f.")]
    if trunk_missing and strict_trunk:
        raise CheckpointError(f"{path}: trunk tensors missing or of another shape (arch {teacher.arch}?).\n"
                              f"{report.summary()}")
    if report.missing:
        log.warning("Teacher load left tensors at their initialisation:\n%s", report.summary())
    else:
        log.info(report.summary())
    return report


def teacher_from_file(path: str | Path, strict_trunk: bool = True, **kwargs: Any) -> MultiViewTeacher:
    """Builds the teacher a file describes (our format carries its constructor arguments; ``kwargs`` fill in
    or override them, e.g. ``arch`` for the original checkpoint) and loads it."""
    path = Path(path)
    _, meta = _read(path)
    config = {k: meta[k] for k in (*_CONFIG_KEYS, "input_norm") if k in meta} if meta else {}
    config.update(kwargs)
    teacher = MultiViewTeacher(**config)
    load_teacher(teacher, path, strict_trunk=strict_trunk)
    return teacher
