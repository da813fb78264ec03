"""PointNet++ ops against brute-force loops; VoteNet's PointNet++ and SR-UNet seed backbones; pretrained loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup_pcd.checkpoints import CheckpointError, save_backbone
from selfsup_pcd.models.backbones import pointnet2_ops as ops
from selfsup_pcd.models.backbones.pointnet2 import PointNet2Backbone, SeedFeatures, load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = {"npoints": (128, 64, 32, 16), "radii": (0.2, 0.4, 0.8, 1.2), "nsamples": (16, 8, 8, 8),
         "sa_mlps": ((16, 16, 32), (32, 32, 64), (32, 32, 64), (32, 32, 64)), "fp_mlps": ((64, 48), (64, 48))}


def cloud(batch: int, n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, 3, generator=g) * scale


def sq_dist(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """dx² + dy² + dz² in float32, left to right (the kernels' formula)."""
    d = (p - q).astype(np.float32)
    return d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]


# ------------------------------------------------------------------------------------- brute force
def fps_loop(xyz: np.ndarray, npoint: int) -> list[int]:
    chosen, dist = [0], np.full(len(xyz), 1e10, np.float32)
    for _ in range(npoint - 1):
        dist = np.minimum(dist, sq_dist(xyz, xyz[chosen[-1]]))
        chosen.append(int(np.argmax(dist)))  # first maximum
    return chosen


def ball_query_loop(radius: float, nsample: int, xyz: np.ndarray, centres: np.ndarray) -> np.ndarray:
    r2 = np.float32(radius) * np.float32(radius)
    out = np.zeros((len(centres), nsample), np.int64)
    for s, c in enumerate(centres):
        found = np.flatnonzero(sq_dist(xyz, c) < r2)[:nsample].tolist()  # ascending index order
        if found:
            out[s] = found + [found[0]] * (nsample - len(found))
    return out


# ---------------------------------------------------------------------------------------------- FPS
def test_fps_equals_a_loop_per_cloud_with_distance_ties() -> None:
    xyz = cloud(3, 400, seed=0)
    # a cloud on an integer grid has many equal distances: ties must go to the lowest index, as argmax's
    xyz[2] = torch.randint(0, 5, (400, 3), generator=torch.Generator().manual_seed(1)).float()
    got = ops.furthest_point_sample(xyz, 60)
    assert got.shape == (3, 60) and got.dtype == torch.long
    for b in range(3):
        assert got[b].tolist() == fps_loop(xyz[b].numpy(), 60)
    assert len(set(got[0].tolist())) == 60


def test_fps_rejects_more_samples_than_points() -> None:
    with pytest.raises(ValueError, match="cannot sample"):
        ops.furthest_point_sample(cloud(1, 5, 0), 6)


# --------------------------------------------------------------------------------------- ball query
@pytest.mark.parametrize("offset", [0.0, 40.0])  # far from the origin the expanded |p|²+|q|²−2pq form is coarse
def test_ball_query_equals_first_k_within_radius_in_index_order(offset: float) -> None:
    xyz = cloud(2, 300, seed=2) + offset
    xyz[:, -1] = offset + 5.0  # an isolated point: its own only neighbour
    centres = torch.cat([ops.gather_points(xyz, ops.furthest_point_sample(xyz, 40)), xyz[:, -1:],
                         torch.full((2, 1, 3), offset - 7.0)], dim=1)  # ... and a centre with no point near it
    for radius, nsample in ((0.2, 8), (0.5, 64)):
        got = ops.ball_query(radius, nsample, xyz, centres)
        assert got.shape == (2, 42, nsample)
        for b in range(2):
            want = ball_query_loop(radius, nsample, xyz[b].numpy(), centres[b].numpy())
            np.testing.assert_array_equal(got[b].numpy(), want)
        assert (got[:, 40] == 299).all()  # the isolated point: every slot repeats it
        assert (got[:, 41] == 0).all()  # nothing found: index 0 everywhere, as the CUDA op leaves it
    full = ops.ball_query(0.5, 64, xyz, centres)
    assert (full[:, :40, -1] != full[:, :40, 0]).any()  # some centres fill all 64 slots with distinct points


# ------------------------------------------------------------------------------------------ grouping
def test_group_points_gathers_rows_and_scatters_gradients() -> None:
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 30, 5, generator=g, requires_grad=True)
    idx = torch.randint(0, 30, (2, 7, 4), generator=g)
    out = ops.group_points(feats, idx)
    assert out.shape == (2, 7, 4, 5)
    for b in range(2):
        for s in range(7):
            for k in range(4):
                assert torch.equal(out[b, s, k], feats[b, idx[b, s, k]])
    out.sum().backward()
    counts = torch.stack([torch.bincount(idx[b].reshape(-1), minlength=30) for b in range(2)]).float()
    assert torch.equal(feats.grad, counts.unsqueeze(-1).expand(2, 30, 5))


# ------------------------------------------------------------------------------------ three-NN / IDW
def test_three_nn_and_interpolation_equal_brute_force() -> None:
    known, unknown = cloud(2, 50, seed=4), cloud(2, 80, seed=5)
    unknown[:, 0] = known[:, 7]  # an unknown point on a known one: distance 0, that point's features
    feats = torch.randn(2, 50, 6, generator=torch.Generator().manual_seed(6))
    dist, idx = ops.three_nn(unknown, known)
    weight = ops.three_nn_weights(dist)
    out = ops.three_interpolate(feats, idx, weight)
    for b in range(2):
        d2 = sq_dist(unknown[b].numpy()[:, None], known[b].numpy()[None])
        order = np.argsort(d2, axis=1, kind="stable")[:, :3]
        np.testing.assert_array_equal(idx[b].numpy(), order)
        d = np.sqrt(np.take_along_axis(d2, order, 1))
        np.testing.assert_allclose(dist[b].numpy(), d, rtol=1e-6)
        w = 1.0 / (d + 1e-8)
        w /= w.sum(1, keepdims=True)
        want = (feats[b].numpy()[order] * w[..., None]).sum(1)
        np.testing.assert_allclose(out[b].numpy(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[:, 0], feats[:, 7], rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------- registry
def test_an_implementation_can_be_slotted_in_by_name() -> None:
    calls = []

    @ops.register("furthest_point_sample", "counting")
    def counting(xyz, npoint):
        calls.append(npoint)
        return ops._REGISTRY["furthest_point_sample"]["torch"](xyz, npoint)

    xyz = cloud(1, 20, 7)
    try:
        with ops.use("counting"):
            assert ops.active_implementation("furthest_point_sample") == "counting"
            assert ops.active_implementation("ball_query") == "torch"  # ops without that name keep theirs
            PointNet2Backbone(**{**SMALL, "npoints": (16, 8, 6, 4), "fp_mlps": ((8,),)})(xyz)
        assert calls == [16, 8, 6, 4]
        assert ops.active_implementation("furthest_point_sample") == "torch"
        with pytest.raises(KeyError):
            ops.set_implementation("ball_query", "counting")
    finally:
        del ops._REGISTRY["furthest_point_sample"]["counting"]


# ------------------------------------------------------------------------------------------- backbone
def test_votenet_backbone_gives_1024_seeds_of_256_at_fps_points() -> None:
    torch.manual_seed(0)
    net = PointNet2Backbone(in_channels=1)
    assert net.num_seeds == 1024 and net.out_dim == 256
    assert net.state_dict()["sa1.mlp_module.layer0.conv.weight"].shape == (64, 4, 1, 1)  # VoteNet's names
    xyz = cloud(2, 2100, seed=8, scale=4.0)
    points = torch.cat([xyz, xyz[..., 2:] - 0.1], dim=-1)  # a height channel
    with torch.no_grad():
        out = net(points)
    assert isinstance(out, SeedFeatures)
    assert out.xyz.shape == (2, 1024, 3) and out.features.shape == (2, 1024, 256) and out.indices.shape == (2, 1024)
    assert out.indices.dtype == torch.long
    assert torch.equal(ops.gather_points(xyz, out.indices), out.xyz)
    # VoteNet reads the seed indices as sa1_inds[:, :1024]: FPS of an FPS-ordered subset is its prefix
    assert torch.equal(out.indices, ops.furthest_point_sample(xyz, 1024))
    assert torch.equal(out.global_feat, out.features.amax(1))
    with pytest.raises(ValueError, match="in_channels=1"):
        net(xyz)


def test_gradients_reach_every_parameter_and_fused_equals_plain() -> None:
    """The fused MLPs (default) against plain linear + BN + ReLU in float64 (the plain float32 path is the less
    accurate one: BN of low-variance channels amplifies its rounding)."""
    torch.manual_seed(1)
    fused = PointNet2Backbone(in_channels=2, **SMALL)
    plain = PointNet2Backbone(in_channels=2, fused=False, **SMALL).double()
    plain.load_state_dict(fused.state_dict())
    points = torch.cat([cloud(3, 400, seed=9), torch.randn(3, 400, 2)], dim=-1)
    outs = []
    for net in (fused, plain):
        out = net(points.to(next(net.parameters()).dtype))
        assert out.features.shape == (3, 64, 48) and ((out.indices >= 0) & (out.indices < 400)).all()
        (out.features * torch.linspace(-1, 1, 48, dtype=out.features.dtype)).square().mean().backward()
        outs.append(out.features.detach())
    torch.testing.assert_close(outs[0].double(), outs[1], rtol=1e-3, atol=1e-3)
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert (p.grad.double() - q.grad).norm() <= 1e-3 * q.grad.norm(), name
    for key, value in fused.state_dict().items():  # BN running statistics updated alike
        torch.testing.assert_close(value.to(plain.state_dict()[key].dtype), plain.state_dict()[key], rtol=1e-4,
                                   atol=1e-5, msg=key)


# ------------------------------------------------------------------------------------------ transfer
def test_xyz_only_export_loads_fully_and_refuses_height_unless_told(tmp_path, caplog) -> None:
    torch.manual_seed(2)
    pretrained = PointNet2Backbone(in_channels=0, **SMALL)
    for p in pretrained.parameters():
        torch.nn.init.normal_(p)
    path = tmp_path / "backbone.pt"
    save_backbone(path, pretrained)
    xyz_only = PointNet2Backbone(in_channels=0, **SMALL)
    report = load_pretrained(xyz_only, path)
    assert report.complete and len(report.loaded) == len(pretrained.state_dict())
    for key, value in pretrained.state_dict().items():
        assert torch.equal(xyz_only.state_dict()[key], value)

    with_height = PointNet2Backbone(in_channels=1, **SMALL)
    before = with_height.state_dict()["sa1.mlp_module.layer0.conv.weight"].clone()
    with pytest.raises(CheckpointError, match=r"in_channels=0.*allow_input_mismatch"):
        load_pretrained(with_height, path)
    report = load_pretrained(with_height, path, allow_input_mismatch=True)
    assert report.missing == ["sa1.mlp_module.layer0.conv.weight"]
    assert "shape mismatch" in caplog.text
    assert torch.equal(with_height.state_dict()["sa1.mlp_module.layer0.conv.weight"], before)
    for key, value in pretrained.state_dict().items():
        if key != "sa1.mlp_module.layer0.conv.weight":
            assert torch.equal(with_height.state_dict()[key], value), key

    other = PointNet2Backbone(in_channels=0, **{**SMALL, "fp_mlps": ((64, 32), (32, 32))})
    with pytest.raises(CheckpointError, match="partial load refused"):
        load_pretrained(other, path, allow_input_mismatch=True)


# -------------------------------------------------------------------------------------- SR-UNet seeds
def test_srunet_seeds_take_their_voxels_feature(tmp_path) -> None:
    pytest.importorskip("MinkowskiEngine")
    from selfsup_pcd.models.backbones.srunet import SRUNet
    from selfsup_pcd.models.backbones.srunet_seeds import SRUNetSeeds

    torch.manual_seed(3)
    net = SRUNetSeeds(in_channels=1, voxel_size=0.1, num_seeds=48, out_dim=64, arch="Res16UNet14A").eval()
    assert net.out_dim == 64 and net.num_seeds == 48
    xyz = cloud(2, 500, seed=10, scale=1.5)
    points = torch.cat([xyz, xyz[..., 2:]], dim=-1)
    with torch.no_grad():
        out = net(points)
        vox = net.voxelize(points)
        voxel_feats = net.unet.features(vox["coords"], vox["feats"])
    assert out.features.shape == (2, 48, 64) and out.xyz.shape == (2, 48, 3)
    assert torch.equal(out.indices, ops.furthest_point_sample(xyz, 48))
    assert torch.equal(out.xyz, ops.gather_points(xyz, out.indices))
    seed_voxel = vox["inverse"].view(2, 500).gather(1, out.indices)
    cells = torch.floor(out.xyz / 0.1).int()
    assert torch.equal(vox["coords"][seed_voxel.view(-1), 1:].view(2, 48, 3), cells)  # the seed's own voxel
    with torch.no_grad():
        want = net.proj(voxel_feats[seed_voxel.view(-1)]).view(2, 48, 64)
    torch.testing.assert_close(out.features, want)
    assert not torch.allclose(out.features[:, 0], out.features[:, 1])

    # a plain SR-UNet checkpoint (scene pretraining) loads into the SR-UNet part
    source = SRUNet(1, None, "Res16UNet14A")
    path = tmp_path / "srunet.pt"
    save_backbone(path, source)
    report = load_pretrained(net, path)
    assert report.complete and torch.equal(net.unet.state_dict()["net.conv0p1s1.kernel"],
                                           source.state_dict()["net.conv0p1s1.kernel"])
