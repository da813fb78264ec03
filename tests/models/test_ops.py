"""Fused ops vs. their textbook definitions: values, gradients and BatchNorm bookkeeping."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup_pcd.models.backbones import ops
from selfsup_pcd.models.backbones.ops import (
    edge_conv_bn_act_max,
    knn,
    linear_bn_act,
    linear_bn_act_max,
    linear_bn_act_pool,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from reference_models import graph_feature  # noqa: E402


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    """Max abs error relative to the scale of ``expected`` (at least 1e-3: some gradients are exactly 0
    in exact arithmetic, e.g. of a bias before a training-mode BN, and only rounding noise remains)."""
    scale = expected.abs().max().clamp_min(1e-3)
    err = (actual - expected).abs().max() / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def randomize_bn(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator, negative: bool = True) -> None:
    """Non-trivial affine parameters (some negative gammas: exercises the min branch) and running stats."""
    c = bn.num_features
    with torch.no_grad():
        gamma = torch.rand(c, generator=gen) + 0.5
        if negative:
            gamma[torch.rand(c, generator=gen) < 0.3] *= -1
        bn.weight.copy_(gamma)
        bn.bias.copy_(torch.randn(c, generator=gen) * 0.3)
        bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
        bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)


def brute_knn(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.cdist(x, x).topk(k, dim=-1, largest=False).indices


def same_sets(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.sort(dim=-1).values, b.sort(dim=-1).values)


# ------------------------------------------------------------------------------------------------ kNN
@pytest.mark.parametrize(("n", "channels", "k"), [(256, 3, 20), (250, 64, 16), (1024, 3, 20), (512, 128, 40)])
def test_knn_matches_brute_force(n: int, channels: int, k: int) -> None:
    gen = torch.Generator().manual_seed(n + channels)
    x = torch.randn(3, n, channels, generator=gen, dtype=torch.float64)
    idx = knn(x, k)
    assert idx.shape == (3, n, k) and idx.dtype == torch.long
    assert same_sets(idx, brute_knn(x, k))
    assert (idx == torch.arange(n).view(1, n, 1)).any(-1).all(), "every point is its own neighbour"


def test_topk_two_stage_is_exact() -> None:
    gen = torch.Generator().manual_seed(0)
    score = torch.randn(300, 1024, generator=gen)
    assert ops._group_len(1024, 20) > 1
    assert same_sets(ops._topk_columns(score, 20), score.topk(20, dim=1).indices)


def test_knn_chunked_large(monkeypatch: pytest.MonkeyPatch) -> None:
    """N = 2048: the distance buffer holds one shape at a time; result equals the original kNN."""
    monkeypatch.setattr(ops, "_KNN_CHUNK_ELEMS", 2048 * 2048)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2048, 3, generator=gen)
    idx = knn(x, 20)
    ref = (-torch.cdist(x, x).square()).topk(20, dim=-1).indices
    assert same_sets(idx, ref)


def test_knn_float32_matches_original_formula() -> None:
    from reference_models import reference_knn

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 256, 3, generator=gen)
    assert same_sets(knn(x, 20), reference_knn(x.transpose(1, 2), 20))


# ------------------------------------------------------------------------------ pointwise + max-pool
def _run_linear_max(fused: bool, x, weight, bias, bn, slope, train: bool):
    bn.train(train)
    x = x.clone().requires_grad_(True)
    batch, n, cin = x.shape
    if fused:
        out = linear_bn_act_max(x, weight, bias, bn, slope)
    else:
        y = bn(F.linear(x.reshape(-1, cin), weight, bias))
        out = (F.relu(y) if slope == 0 else F.leaky_relu(y, slope)).view(batch, n, -1).max(dim=1).values
    return out, x


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("slope", "with_bias", "momentum"), [(0.0, True, 0.1), (0.2, False, None)])
def test_linear_bn_act_max(train: bool, slope: float, with_bias: bool, momentum) -> None:
    gen = torch.Generator().manual_seed(3)
    batch, n, cin, cout = 4, 256, 16, 96
    x = torch.randn(batch, n, cin, generator=gen, dtype=torch.float64) + 0.5
    weight = (torch.randn(cout, cin, generator=gen, dtype=torch.float64) / 4).requires_grad_(True)
    bias = (torch.randn(cout, generator=gen, dtype=torch.float64)).requires_grad_(True) if with_bias else None
    bn = nn.BatchNorm1d(cout, momentum=momentum).double()
    randomize_bn(bn, gen)
    bn_ref = copy.deepcopy(bn)
    upstream = torch.randn(batch, cout, generator=gen, dtype=torch.float64)
    results = []
    for fused, module in ((True, bn), (False, bn_ref)):
        params = [weight, *([bias] if with_bias else []), module.weight, module.bias]
        out, xin = _run_linear_max(fused, x, weight, bias, module, slope, train)
        grads = torch.autograd.grad((out * upstream).sum(), [xin, *params])
        results.append((out, grads))
    (out, grads), (out_ref, grads_ref) = results
    assert_close(out, out_ref, 1e-9, "output")
    for i, (g, gr) in enumerate(zip(grads, grads_ref)):
        assert_close(g, gr, 1e-9, f"grad {i}")
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(bn, name), getattr(bn_ref, name), rtol=1e-10), name


def test_linear_bn_act_max_no_grad_and_float32() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 256, 32, generator=gen) * 3 + 1
    weight = torch.randn(256, 32, generator=gen) / 6
    bn = nn.BatchNorm1d(256)
    randomize_bn(bn, gen)
    bn_ref = copy.deepcopy(bn)
    with torch.no_grad():
        out = linear_bn_act_max(x, weight, None, bn, 0.0)
        ref = F.relu(bn_ref(x.reshape(-1, 32) @ weight.t())).view(4, 256, -1).amax(1)
    assert_close(out, ref, 1e-5, "float32 output")
    assert torch.allclose(bn.running_var, bn_ref.running_var, rtol=1e-5)


def _grads_match(out, ref, inputs, ref_inputs, gen, tol: float = 1e-9) -> None:
    """Same outputs and same gradients of a random linear functional of them."""
    up = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in out]
    g = torch.autograd.grad(sum((o * u).sum() for o, u in zip(out, up)), inputs)
    g_ref = torch.autograd.grad(sum((o * u).sum() for o, u in zip(ref, up)), ref_inputs)
    for i, (a, b) in enumerate(zip(out, ref)):
        assert_close(a, b, tol, f"output {i}")
    for i, (a, b) in enumerate(zip(g, g_ref)):
        assert_close(a, b, tol, f"grad {i}")


def _layer_case(seed: int, cin: int, cout: int, with_bias: bool, momentum, train: bool):
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv1d(cin, cout, 1, bias=with_bias).double()
    bn = nn.BatchNorm1d(cout, momentum=momentum).double()
    randomize_bn(bn, gen)
    bn.train(train)
    return gen, conv, bn, copy.deepcopy(conv), copy.deepcopy(bn)


def _params(conv, bn) -> list:
    return [p for p in (*conv.parameters(), bn.weight, bn.bias) if p is not None]


def _reference_layer(x2d, conv, bn, slope):
    y = bn(F.linear(x2d, conv.weight[..., 0], conv.bias))
    return F.relu(y) if slope == 0 else F.leaky_relu(y, slope)


def _check_buffers(bn, bn_ref) -> None:
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(bn, name), getattr(bn_ref, name), rtol=1e-10), name


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("slope", "with_bias", "momentum"), [(0.0, True, 0.1), (0.2, False, None)])
def test_linear_bn_act(train: bool, slope: float, with_bias: bool, momentum) -> None:
    gen, conv, bn, conv_ref, bn_ref = _layer_case(5, 8, 32, with_bias, momentum, train)
    x = (torch.randn(512, 8, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = linear_bn_act(x, conv.weight, conv.bias, bn, slope)
    ref = _reference_layer(x_ref, conv_ref, bn_ref, slope)
    _grads_match([out], [ref], [x, *_params(conv, bn)], [x_ref, *_params(conv_ref, bn_ref)], gen)
    _check_buffers(bn, bn_ref)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(
    ("with_avg", "with_points", "slope"), [(True, False, 0.2), (False, True, 0.0), (True, True, 0.2)]
)
def test_linear_bn_act_pool(train: bool, with_avg: bool, with_points: bool, slope: float) -> None:
    gen, conv, bn, conv_ref, bn_ref = _layer_case(6, 24, 40, True, 0.1, train)
    x = (torch.randn(4, 128, 24, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    pooled, points = linear_bn_act_pool(x, conv.weight, conv.bias, bn, slope, with_avg, with_points)
    z = _reference_layer(x_ref.reshape(-1, 24), conv_ref, bn_ref, slope).view(4, 128, 40)
    ref_pooled = torch.cat([z.max(1).values, z.mean(1)], 1) if with_avg else z.max(1).values
    out, ref = [pooled], [ref_pooled]
    if with_points:
        out.append(points)
        ref.append(z)
    else:
        assert points is None
    _grads_match(out, ref, [x, *_params(conv, bn)], [x_ref, *_params(conv_ref, bn_ref)], gen)
    _check_buffers(bn, bn_ref)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_without_affine_or_running_stats(train: bool) -> None:
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(4, 64, 8, generator=gen, dtype=torch.float64).requires_grad_(True)
    weight = torch.randn(16, 8, generator=gen, dtype=torch.float64).requires_grad_(True)
    for bn in (nn.BatchNorm1d(16, affine=False), nn.BatchNorm1d(16, track_running_stats=False)):
        bn = bn.double().train(train)
        bn_ref = copy.deepcopy(bn)
        out = [
            linear_bn_act(x.reshape(-1, 8), weight, None, bn, 0.2),
            linear_bn_act_max(x, weight, None, bn, 0.0),
            *[t for t in linear_bn_act_pool(x, weight, None, bn, 0.2, True, True) if t is not None],
        ]
        z = bn_ref(F.linear(x.reshape(-1, 8), weight))
        ref = [
            F.leaky_relu(z, 0.2),
            F.relu(z).view(4, 64, 16).amax(1),
            torch.cat([F.leaky_relu(z, 0.2).view(4, 64, 16).amax(1), F.leaky_relu(z, 0.2).view(4, 64, 16).mean(1)], 1),
            F.leaky_relu(z, 0.2).view(4, 64, 16),
        ]
        _grads_match(out, ref, [x, weight], [x, weight], gen)


def test_autocast_runs_in_float32() -> None:
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 128, 6, generator=gen)
    weight = torch.randn(32, 12, generator=gen)
    bn = nn.BatchNorm2d(32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = edge_conv_bn_act_max(x, knn(x, 10), weight, bn, 0.2)
    assert out.dtype == torch.float32
    ref = edge_conv_bn_act_max(x, knn(x, 10), weight, copy.deepcopy(bn), 0.2)
    assert_close(out, ref, 1e-5, "autocast output")


# ------------------------------------------------------------------------------------------ EdgeConv
def _reference_edge(x, idx, conv, bn):
    edge = graph_feature(x.transpose(1, 2), idx.shape[-1], idx)
    return F.leaky_relu(bn(conv(edge)), 0.2).max(dim=-1).values.transpose(1, 2)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("cin", "cout", "momentum"), [(3, 64, 0.1), (32, 48, None)])
def test_edge_conv(train: bool, cin: int, cout: int, momentum) -> None:
    gen = torch.Generator().manual_seed(cin)
    batch, n, k = 4, 256, 20
    x = torch.randn(batch, n, cin, generator=gen, dtype=torch.float64) + 0.3
    idx = knn(x, k)
    conv = nn.Conv2d(2 * cin, cout, 1, bias=False).double()
    bn = nn.BatchNorm2d(cout, momentum=momentum).double()
    randomize_bn(bn, gen)
    conv_ref, bn_ref = copy.deepcopy(conv), copy.deepcopy(bn)
    bn.train(train)
    bn_ref.train(train)
    upstream = torch.randn(batch, n, cout, generator=gen, dtype=torch.float64)
    x1 = x.clone().requires_grad_(True)
    out = edge_conv_bn_act_max(x1, idx, conv.weight, bn, 0.2)
    g = torch.autograd.grad((out * upstream).sum(), [x1, conv.weight, bn.weight, bn.bias])
    x2 = x.clone().requires_grad_(True)
    ref = _reference_edge(x2, idx, conv_ref, bn_ref)
    g_ref = torch.autograd.grad((ref * upstream).sum(), [x2, conv_ref.weight, bn_ref.weight, bn_ref.bias])
    assert_close(out, ref, 1e-9, "output")
    for name, a, b in zip(("x", "weight", "gamma", "beta"), g, g_ref):
        assert_close(a, b, 1e-9, f"grad {name}")
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(bn, name), getattr(bn_ref, name), rtol=1e-10), name


def test_edge_conv_float32_no_grad() -> None:
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 256, 64, generator=gen)
    idx = knn(x, 20)
    conv = nn.Conv2d(128, 64, 1, bias=False)
    bn = nn.BatchNorm2d(64)
    randomize_bn(bn, gen)
    bn_ref = copy.deepcopy(bn)
    with torch.no_grad():
        out = edge_conv_bn_act_max(x, idx, conv.weight, bn, 0.2)
        ref = _reference_edge(x, idx, conv, bn_ref)
    assert_close(out, ref, 1e-4, "float32 output")
    assert torch.allclose(bn.running_var, bn_ref.running_var, rtol=1e-4)


# ------------------------------------------------------------------------------------- SyncBatchNorm
def test_sync_batchnorm_without_process_group_uses_local_stats() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 128, 16, generator=gen, dtype=torch.float64)
    plain = nn.Sequential(nn.BatchNorm1d(40), nn.BatchNorm2d(40)).double()
    for bn in plain:
        randomize_bn(bn, gen)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
    assert all(isinstance(m, nn.SyncBatchNorm) for m in synced)
    weight = torch.randn(40, 16, generator=gen, dtype=torch.float64)
    idx = knn(x, 8)
    conv_w = torch.randn(40, 32, generator=gen, dtype=torch.float64)
    out = linear_bn_act_max(x, weight, None, synced[0], 0.0)
    ref = linear_bn_act_max(x, weight, None, plain[0], 0.0)
    e_out = edge_conv_bn_act_max(x, idx, conv_w, synced[1], 0.2)
    e_ref = edge_conv_bn_act_max(x, idx, conv_w, plain[1], 0.2)
    assert torch.equal(out, ref) and torch.equal(e_out, e_ref)
    for a, b in zip(synced, plain):
        assert torch.equal(a.running_var, b.running_var)


def _sync_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    """One rank of a 2-process gloo run: half the batch through SyncBatchNorm-converted fused ops."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, idx, weight, conv_w, upstream, e_upstream, bns = _sync_case()
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(bns)
        half = x.shape[0] // world
        rows = slice(rank * half, (rank + 1) * half)
        xs = x[rows].clone().requires_grad_(True)
        loss = _sync_loss(xs, idx[rows], weight, conv_w, upstream[rows], e_upstream[rows], synced)
        params = [weight, conv_w, *synced.parameters()]
        grads = torch.autograd.grad(loss, [xs, *params])
        param_grads = [g.clone() for g in grads[1:]]
        for g in param_grads:
            dist.all_reduce(g)
        if rank == 0:
            torch.save(
                {"gx": grads[0], "param_grads": param_grads, "buffers": list(synced.buffers())},
                out_file,
            )
        dist.barrier()  # tear down together: a rank leaving early can abort its peer inside gloo
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip C++ static destructors, which occasionally abort at exit after gloo use


def _sync_loss(x, idx, weight, conv_w, upstream, e_upstream, bns) -> torch.Tensor:
    """All fused ops that use batch statistics, on one (part of the) batch."""
    out = linear_bn_act_max(x, weight, None, bns[0], 0.0)
    e_out = edge_conv_bn_act_max(x, idx, conv_w, bns[1], 0.2)
    h = linear_bn_act(x.reshape(-1, x.shape[-1]), weight, None, bns[2], 0.2).view(*x.shape[:2], -1)
    w_pool = torch.cat([conv_w, conv_w.flip(1)], dim=1)  # (20, 24)
    pooled, points = linear_bn_act_pool(h, w_pool, None, bns[3], 0.2, with_avg=True, with_points=True)
    loss = (out * upstream).sum() + (e_out * e_upstream).sum()
    return loss + (pooled[:, :20] * upstream[:, :20]).sum() + (points * e_upstream).sum() / 7


def _sync_case():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(4, 64, 6, generator=gen, dtype=torch.float64)
    idx = knn(x, 8)
    weight = torch.randn(24, 6, generator=gen, dtype=torch.float64).requires_grad_(True)
    conv_w = torch.randn(20, 12, generator=gen, dtype=torch.float64).requires_grad_(True)
    upstream = torch.randn(4, 24, generator=gen, dtype=torch.float64)
    e_upstream = torch.randn(4, 64, 20, generator=gen, dtype=torch.float64)
    bns = nn.Sequential(nn.BatchNorm1d(24), nn.BatchNorm2d(20), nn.BatchNorm1d(24), nn.BatchNorm1d(20)).double()
    for bn in bns:
        randomize_bn(bn, gen)
    return x, idx, weight, conv_w, upstream, e_upstream, bns


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_sync_batchnorm_two_processes_equals_full_batch(tmp_path: Path) -> None:
    """2 gloo ranks with half the batch each == one process with the whole batch and plain BN."""
    import torch.multiprocessing as mp

    out_file = tmp_path / "rank0.pt"
    mp.spawn(_sync_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    got = torch.load(out_file)
    x, idx, weight, conv_w, upstream, e_upstream, bns = _sync_case()
    xs = x.clone().requires_grad_(True)
    loss = _sync_loss(xs, idx, weight, conv_w, upstream, e_upstream, bns)
    grads = torch.autograd.grad(loss, [xs, weight, conv_w, *bns.parameters()])
    assert_close(got["gx"], grads[0][:2], 1e-9, "grad x")  # rank 0 holds the first half of the batch
    for i, (a, b) in enumerate(zip(got["param_grads"], grads[1:])):
        assert_close(a, b, 1e-9, f"param grad {i}")
    for a, b in zip(got["buffers"], bns.buffers()):
        assert torch.allclose(a, b, rtol=1e-10)


@pytest.mark.parametrize("n", [1, 7, 250, 1024])
def test_group_max_index(n: int) -> None:
    from selfsup_pcd.models.backbones.pointwise import _group_max

    gen = torch.Generator().manual_seed(n)
    y = torch.randn(3, n, 40, generator=gen)
    y[:, :, 0] = 1.0  # ties: any row is a valid answer
    top, arg = torch.empty(3, 40), torch.empty(3, 40, dtype=torch.long)
    _group_max(y, top, arg)
    assert torch.equal(top, y.amax(1))
    assert torch.equal(torch.gather(y, 1, arg.unsqueeze(1)).squeeze(1), top)
