"""Weight transfer from a pretrained encoder into a downstream network with its own layers (part segmentation).

Two modes (downstream.md §1 and quirk 3):

* ``remap`` (default) — the downstream network holds the pretraining encoder class as ``network.backbone``,
  so every pretrained encoder layer has a counterpart under the same name. The checkpoint's key prefix is
  found as in :func:`selfsup_pcd.checkpoints.load_backbone`; each **layer** (a conv or linear with the
  BatchNorm that follows it) is copied when all its tensors exist with the same shapes, and is otherwise
  left untouched and reported (never half a layer). The head and the input Transform-Net are new layers.
* ``name_shape`` — the original selfsup ``copy_parameters``: the downstream network's tensors are named as
  in the original part-seg networks (``models.part_seg.original_names``: PointNet's pointwise convs were
  ``conv1..5``/``bn1..5``), and every tensor whose name *and* shape match a checkpoint tensor is copied, one
  tensor at a time. For a pretrained selfsup PointNet this moves only ``stn1`` and parts of ``stn2``; for a
  DGCNN classification encoder into the original DGCNN part-seg net only ``conv1.0``, ``bn1``, ``bn2``.

Both return a :class:`NetworkTransferReport` whose ``summary()`` lists every layer with what happened to it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from selfsup_pcd.checkpoints import TransferReport, best_prefix, read_state_dict

log = logging.getLogger(__name__)

TRANSFER_MODES = ("remap", "name_shape")
LOADED, MISMATCH, MISSING, PARTIAL = "loaded", "shape mismatch", "not in checkpoint", "partly loaded"


@dataclass
class NetworkTransferReport:
    """What a transfer moved, per tensor (``tensors``, keys of the whole network) and per layer."""

    mode: str
    tensors: TransferReport
    layers: dict[str, str] = field(default_factory=dict)  # encoder layer -> LOADED | MISMATCH | MISSING | PARTIAL
    new_layers: dict[str, int] = field(default_factory=dict)  # non-encoder module -> tensor count
    details: dict[str, str] = field(default_factory=dict)  # encoder layer -> shape mismatches

    @property
    def loaded_layers(self) -> list[str]:
        return [name for name, status in self.layers.items() if status == LOADED]

    @property
    def complete(self) -> bool:
        return bool(self.layers) and all(status == LOADED for status in self.layers.values())

    def summary(self) -> str:
        t = self.tensors
        lines = [
            f"Transfer ({self.mode}) from {t.source} (prefix {t.prefix!r}): {len(self.loaded_layers)} / "
            f"{len(self.layers)} encoder layers, {len(t.loaded)} / {t.total} encoder tensors",
        ]
        width = max([len(name) for name in self.layers] + [5])
        for name, status in self.layers.items():
            detail = f"  ({self.details[name]})" if name in self.details else ""
            lines.append(f"  {name:<{width}}  {status}{detail}")
        if self.new_layers:
            lines.append("  new layers (trained from scratch): "
                         + ", ".join(f"{k} ({n} tensors)" for k, n in self.new_layers.items()))
        if t.unexpected:
            lines.append(f"  unused checkpoint tensors ({len(t.unexpected)}): " + ", ".join(t.unexpected[:10])
                         + (" ..." if len(t.unexpected) > 10 else ""))
        return "\n".join(lines)


def layer_units(module: nn.Module, prefix: str = "") -> dict[str, str]:
    """State-dict key -> its layer: the owning module's path, a BatchNorm folded into the conv/linear before it
    in the same ``nn.Sequential`` (``mlp1.1.weight`` -> ``mlp1.0``, ``conv1.1.running_mean`` -> ``conv1.0``)."""
    units: dict[str, str] = {}
    for key in module.state_dict():
        path = key.rsplit(".", 1)[0] if "." in key else ""
        unit = path
        owner = module.get_submodule(path) if path else module
        if isinstance(owner, _BatchNorm) and "." in path:
            parent_path, index = path.rsplit(".", 1)
            parent = module.get_submodule(parent_path)
            if isinstance(parent, nn.Sequential) and index.isdigit() and int(index) > 0:
                before = parent[int(index) - 1]
                if isinstance(before, nn.Linear | nn.Conv1d | nn.Conv2d):
                    unit = f"{parent_path}.{int(index) - 1}"
        units[prefix + key] = prefix + unit
    return units


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _state(source: str | Path | Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    if isinstance(source, Mapping):
        return dict(source), "<state dict>"
    state, _ = read_state_dict(source)
    return state, str(source)


def _group(units: Mapping[str, str]) -> dict[str, list[str]]:
    by_unit: dict[str, list[str]] = {}
    for key, unit in units.items():
        by_unit.setdefault(unit, []).append(key)
    return by_unit


def _layer_table(units: Mapping[str, str], tensors: TransferReport) -> tuple[dict[str, str], dict[str, str]]:
    """Status and shape-mismatch details of every layer, from the tensor-level report."""
    loaded = set(tensors.loaded)
    wrong = {k: (s, d) for k, s, d in tensors.shape_mismatch}
    layers, details = {}, {}
    for unit, keys in _group(units).items():
        count = sum(k in loaded for k in keys)
        bad = [k for k in keys if k in wrong]
        if count == len(keys):
            layers[unit] = LOADED
        elif count:
            layers[unit] = PARTIAL
        else:
            layers[unit] = MISMATCH if bad else MISSING
        if bad:
            parent = unit.rsplit(".", 1)[0] + "."
            details[unit] = ", ".join(f"{k.removeprefix(parent)} {wrong[k][0]}->{wrong[k][1]}" for k in bad[:3])
    return layers, details


def _remap(network: nn.Module, state: Mapping[str, Tensor], source: str) -> NetworkTransferReport:
    backbone = network.backbone
    target = backbone.state_dict()
    prefix = best_prefix(state, set(target))
    stripped = _strip(state, prefix)
    tensors = TransferReport(source=source, prefix=prefix)
    to_load: dict[str, Tensor] = {}
    for keys in _group(layer_units(backbone)).values():
        present = [k for k in keys if k in stripped]
        wrong = [(k, tuple(stripped[k].shape), tuple(target[k].shape)) for k in present
                 if tuple(stripped[k].shape) != tuple(target[k].shape)]
        if len(present) == len(keys) and not wrong:  # a whole layer or nothing
            to_load.update({k: stripped[k] for k in keys})
            tensors.loaded += [f"backbone.{k}" for k in keys]
        else:
            tensors.missing += [f"backbone.{k}" for k in keys]
            tensors.shape_mismatch += [(f"backbone.{k}", s, d) for k, s, d in wrong]
    tensors.unexpected = [k for k in stripped if k not in target]
    backbone.load_state_dict(to_load, strict=False)
    layers, details = _layer_table(layer_units(backbone, "backbone."), tensors)
    return NetworkTransferReport("remap", tensors, layers, _new_layers(network, "backbone."), details)


def _name_shape(network: nn.Module, state: Mapping[str, Tensor], source: str) -> NetworkTransferReport:
    from selfsup_pcd.models.part_seg import original_names

    # a network that was named differently in its original code (the semseg nets) says so itself
    own = getattr(network, "original_names", None)
    all_names = own() if callable(own) else original_names(network)
    names = {k: v for k, v in all_names.items() if k.startswith("backbone.")}
    target = network.state_dict()
    prefix = best_prefix(state, set(names.values()))
    stripped = _strip(state, prefix)
    tensors = TransferReport(source=source, prefix=prefix)
    to_load: dict[str, Tensor] = {}
    for key, original in names.items():  # tensor by tensor, as the original
        shape = tuple(target[key].shape)
        if original not in stripped:
            tensors.missing.append(key)
        elif tuple(stripped[original].shape) != shape:
            tensors.shape_mismatch.append((key, tuple(stripped[original].shape), shape))
            tensors.missing.append(key)
        else:
            to_load[key] = stripped[original]
            tensors.loaded.append(key)
    used = {names[k] for k in to_load}
    tensors.unexpected = [k for k in stripped if k not in used]
    network.load_state_dict(to_load, strict=False)
    layers, details = _layer_table(layer_units(network.backbone, "backbone."), tensors)
    return NetworkTransferReport("name_shape", tensors, layers, _new_layers(network, "backbone."), details)


def _new_layers(network: nn.Module, encoder_prefix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in network.state_dict():
        if not key.startswith(encoder_prefix):
            top = key.split(".", 1)[0]
            counts[top] = counts.get(top, 0) + 1
    return counts


def transfer_into(
    network: nn.Module, source: str | Path | Mapping[str, Tensor], mode: str = "remap"
) -> NetworkTransferReport:
    """Copies a pretrained encoder from ``source`` (a checkpoint path or a state dict) into ``network``, a
    module with the encoder as ``network.backbone`` (:class:`~selfsup_pcd.models.part_seg.PartSegNetwork`)."""
    if mode not in TRANSFER_MODES:
        raise ValueError(f"transfer mode must be one of {TRANSFER_MODES}, got {mode!r}")
    state, name = _state(source)
    report = (_remap if mode == "remap" else _name_shape)(network, state, name)
    log.info(report.summary())
    return report
