"""The one backbone checkpoint format, and the one loader every task uses.

A backbone file is ``{"format": "selfsup_pcd/backbone", "version": 1, "backbone_class": ..., "state_dict":
..., "meta": {...}}``. The loader also reads Lightning checkpoints of this project (keys under ``backbone.``),
exports of the original projects (``{"state_dict": ...}`` / ``{"model_state_dict": ...}``) and plain state
dicts. It maps key prefixes, drops tensors whose shapes differ, and reports what was and was not loaded:
a partial load raises unless explicitly allowed, and is then always printed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

BACKBONE_FORMAT = "selfsup_pcd/backbone"
BACKBONE_FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not fit the network it is loaded into."""


@dataclass
class TransferReport:
    """What a load moved from a checkpoint into a network."""

    source: str
    prefix: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.loaded) + len(self.missing)

    @property
    def complete(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        lines = [
            f"Transfer from {self.source} (prefix {self.prefix!r}): transferred {len(self.loaded)} / "
            f"{self.total} tensors"
        ]
        if self.missing:
            lines.append(f"  missing in checkpoint ({len(self.missing)}): {', '.join(self.missing[:12])}"
                         + (" ..." if len(self.missing) > 12 else ""))
        if self.shape_mismatch:
            lines.append("  shape mismatch (not loaded): "
                         + ", ".join(f"{k} {tuple(s)}->{tuple(d)}" for k, s, d in self.shape_mismatch[:12]))
        if self.unexpected:
            lines.append(f"  unused checkpoint tensors ({len(self.unexpected)}): "
                         + ", ".join(self.unexpected[:12]) + (" ..." if len(self.unexpected) > 12 else ""))
        return "\n".join(lines)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Saves through a temporary file and a rename, so a crash never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_backbone(path: str | Path, backbone: nn.Module, meta: Mapping[str, Any] | None = None) -> None:
    """Writes ``backbone``'s weights in the project's backbone format."""
    cls = type(backbone)
    payload = {
        "format": BACKBONE_FORMAT,
        "version": BACKBONE_FORMAT_VERSION,
        "backbone_class": f"{cls.__module__}.{cls.__qualname__}",
        "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "meta": dict(meta or {}),
    }
    atomic_torch_save(payload, path)


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of any supported checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({err})") from err
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == BACKBONE_FORMAT:
        if obj.get("version", 0) > BACKBONE_FORMAT_VERSION:
            raise CheckpointError(f"{path}: backbone format version {obj['version']} is newer than this code")
        meta = {"kind": "backbone", "backbone_class": obj.get("backbone_class"), **obj.get("meta", {})}
        state = obj["state_dict"]
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        meta = {"kind": "lightning" if "pytorch-lightning_version" in obj else "state_dict_wrapper"}
        state = obj["state_dict"]
    elif isinstance(obj, Mapping) and "model_state_dict" in obj:
        meta = {"kind": "model_state_dict"}
        state = obj["model_state_dict"]
    elif isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values()):
        meta = {"kind": "plain"}
        state = obj
    else:
        found = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: no state dict found (found {found})")
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}, meta


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def best_prefix(state: Mapping[str, Tensor], target_keys: set[str]) -> str:
    """The prefix whose stripping makes the most checkpoint keys name a target tensor.

    Candidates are read off the keys themselves (``a.b.conv1.weight`` ending in target ``conv1.weight``
    gives ``a.b.``); ties go to the shorter prefix.
    """
    counts: dict[str, int] = {"": 0}
    for key in state:
        for target in target_keys:
            if key.endswith(target) and (len(key) == len(target) or key[-len(target) - 1] == "."):
                prefix = key[: len(key) - len(target)]
                counts[prefix] = counts.get(prefix, 0) + 1
    return max(counts, key=lambda p: (counts[p], -len(p)))


def transfer_state(
    network: nn.Module, state: Mapping[str, Tensor], prefix: str | None = None, source: str = "<state>"
) -> TransferReport:
    """Copies every tensor of ``state`` (after stripping ``prefix``) whose name and shape match ``network``."""
    target = network.state_dict()
    if prefix is None:
        prefix = best_prefix(state, set(target))
    stripped = _strip(state, prefix)
    report = TransferReport(source=source, prefix=prefix)
    to_load: dict[str, Tensor] = {}
    for key, value in target.items():
        if key not in stripped:
            report.missing.append(key)
        elif tuple(stripped[key].shape) != tuple(value.shape):
            report.shape_mismatch.append((key, tuple(stripped[key].shape), tuple(value.shape)))
            report.missing.append(key)
        else:
            to_load[key] = stripped[key]
            report.loaded.append(key)
    report.unexpected = [k for k in stripped if k not in target]
    network.load_state_dict(to_load, strict=False)
    return report


def load_backbone(
    backbone: nn.Module, path: str | Path, prefix: str | None = None, allow_partial: bool = False
) -> TransferReport:
    """Loads a backbone from any supported checkpoint; raises on a partial load unless ``allow_partial``."""
    state, _ = read_state_dict(path)
    report = transfer_state(backbone, state, prefix=prefix, source=str(path))
    if not report.loaded:
        raise CheckpointError(f"nothing could be loaded.\n{report.summary()}")
    if not report.complete:
        if not allow_partial:
            raise CheckpointError(f"partial load refused (pass allow_partial=True to accept).\n{report.summary()}")
        log.warning("Partial backbone load:\n%s", report.summary())
    else:
        log.info(report.summary())
    return report
