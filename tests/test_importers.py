"""``python -m selfsup_pcd.importers``: released checkpoints of STRL and selfsup_pcd -> the project's backbone file.

The checkpoints are built here from the key names and shapes of the original code (``strl_byol.md`` §7,
``multiview_rendering.md`` §4), not from this project's modules, so a renamed or reshaped layer on either side fails.
"""

from __future__ import annotations

import re

import pytest
import torch

from selfsup_pcd.checkpoints import load_backbone, read_state_dict
from selfsup_pcd.importers import main
from selfsup_pcd.models.backbones import DGCNNEncoder, PointNetEncoder

_GEN = torch.Generator().manual_seed(0)


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_GEN)


def conv(key: str, cin: int, cout: int, kernel_dims: int = 1, bias: bool = False) -> dict[str, torch.Tensor]:
    """Conv1d (kernel_dims=1) / Conv2d (2) with kernel 1, or Linear (0)."""
    out = {f"{key}.weight": _rand(cout, cin, *[1] * kernel_dims)}
    if bias:
        out[f"{key}.bias"] = _rand(cout)
    return out


def bn(key: str, c: int) -> dict[str, torch.Tensor]:
    return {f"{key}.weight": _rand(c), f"{key}.bias": _rand(c), f"{key}.running_mean": _rand(c),
            f"{key}.running_var": torch.rand(c, generator=_GEN) + 0.5, f"{key}.num_batches_tracked": torch.tensor(7)}


def seq(prefix: str, widths: list[int], cin: int, kernel_dims: int = 1, bias: bool = True) -> dict[str, torch.Tensor]:
    """nn.Sequential of (conv, BN, ReLU) per width: indices 0, 1, 3, 4, ..."""
    out: dict[str, torch.Tensor] = {}
    for i, width in enumerate(widths):
        out |= conv(f"{prefix}.{3 * i}", cin, width, kernel_dims, bias) | bn(f"{prefix}.{3 * i + 1}", width)
        cin = width
    return out


def selfsup_stn(prefix: str, k: int) -> dict[str, torch.Tensor]:
    """STN3d / STNkd: Conv1d k→64→128→1024 (BN), FC 1024→512→256 (BN) → k²."""
    state = seq(f"{prefix}.mlp1", [64, 128, 1024], k)
    state |= conv(f"{prefix}.mlp2.0", 1024, 512, 0, True) | bn(f"{prefix}.mlp2.1", 512)
    state |= conv(f"{prefix}.mlp2.3", 512, 256, 0, True) | bn(f"{prefix}.mlp2.4", 256)
    return state | conv(f"{prefix}.mlp2.6", 256, k * k, 0, True)


def selfsup_heads() -> dict[str, torch.Tensor]:
    """point_project (Conv1d 1024→512, BN, ReLU, Conv1d 512→128) and global_project (Linear 1024→512 no bias, BN,
    ReLU, Linear 512→128)."""
    state = conv("point_project.0", 1024, 512, 1, True) | bn("point_project.1", 512)
    state |= conv("point_project.3", 512, 128, 1, True)
    state |= conv("global_project.0", 1024, 512, 0, False) | bn("global_project.1", 512)
    return state | conv("global_project.3", 512, 128, 0, True)


def selfsup_pointnet() -> dict[str, torch.Tensor]:
    """``PointNet_point_global`` (feature transform on): stn1, mlp1 3→64→64, stn2, mlp2 64→64→128→1024, heads."""
    return (selfsup_stn("stn1", 3) | seq("mlp1", [64, 64], 3) | selfsup_stn("stn2", 64)
            | seq("mlp2", [64, 128, 1024], 64) | selfsup_heads())


def dgcnn_encoder(emb: int = 1024) -> dict[str, torch.Tensor]:
    """The original DGCNN: convX = Sequential(Conv, bnX, LeakyReLU), bnX also registered on its own."""
    state: dict[str, torch.Tensor] = {}
    for i, (cin, cout) in enumerate([(6, 64), (128, 64), (128, 128), (256, 256), (512, emb)], start=1):
        state |= conv(f"conv{i}.0", cin, cout, 2 if i < 5 else 1) | bn(f"conv{i}.1", cout)
        bn_keys = [k for k in state if k.startswith(f"conv{i}.1.")]
        state |= {k.replace(f"conv{i}.1.", f"bn{i}."): state[k].clone() for k in bn_keys}
    return state


def strl_pointnet(prefix: str, emb: int = 1024, heads: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """STRL's PointNet: conv1..5 (Conv1d, no bias) 3→64→64→64→128→emb, bn1..5, then projector/predictor MLPs."""
    dims = [3, 64, 64, 64, 128, emb]
    state: dict[str, torch.Tensor] = {}
    for i in range(5):
        state |= conv(f"{prefix}conv{i + 1}", dims[i], dims[i + 1]) | bn(f"{prefix}bn{i + 1}", dims[i + 1])
    for head in heads:
        state |= conv(f"{prefix}{head}.net.0", emb if head == "projector" else 256, 4096, 0, True)
        state |= bn(f"{prefix}{head}.net.1", 4096) | conv(f"{prefix}{head}.net.3", 4096, 256, 0, True)
    return state


def report_lines(out: str) -> dict[str, str]:
    """``layer -> status`` lines of the printed per-layer report."""
    return dict(m.groups() for m in re.finditer(r"^\s+(backbone\.\S+)\s+(.+?)\s*$", out, re.M))


def test_strl_run_checkpoint_keeps_the_online_backbone(tmp_path, capsys) -> None:
    state = strl_pointnet("online_network.", heads=("projector", "predictor"))
    state |= strl_pointnet("target_network.", heads=("projector",))
    path = tmp_path / "epoch=199-val_loss=0.1.ckpt"
    torch.save({"state_dict": state, "pytorch-lightning_version": "0.8.5", "epoch": 199}, path)
    assert main(["--format", "strl", str(path), str(tmp_path / "backbone.pt")]) == 0
    out = capsys.readouterr().out
    layers = report_lines(out)
    assert layers == {f"backbone.mlp{a}.{b}": "loaded" for a, b in [(1, 0), (1, 3), (2, 0), (2, 3), (2, 6)]}
    assert "5 / 5 encoder layers, 30 / 30 encoder tensors" in out
    # each head: Linear (2) + BN (5) + Linear (2) tensors; the target network: its backbone (30) and projector
    assert "projector (9 tensors), predictor (9 tensors), target_network (39 tensors)" in out
    ours = PointNetEncoder(input_transform=False, feature_transform=False, conv_bias=False)  # model=pointnet_strl
    report = load_backbone(ours, tmp_path / "backbone.pt")
    assert report.complete and not report.unexpected
    assert torch.equal(ours.mlp2[6].weight, state["online_network.conv5.weight"])
    assert torch.equal(ours.mlp1[1].running_var, state["online_network.bn1.running_var"])
    assert not torch.equal(ours.mlp2[6].weight, state["target_network.conv5.weight"])
    _, meta = read_state_dict(tmp_path / "backbone.pt")
    assert meta["imported_from"] == "strl" and meta["network"] == "pointnet"


def test_strl_transformed_dgcnn_export(tmp_path, capsys) -> None:
    # transform_ckpt.py's output: the online backbone without prefix, BN aliases included (strl_byol.md §7)
    state = dgcnn_encoder()
    assert state["conv1.0.weight"].shape == (64, 6, 1, 1) and state["conv5.0.weight"].shape == (1024, 512, 1)
    torch.save({"state_dict": state}, tmp_path / "epoch=59-val_loss=0.7221_transformed.ckpt")
    assert main(["--format", "strl", str(tmp_path / "epoch=59-val_loss=0.7221_transformed.ckpt"),
                 str(tmp_path / "dgcnn.pt")]) == 0
    out = capsys.readouterr().out
    assert set(report_lines(out).values()) == {"loaded"} and len(report_lines(out)) == 5
    assert "bn1 (5 tensors)" in out and "bn5 (5 tensors)" in out
    ours = DGCNNEncoder(k=40)  # model=dgcnn
    assert load_backbone(ours, tmp_path / "dgcnn.pt").complete
    assert torch.equal(ours.conv4[1].running_mean, state["conv4.1.running_mean"])


@pytest.mark.parametrize("wrap", ["plain", "module", "model_state_dict"])
def test_selfsup_pointnet_student(tmp_path, capsys, wrap) -> None:
    state = selfsup_pointnet()
    payload: object = state
    if wrap == "module":  # saved from nn.DataParallel
        payload = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "model_state_dict":  # OcCo-style wrapper, PointNet under module.feat.
        payload = {"model_state_dict": {f"module.feat.{k}": v for k, v in state.items()}, "epoch": 400}
    torch.save(payload, tmp_path / "pre_trained_pointnet.pth")
    assert main(["--format", "selfsup", str(tmp_path / "pre_trained_pointnet.pth"), str(tmp_path / "b.pt")]) == 0
    out = capsys.readouterr().out
    layers = report_lines(out)
    # stn1 and stn2: 3 convs + 3 FCs each; mlp1: 2 convs; mlp2: 3 convs
    assert len(layers) == 17 and set(layers.values()) == {"loaded"}
    assert {"backbone.stn1.mlp2.6", "backbone.stn2.mlp1.0", "backbone.mlp2.6"} <= set(layers)
    assert "point_project (9 tensors), global_project (8 tensors)" in out
    ours = PointNetEncoder()  # model=pointnet (T-nets, conv biases)
    report = load_backbone(ours, tmp_path / "b.pt")
    assert report.complete and not report.unexpected
    assert torch.equal(ours.stn2.mlp2[6].bias, state["stn2.mlp2.6.bias"])
    assert torch.equal(ours.mlp1[0].bias, state["mlp1.0.bias"])


def test_selfsup_dgcnn_student_drops_heads_and_bn_aliases(tmp_path, capsys) -> None:
    state = dgcnn_encoder() | selfsup_heads()
    torch.save(state, tmp_path / "pre_trained_dgcnn.pth")
    assert main(["--format", "selfsup", str(tmp_path / "pre_trained_dgcnn.pth"), str(tmp_path / "b.pt")]) == 0
    out = capsys.readouterr().out
    assert report_lines(out) == {f"backbone.conv{i}.0": "loaded" for i in range(1, 6)}
    assert all(f"bn{i} (5 tensors)" in out for i in range(1, 6)) and "point_project (9 tensors)" in out
    ours = DGCNNEncoder()  # model=dgcnn, k=20
    assert load_backbone(ours, tmp_path / "b.pt").complete
    assert torch.equal(ours.conv5[0].weight, state["conv5.0.weight"])


def test_wrong_format_and_broken_checkpoints_are_refused(tmp_path, capsys) -> None:
    torch.save({"state_dict": strl_pointnet("online_network.")}, tmp_path / "strl.ckpt")
    assert main(["--format", "selfsup", str(tmp_path / "strl.ckpt"), str(tmp_path / "x.pt")]) == 2
    assert "not a selfsup_pcd point network" in capsys.readouterr().out
    # a missing middle layer must not silently give a shallower encoder
    state = {k: v for k, v in selfsup_pointnet().items() if not k.startswith("mlp2.3.")}
    torch.save(state, tmp_path / "cut.pth")
    assert main(["--format", "selfsup", str(tmp_path / "cut.pth"), str(tmp_path / "y.pt")]) == 2
    out = capsys.readouterr().out
    assert "does not match the encoder built from its shapes" in out and "mlp2.6.weight" in out
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()
