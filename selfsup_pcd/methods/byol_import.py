"""Imports checkpoints of the original STRL code (``strl_byol.md`` §7) into this project's networks.

Two inputs: the Lightning checkpoint of a pretraining run (``state_dict`` keys ``online_network.<backbone>``,
``online_network.projector.*``, ``online_network.predictor.*``, ``target_network.*``) and the output of
``BYOL/transform_ckpt.py`` (``{"state_dict": <online backbone keys without the prefix>}``). STRL's DGCNN
encoders already use this project's names (``convX.0`` / ``convX.1``) plus ``bnX`` aliases of the BN layers,
which are dropped; its PointNet names ``conv1..5`` / ``bn1..5`` are mapped onto ``mlp1`` / ``mlp2``. Its VoteNet
PointNet++ backbone already uses VoteNet's names (``sa1..sa4`` / ``fp1``, ``fp2``, as
:class:`~selfsup_pcd.models.backbones.pointnet2.PointNet2Backbone`): those are kept, with any prefix before them
(``online_network.``, ``backbone_net.`` of ``transform_ckpt_votenet.py`` exports) removed; ``sa_aggre`` is dropped.

``python -m selfsup_pcd.methods.byol_import CKPT OUT.pt [--k 40]`` writes the online backbone in the
project's backbone format (loaded by every task); :func:`strl_byol_state` maps a whole run onto
:class:`~selfsup_pcd.methods.byol.BYOL` (online, projector, predictor and EMA target) to continue it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from selfsup_pcd.checkpoints import CheckpointError, read_state_dict, save_backbone

NETWORKS = ("pointnet", "dgcnn", "dgcnn_semseg", "votenet")
ONLINE_PREFIXES = ("online_network.", "online_netwrok.")  # transform_ckpt.py accepts the typo too
TARGET_PREFIX = "target_network."
# STRL PointNet: conv1..conv5 / bn1..bn5 -> PointNetEncoder(mlp1=[64, 64], mlp2=[64, 128, emb])
POINTNET_NAMES = {
    "conv1": "mlp1.0", "bn1": "mlp1.1", "conv2": "mlp1.3", "bn2": "mlp1.4",
    "conv3": "mlp2.0", "bn3": "mlp2.1", "conv4": "mlp2.3", "bn4": "mlp2.4", "conv5": "mlp2.6", "bn5": "mlp2.7",
}  # fmt: skip
_BN_ALIAS = re.compile(r"^bn\d+\.")
# VoteNet PointNet++: sa1..saN / fp1..fpM, after an optional prefix (backbone_net., backbone., ...)
_VOTENET_KEY = re.compile(r"^(?:[\w.]*?\.)?((?:sa|fp)\d+\..+)$")


def split_network(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def online_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The online network's tensors (backbone, projector, predictor) of a run checkpoint, or the transformed
    checkpoint itself when it has no network prefix."""
    for prefix in ONLINE_PREFIXES:
        online = split_network(state, prefix)
        if online:
            return online
    return dict(state)


def detect_network(backbone_state: Mapping[str, Tensor]) -> str:
    """'pointnet', 'dgcnn', 'dgcnn_semseg' or 'votenet' from the backbone's keys."""
    if any((m := _VOTENET_KEY.match(k)) and m.group(1).startswith("sa1.") for k in backbone_state):
        return "votenet"
    if "conv6.0.weight" in backbone_state:
        return "dgcnn_semseg"
    if "conv1.0.weight" in backbone_state:
        return "dgcnn"
    if "conv1.weight" in backbone_state and "bn1.weight" in backbone_state:
        return "pointnet"
    raise CheckpointError(f"not an STRL backbone: keys {sorted(backbone_state)[:8]}")


def backbone_to_project(backbone_state: Mapping[str, Tensor], network: str | None = None) -> dict[str, Tensor]:
    """STRL backbone keys -> this project's encoder keys (projector / predictor / aliases dropped)."""
    network = network or detect_network(backbone_state)
    out: dict[str, Tensor] = {}
    for key, value in backbone_state.items():
        if key.startswith(("projector.", "predictor.")):
            continue
        if network == "votenet":
            match = _VOTENET_KEY.match(key)
            if match:
                out[match.group(1)] = value
        elif network == "pointnet":
            layer, _, rest = key.partition(".")
            if layer in POINTNET_NAMES:
                out[f"{POINTNET_NAMES[layer]}.{rest}"] = value
        elif not _BN_ALIAS.match(key) and not key.startswith(("conv7.", "conv8.")):
            out[key] = value
    return out


def strl_backbone_state(state: Mapping[str, Tensor], network: str | None = None) -> dict[str, Tensor]:
    """The online backbone of a run or transformed checkpoint, in this project's names."""
    return backbone_to_project(online_state(state), network)


def strl_byol_state(state: Mapping[str, Tensor], network: str | None = None) -> dict[str, Tensor]:
    """A run checkpoint's ``state_dict`` as the ``state_dict`` of this project's BYOL module."""
    online, target = online_state(state), split_network(state, TARGET_PREFIX)
    if not target:
        raise CheckpointError("no target_network.* tensors: not an STRL run checkpoint")
    out = {f"backbone.{k}": v for k, v in backbone_to_project(online, network).items()}
    out.update({f"target_backbone.{k}": v for k, v in backbone_to_project(target, network).items()})
    for part in ("projector", "predictor"):
        out.update({f"{part}.{k}": v for k, v in split_network(online, f"{part}.").items()})
    out.update({f"target_projector.{k}": v for k, v in split_network(target, "projector.").items()})
    return out


def build_backbone(network: str, backbone_state: Mapping[str, Tensor], k: int | None = None) -> nn.Module:
    """The project encoder matching an imported STRL backbone (dimensions read from the tensors)."""
    from selfsup_pcd.models.backbones import DGCNNEncoder, PointNetEncoder
    from selfsup_pcd.models.backbones.dgcnn_semseg import DGCNNSemsegEncoder
    from selfsup_pcd.models.backbones.pointnet2 import PointNet2Backbone

    if network == "votenet":  # widths from the tensors; points, radii and samples are VoteNet's
        def widths(module: str) -> list[int]:
            out, j = [], 0
            while f"{module}.layer{j}.conv.weight" in backbone_state:
                out.append(backbone_state[f"{module}.layer{j}.conv.weight"].shape[0])
                j += 1
            return out

        num_fp = sum(1 for key in backbone_state if re.match(r"^fp\d+\.mlp\.layer0\.conv\.weight$", key))
        return PointNet2Backbone(in_channels=backbone_state["sa1.mlp_module.layer0.conv.weight"].shape[1] - 3,
                                 sa_mlps=[widths(f"sa{i}.mlp_module") for i in range(1, 5)],
                                 fp_mlps=[widths(f"fp{j}.mlp") for j in range(1, num_fp + 1)])

    if network == "pointnet":
        emb = backbone_state["mlp2.6.weight"].shape[0]
        return PointNetEncoder(mlp2=(64, 128, emb), input_transform=False, feature_transform=False, conv_bias=False)
    if network == "dgcnn":
        return DGCNNEncoder(k=k or 40, emb_dim=backbone_state["conv5.0.weight"].shape[0], pooling="max_avg")
    return DGCNNSemsegEncoder(k=k or 20, emb_dim=backbone_state["conv6.0.weight"].shape[0])


def convert(path: str | Path, out: str | Path, k: int | None = None) -> nn.Module:
    """Reads an STRL checkpoint and writes its online backbone as a project backbone file."""
    state, _ = read_state_dict(path)
    network = detect_network(online_state(state))
    backbone_state = strl_backbone_state(state, network)
    backbone = build_backbone(network, backbone_state, k)
    backbone.load_state_dict(backbone_state, strict=True)
    save_backbone(out, backbone, meta={"source": str(path), "imported_from": "STRL", "network": network})
    return backbone


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="STRL Lightning checkpoint or transform_ckpt.py output")
    parser.add_argument("out", help="backbone file to write (e.g. backbone.pt)")
    parser.add_argument("--k", type=int, default=None, help="kNN size of a DGCNN (default: STRL's 40 / 20)")
    args = parser.parse_args(argv)
    backbone = convert(args.checkpoint, args.out, args.k)
    print(f"wrote {type(backbone).__name__} ({sum(p.numel() for p in backbone.parameters())} parameters) "
          f"to {args.out}")


if __name__ == "__main__":
    main()
