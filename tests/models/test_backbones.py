"""Fused PointNet / DGCNN encoders vs. straightforward reference nets with the same weights."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from selfsup_pcd.models.backbones import BackboneOutput, DGCNNEncoder, PointNetEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from reference_models import ReferenceDGCNN, ReferencePointNet  # noqa: E402

B, N = 4, 256


def randomize(model: nn.Module, seed: int) -> None:
    """Non-default BN parameters/statistics (incl. negative gammas) and non-zero T-net outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                gamma = torch.rand(c, generator=gen) + 0.5
                gamma[torch.rand(c, generator=gen) < 0.2] *= -1
                m.weight.copy_(gamma)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
        for name, p in model.named_parameters():
            if name.endswith("mlp2.6.weight") or name.endswith("mlp2.6.bias"):  # T-net output layer
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def pair(fused_cls, ref_cls, dtype: torch.dtype, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    fused = fused_cls(**kwargs)
    randomize(fused, seed)
    ref = ref_cls(**kwargs)
    ref.load_state_dict(fused.state_dict())  # strict: identical keys and shapes
    return fused.to(dtype), ref.to(dtype)


def collect(model, points, train: bool, point_feats: bool, fused: bool) -> dict[str, torch.Tensor]:
    """Outputs, input and parameter gradients of a fixed random linear functional, and BN buffers."""
    model.train(train)
    gen = torch.Generator().manual_seed(1)
    f64 = torch.float64
    w_glob = torch.randn(points.shape[0], 4096, generator=gen, dtype=f64)
    w_pts = torch.randn(*points.shape[:2], 1024, generator=gen, dtype=f64) / 10
    w_t2 = torch.randn(points.shape[0], 128, 128, generator=gen, dtype=f64)
    x = points.clone().requires_grad_(True)
    if fused:
        out = model(x, return_point_features=point_feats)
        assert isinstance(out, BackboneOutput)
        glob, pts, t2 = out.global_feat, out.point_feat, out.feature_transform
    else:
        glob, pts, t2 = (*model(x), None)[:3]
        pts = pts if point_feats else None
    loss = (glob * w_glob[:, : glob.shape[1]].to(x.dtype)).sum()
    if pts is not None:
        loss = loss + (pts * w_pts[..., : pts.shape[2]].to(x.dtype)).sum()
    if t2 is not None:
        loss = loss + (t2 * w_t2[:, : t2.shape[1], : t2.shape[2]].to(x.dtype)).sum()
    loss.backward()
    result = {"global": glob, "point": pts, "T2": t2, "input grad": x.grad}
    result.update({f"grad {name}": p.grad for name, p in model.named_parameters()})
    result.update(dict(model.named_buffers()))
    return {k: v.detach() for k, v in result.items() if v is not None}


def errors(got: dict, expected: dict) -> dict[str, float]:
    """Relative error per entry; gradients are measured against the largest gradient / 1e4 at least."""
    assert got.keys() == expected.keys()
    grad_floor = 1e-4 * max(float(v.abs().max()) for k, v in expected.items() if k.startswith("grad "))
    errs = {}
    for key, exp in expected.items():
        act = got[key]
        assert act.shape == exp.shape, key
        if not exp.is_floating_point():
            errs[key] = 0.0 if torch.equal(act, exp) else float("inf")
            continue
        floor = grad_floor if key.startswith("grad ") else 1e-3
        scale = max(float(exp.abs().max()), floor)
        errs[key] = float((act.double() - exp.double()).abs().max()) / scale
    return errs


def compare(fused, ref, points, train: bool, point_feats: bool, tol: float) -> None:
    errs = errors(collect(fused, points, train, point_feats, True), collect(ref, points, train, point_feats, False))
    bad = {k: v for k, v in errs.items() if v > tol}
    assert not bad, bad


def points(dtype: torch.dtype, channels: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return torch.randn(B, N, channels, generator=gen).to(dtype)


# ------------------------------------------------------------------------------------------ PointNet
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("point_feats", [False, True])
def test_pointnet_matches_reference(train: bool, point_feats: bool) -> None:
    fused, ref = pair(PointNetEncoder, ReferencePointNet, torch.float64)
    compare(fused, ref, points(torch.float64), train, point_feats, 1e-8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_transform": False, "feature_transform": False, "conv_bias": False},  # STRL PointNet
        {"in_channels": 6, "mlp1": (32, 48), "mlp2": (64, 256)},
    ],
)
def test_pointnet_variants(kwargs) -> None:
    fused, ref = pair(PointNetEncoder, ReferencePointNet, torch.float64, **kwargs)
    pts = points(torch.float64, kwargs.get("in_channels", 3))
    compare(fused, ref, pts, True, False, 1e-8)


def test_pointnet_float32_rounding_like_reference() -> None:
    """In float32 the fused net is as close to the float64 result as the reference float32 net is."""
    fused, ref = pair(PointNetEncoder, ReferencePointNet, torch.float64)
    pts = points(torch.float64)
    truth = collect(copy.deepcopy(ref), pts, True, False, False)
    fused_err = errors(collect(fused.float(), pts.float(), True, False, True), truth)
    ref_err = errors(collect(ref.float(), pts.float(), True, False, False), truth)
    bad = {k: (v, ref_err[k]) for k, v in fused_err.items() if v > max(4 * ref_err[k], 1e-5)}
    assert not bad, bad


def bn_keys(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    keys = {f"{prefix}.{s}": (channels,) for s in ("weight", "bias", "running_mean", "running_var")}
    return {**keys, f"{prefix}.num_batches_tracked": ()}


def test_pointnet_state_dict_matches_original() -> None:
    expected = {}
    for stn, cin, k in (("stn1", 3, 3), ("stn2", 64, 64)):
        for i, (a, b) in zip((0, 3, 6), ((cin, 64), (64, 128), (128, 1024))):
            expected[f"{stn}.mlp1.{i}.weight"] = (b, a, 1)
            expected[f"{stn}.mlp1.{i}.bias"] = (b,)
            expected.update(bn_keys(f"{stn}.mlp1.{i + 1}", b))
        for i, (a, b) in zip((0, 3, 6), ((1024, 512), (512, 256), (256, k * k))):
            expected[f"{stn}.mlp2.{i}.weight"] = (b, a)
            expected[f"{stn}.mlp2.{i}.bias"] = (b,)
            if i < 6:
                expected.update(bn_keys(f"{stn}.mlp2.{i + 1}", b))
    for mlp, dims in (("mlp1", (3, 64, 64)), ("mlp2", (64, 64, 128, 1024))):
        for j, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            expected[f"{mlp}.{3 * j}.weight"] = (b, a, 1)
            expected[f"{mlp}.{3 * j}.bias"] = (b,)
            expected.update(bn_keys(f"{mlp}.{3 * j + 1}", b))
    got = {k: tuple(v.shape) for k, v in PointNetEncoder().state_dict().items()}
    assert got == expected


def test_pointnet_transforms_start_at_identity() -> None:
    model = PointNetEncoder().train()
    out = model(points(torch.float32))
    assert torch.equal(out.feature_transform, torch.eye(64).expand(B, 64, 64))
    assert torch.equal(model.stn1(points(torch.float32)), torch.eye(3).expand(B, 3, 3))


def test_pointnet_dims() -> None:
    model = PointNetEncoder(feature_transform=False)
    out = model(points(torch.float32), return_point_features=True)
    assert model.out_dim == model.point_dim == 1024
    assert out.global_feat.shape == (B, 1024) and out.point_feat.shape == (B, N, 1024)
    assert out.feature_transform is None


# --------------------------------------------------------------------------------------------- DGCNN
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("pooling", "point_feats"), [("max_avg", False), ("max", False), ("max", True)])
def test_dgcnn_matches_reference(train: bool, pooling: str, point_feats: bool) -> None:
    fused, ref = pair(DGCNNEncoder, ReferenceDGCNN, torch.float64, pooling=pooling)
    compare(fused, ref, points(torch.float64), train, point_feats, 1e-8)


def test_dgcnn_float32_and_small_k() -> None:
    fused, ref = pair(DGCNNEncoder, ReferenceDGCNN, torch.float32, k=10, edge_dims=(32, 32, 64), emb_dim=128)
    compare(fused, ref, points(torch.float32), True, True, 1e-4)


def test_dgcnn_extra_input_channels() -> None:
    """kNN of the first layer on xyz, EdgeConv on all channels."""
    fused, ref = pair(DGCNNEncoder, ReferenceDGCNN, torch.float64, in_channels=6, edge_dims=(32, 48), emb_dim=64)
    compare(fused, ref, points(torch.float64, 6), True, True, 1e-8)


def test_dgcnn_state_dict_matches_original() -> None:
    expected = {}
    for i, (cin, cout) in enumerate(((6, 64), (128, 64), (128, 128), (256, 256)), start=1):
        expected[f"conv{i}.0.weight"] = (cout, cin, 1, 1)
        expected.update(bn_keys(f"conv{i}.1", cout))
    expected["conv5.0.weight"] = (1024, 512, 1)
    expected.update(bn_keys("conv5.1", 1024))
    got = {k: tuple(v.shape) for k, v in DGCNNEncoder().state_dict().items()}
    assert got == expected


@pytest.mark.parametrize(("pooling", "dim"), [("max_avg", 2048), ("max", 1024)])
def test_dgcnn_pooling_dims(pooling: str, dim: int) -> None:
    model = DGCNNEncoder(pooling=pooling).eval()
    with torch.no_grad():
        out = model(points(torch.float32), return_point_features=True)
    assert model.out_dim == dim and model.point_dim == 1024
    assert out.global_feat.shape == (B, dim) and out.point_feat.shape == (B, N, 1024)
    assert out.feature_transform is None
    with pytest.raises(ValueError):
        DGCNNEncoder(pooling="avg")


def test_sync_batchnorm_conversion_runs_without_process_group() -> None:
    for cls, ref_cls in ((PointNetEncoder, ReferencePointNet), (DGCNNEncoder, ReferenceDGCNN)):
        fused, ref = pair(cls, ref_cls, torch.float64)
        fused = nn.SyncBatchNorm.convert_sync_batchnorm(fused)
        assert any(isinstance(m, nn.SyncBatchNorm) for m in fused.modules())
        compare(fused, ref, points(torch.float64), True, False, 1e-8)
