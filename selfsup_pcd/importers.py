"""Released checkpoints of the two original projects -> this project's backbone file, with a transfer report.

``python -m selfsup_pcd.importers --format strl|selfsup CHECKPOINT OUT.pt [--k K]``

* ``strl`` — STRL (``strl_byol.md`` §7): a Lightning run checkpoint (``online_network.<backbone>``,
  ``online_network.projector/predictor.*``, ``target_network.*``) or a ``transform_ckpt.py`` export; PointNet,
  DGCNN or DGCNN-Semseg, recognised by the keys. The key map is :mod:`selfsup_pcd.methods.byol_import`'s.
* ``selfsup`` — selfsup_pcd / multi-view rendering (``multiview_rendering.md`` §4, §7): the student's raw
  ``state_dict`` (``pre_trained_{pointnet,dgcnn}.pth``; ``PointNet_point_global``: ``stn1``, ``mlp1``, ``stn2``,
  ``mlp2``; ``DGCNN_point_global``: ``conv1..5`` with ``bn1..5`` aliases of their BatchNorms), possibly under a
  ``module.`` / ``model_state_dict`` wrapper. Its PointNet names are this project's; the projection heads
  (``point_project``, ``global_project``) and the BN aliases are dropped.

The encoder is built from the tensors' shapes (widths, T-nets, conv biases), the mapped tensors are copied into
it layer by layer (:func:`selfsup_pcd.transfer.transfer_into`: a layer whole or not at all) and the per-layer
report is printed, with what was left out of the backbone. A checkpoint that does not fill every layer, or has
backbone tensors the encoder has no place for (a missing middle layer), is refused.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from selfsup_pcd.checkpoints import CheckpointError, best_prefix, read_state_dict, save_backbone
from selfsup_pcd.methods import byol_import
from selfsup_pcd.transfer import NetworkTransferReport, transfer_into

FORMATS = ("strl", "selfsup")
SELFSUP_HEADS = ("point_project.", "global_project.")
# the original loaders strip these wrappers (DataParallel, OcCo's `module.feat.` for PointNet)
_SELFSUP_MARKERS = ("mlp1.0.weight", "conv1.0.weight")


@dataclass
class ImportResult:
    """The imported encoder, what kind it is, the per-layer report and the checkpoint tensors left out."""

    backbone: nn.Module
    network: str
    report: NetworkTransferReport
    dropped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [self.report.summary()]
        if self.dropped:
            lines.append("  left out of the backbone (heads, aliases, other networks): "
                         + ", ".join(f"{name} ({n} tensors)" for name, n in self.dropped.items()))
        return "\n".join(lines)


def _strip_wrapper(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """The selfsup student's own keys: the prefix before ``mlp1.0.weight`` / ``conv1.0.weight`` is removed."""
    prefix = best_prefix(state, set(_SELFSUP_MARKERS))
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, prefix


def detect_selfsup_network(state: Mapping[str, Tensor]) -> str:
    """'pointnet', 'dgcnn' or 'dgcnn_semseg' from a selfsup student's keys."""
    if "mlp1.0.weight" in state and "mlp2.0.weight" in state:
        return "pointnet"
    if "conv6.0.weight" in state:
        return "dgcnn_semseg"
    if "conv1.0.weight" in state:
        return "dgcnn"
    raise CheckpointError(f"not a selfsup_pcd point network: keys {sorted(state)[:8]}")


def selfsup_backbone_state(state: Mapping[str, Tensor], network: str) -> dict[str, Tensor]:
    """The encoder tensors of a selfsup student in this project's names (heads and BN aliases dropped)."""
    encoder = {k: v for k, v in state.items() if not k.startswith(SELFSUP_HEADS)}
    if network == "pointnet":
        return encoder
    return byol_import.backbone_to_project(encoder, network)  # same DGCNN layout: drops the bnX aliases


def _widths(state: Mapping[str, Tensor], prefix: str) -> list[int]:
    """Output widths of the convs of a pointwise ``nn.Sequential`` (conv, BN, ReLU per layer: indices 0, 3, ...)."""
    widths, index = [], 0
    while f"{prefix}.{index}.weight" in state:
        widths.append(int(state[f"{prefix}.{index}.weight"].shape[0]))
        index += 3
    return widths


def build_selfsup_backbone(network: str, state: Mapping[str, Tensor], k: int | None = None) -> nn.Module:
    """The project encoder that holds a selfsup student's encoder (dimensions read from the tensors)."""
    from selfsup_pcd.models.backbones import DGCNNEncoder, PointNetEncoder
    from selfsup_pcd.models.backbones.dgcnn_semseg import DGCNNSemsegEncoder

    if network == "pointnet":
        return PointNetEncoder(in_channels=int(state["mlp1.0.weight"].shape[1]), mlp1=_widths(state, "mlp1"),
                               mlp2=_widths(state, "mlp2"), input_transform="stn1.mlp1.0.weight" in state,
                               feature_transform="stn2.mlp1.0.weight" in state, conv_bias="mlp1.0.bias" in state)
    if network == "dgcnn_semseg":
        return DGCNNSemsegEncoder(k=k or 20, emb_dim=int(state["conv6.0.weight"].shape[0]))
    edge = []
    while f"conv{len(edge) + 1}.0.weight" in state and state[f"conv{len(edge) + 1}.0.weight"].dim() == 4:
        edge.append(int(state[f"conv{len(edge) + 1}.0.weight"].shape[0]))
    head = state[f"conv{len(edge) + 1}.0.weight"]
    # DGCNN_point_global max-pools only; pooling has no parameters (downstream configs choose their own)
    return DGCNNEncoder(in_channels=int(state["conv1.0.weight"].shape[1]) // 2, k=k or 20, edge_dims=edge,
                        emb_dim=int(head.shape[0]), pooling="max")


def _dropped(raw: Mapping[str, Tensor], kept: Mapping[str, Tensor], prefix: str) -> dict[str, int]:
    """Checkpoint tensors that did not go into the backbone, counted by their first name below ``prefix``."""
    used = {id(v) for v in kept.values()}
    counts: dict[str, int] = {}
    for key, value in raw.items():
        if id(value) in used:
            continue
        name = key[len(prefix):] if prefix and key.startswith(prefix) else key
        top = name.split(".", 1)[0]
        counts[top] = counts.get(top, 0) + 1
    return counts


def import_checkpoint(path: str | Path, fmt: str, k: int | None = None) -> ImportResult:
    """Reads a released checkpoint of ``fmt`` and returns this project's encoder holding its backbone."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    raw, _ = read_state_dict(path)
    if fmt == "strl":
        online = byol_import.online_state(raw)
        prefix = next((p for p in byol_import.ONLINE_PREFIXES if any(key.startswith(p) for key in raw)), "")
        network = byol_import.detect_network(online)
        state = byol_import.backbone_to_project(online, network)
        backbone = byol_import.build_backbone(network, state, k)
    else:
        own, prefix = _strip_wrapper(raw)
        network = detect_selfsup_network(own)
        state = selfsup_backbone_state(own, network)
        backbone = build_selfsup_backbone(network, state, k)
    holder = nn.Module()
    holder.backbone = backbone
    report = transfer_into(holder, state, mode="remap")
    report.tensors.source = str(path)
    result = ImportResult(backbone, network, report, _dropped(raw, state, prefix))
    if not report.complete or report.tensors.unexpected:  # e.g. a missing middle layer shrank the encoder
        raise CheckpointError(f"{path}: the {fmt} {network} checkpoint does not match the encoder built from its "
                              f"shapes.\n{result.summary()}")
    return result


def convert(path: str | Path, out: str | Path, fmt: str, k: int | None = None) -> ImportResult:
    """Imports ``path`` and writes its backbone to ``out`` in the project's backbone format."""
    result = import_checkpoint(path, fmt, k)
    save_backbone(out, result.backbone, meta={"source": str(path), "imported_from": fmt, "network": result.network})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfsup_pcd.importers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="strl: STRL run checkpoint or transform_ckpt.py export; selfsup: selfsup_pcd student")
    parser.add_argument("checkpoint", help="the released checkpoint")
    parser.add_argument("out", help="backbone file to write (e.g. backbone.pt)")
    parser.add_argument("--k", type=int, default=None, help="kNN size of a DGCNN (default: STRL's 40 / 20, selfsup 20)")
    args = parser.parse_args(argv)
    try:
        result = convert(args.checkpoint, args.out, args.format, args.k)
    except CheckpointError as err:
        print(f"error: {err}")
        return 2
    print(result.summary())
    params = sum(p.numel() for p in result.backbone.parameters())
    print(f"wrote {type(result.backbone).__name__} ({result.network}, {params} parameters) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
