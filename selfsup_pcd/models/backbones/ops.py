"""Fused point-cloud ops shared by the PointNet and DGCNN encoders.

All tensors are channels-last: points (B, N, C), or (B·N, C) row matrices, so every pointwise layer is
one matmul. The fused blocks compute exactly the function of the textbook layers (same values,
gradients and BatchNorm running statistics; only float rounding differs) but avoid the tensors that
make the originals slow on CPUs: the (B, C, N, k) EdgeConv edge features and the (B, N, 1024)
pre-pooling activations, which are large, freshly allocated every step and mostly page faults.

Key identities (s, t = per-channel BN scale and shift, act = ReLU/LeakyReLU, both monotone):
  max_n act(s·y_n + t) = act(s·ext_n(y_n) + t), ext = max where s >= 0 and min where s < 0;
  EdgeConv with W = [W1 | W2] on [x_j − x_i, x_i]: y_ij = a_j + b_i, a = x W1ᵀ, b = x (W2 − W1)ᵀ.
BN statistics over the never-built tensors come from per-point quantities (``edge.EdgeStats``) or
from the Gram matrix of the layer input (``pointwise.LinearGroupMax``); the autograd functions in
``pointwise`` / ``edge`` have hand-written backward passes that work on cache-sized chunks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .bn import Stats, activation, activation_, bn_scale_shift, gamma_sign, uses_batch_stats
from .edge import EdgeStats, NeighbourMax
from .pointwise import LinearBNAct, LinearBNActPool, LinearGroupMax

# kNN distance scratch: at most this many elements (64 MiB fp32), never the whole B×N×N.
_KNN_CHUNK_ELEMS = 1 << 24

__all__ = [
    "edge_conv_bn_act_max",
    "knn",
    "linear_bn_act",
    "linear_bn_act_max",
    "linear_bn_act_pool",
]


_F = TypeVar("_F", bound=Callable)


def _outside_autocast(fn: _F) -> _F:
    """Run ``fn`` in float32 with autocast off (mixed-precision training): the fused autograd
    functions need one dtype throughout, and kNN ranks and BN statistics want float32 anyway."""

    @functools.wraps(fn)
    def wrapper(x: Tensor, *args, **kwargs):
        if not torch.is_autocast_enabled(x.device.type):
            return fn(x, *args, **kwargs)
        with torch.autocast(x.device.type, enabled=False):
            return fn(x.float(), *args, **kwargs)

    return wrapper  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- kNN
def _group_len(n: int, k: int) -> int:
    """Members per group for the two-stage top-k (1 = plain top-k)."""
    length = 1
    while n % (2 * length) == 0 and n // (2 * length) >= max(4 * k, 128):
        length *= 2
    return length


def _topk_columns(score: Tensor, k: int) -> Tensor:
    """Column indices of the k largest entries of every row of ``score`` (R, N), in no fixed order.

    Two stages, exact: split the columns into G groups {g, g+G, g+2G, ...}; every top-k element lies
    in a group whose maximum is among the k largest group maxima (otherwise k larger group maxima
    would exceed it), so a top-k over the group maxima and then over the k·N/G candidates suffices.
    About 2x faster than one top-k over N on CPUs, where top-k is a per-row selection.
    """
    rows, n = score.shape
    length = _group_len(n, k)
    if length == 1:
        return score.topk(k, dim=1, sorted=False).indices
    groups = n // length
    group_max = score.view(rows, length, groups).amax(dim=1)
    top_groups = group_max.topk(k, dim=1, sorted=False).indices
    offsets = torch.arange(0, n, groups, device=score.device)
    cand = (top_groups.unsqueeze(2) + offsets).view(rows, k * length)
    best = torch.gather(score, 1, cand).topk(k, dim=1, sorted=False).indices
    return torch.gather(cand, 1, best)


@torch.no_grad()
@_outside_autocast
def knn(x: Tensor, k: int) -> Tensor:
    """Indices (B, N, k) of the k nearest neighbours of every point of ``x`` (B, N, C), itself included.

    Ranks by 2·x_i·x_j − |x_j|², which orders j like −|x_i − x_j|² (the original criterion) for every
    row i. Distances are formed a few shapes at a time in one reused buffer (one ``baddbmm`` each), so
    at most one B×N×N-sized tensor ever exists and usually far less.
    """
    x = x.detach()
    batch, n, _ = x.shape
    if k > n:
        raise ValueError(f"k={k} exceeds the number of points {n}")
    neg_sq = x.square().sum(-1).neg_().unsqueeze(1)  # (B, 1, N)
    out = torch.empty(batch, n, k, dtype=torch.long, device=x.device)
    per = max(1, min(batch, _KNN_CHUNK_ELEMS // (n * n)))
    score = x.new_empty(per, n, n)
    for b0 in range(0, batch, per):
        b1 = min(batch, b0 + per)
        s = score[: b1 - b0]
        torch.baddbmm(neg_sq[b0:b1], x[b0:b1], x[b0:b1].transpose(1, 2), alpha=2, out=s)
        out[b0:b1] = _topk_columns(s.view(-1, n), k).view(b1 - b0, n, k)
    return out


# ---------------------------------------------------------------------------------- pointwise layers
def _affine(bn: _BatchNorm) -> tuple[Tensor | None, Tensor | None]:
    return bn.weight, bn.bias


@_outside_autocast
def linear_bn_act(x: Tensor, weight: Tensor, bias: Tensor | None, bn: _BatchNorm, negative_slope: float) -> Tensor:
    """act(bn(x @ Wᵀ + b)) for a channels-last (rows, Cin) matrix; ``weight`` may be Conv1d-shaped.

    Meant for narrow inputs (its backward has Cin×Cin terms); keeps only the output for backward.
    """
    w = weight.reshape(weight.shape[0], -1)
    return LinearBNAct.apply(x.contiguous(), w, bias, *_affine(bn), bn, negative_slope)


@_outside_autocast
def linear_bn_act_pool(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    bn: _BatchNorm,
    negative_slope: float,
    with_avg: bool = False,
    with_points: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """z = act(bn(x @ Wᵀ + b)) for ``x`` (B, N, Cin), pooled over points: (max, or [max ‖ mean] with
    ``with_avg``) of shape (B, Cout or 2·Cout), and z (B, N, Cout) itself only with ``with_points``."""
    batch, n, cin = x.shape
    w = weight.reshape(weight.shape[0], -1)
    pooled, points = LinearBNActPool.apply(
        x.reshape(batch * n, cin), w, bias, *_affine(bn), bn, negative_slope, batch, with_avg, with_points
    )
    return pooled, (points.view(batch, n, -1) if with_points else None)


@_outside_autocast
def linear_bn_act_max(x: Tensor, weight: Tensor, bias: Tensor | None, bn: _BatchNorm, negative_slope: float) -> Tensor:
    """max over points of act(bn(x @ Wᵀ + b)) for ``x`` (B, N, Cin) -> (B, Cout).

    Same values, gradients and BN updates as the layer followed by a global max-pool, without ever
    holding the (B, N, Cout) activations; the backward pass costs O(B·N·Cin²) instead of O(B·N·Cin·Cout).
    """
    batch, n, cin = x.shape
    w = weight.reshape(weight.shape[0], -1)
    with_stats = uses_batch_stats(bn)
    mx, mean, var = LinearGroupMax.apply(x.reshape(batch * n, cin), w, gamma_sign(bn), batch, with_stats)
    if bias is not None:
        mx = mx + bias
        mean = mean + bias

    def stats() -> Stats:
        return batch * n, mean, var

    scale, shift = bn_scale_shift(bn, stats)
    return activation(torch.addcmul(shift, mx, scale), negative_slope)


# ------------------------------------------------------------------------------------------ EdgeConv
@_outside_autocast
def edge_conv_bn_act_max(x: Tensor, idx: Tensor, weight: Tensor, bn: _BatchNorm, negative_slope: float) -> Tensor:
    """DGCNN EdgeConv: max over j ∈ kNN(i) of act(bn(W [x_j − x_i, x_i])) for ``x`` (B, N, Cin).

    ``idx`` (B, N, k) holds per-shape neighbour indices (from :func:`knn`), ``weight`` is the bias-free
    1×1 Conv2d weight (Cout, 2·Cin[, 1, 1]). Returns (B, N, Cout). Never builds the (B, N, k, ·) edge
    tensors: k× fewer FLOPs, and BN statistics over the B·N·k edges come from per-point sums.
    """
    batch, n, cin = x.shape
    k = idx.shape[-1]
    rows = batch * n
    w = weight.reshape(weight.shape[0], -1)
    if w.shape[1] != 2 * cin:
        raise ValueError(f"EdgeConv weight expects {w.shape[1] // 2} input channels, got {cin}")
    w_nbr = w[:, :cin]
    x2 = x.reshape(rows, cin)
    a = F.linear(x2, w_nbr)  # neighbour term a_j
    b = F.linear(x2, w[:, cin:] - w_nbr)  # centre term b_i
    offsets = torch.arange(0, rows, n, device=x.device).view(batch, 1, 1)
    nbrs = (idx + offsets).view(rows, k)
    with_stats = uses_batch_stats(bn)
    best, nsum = NeighbourMax.apply(a, nbrs, gamma_sign(bn), with_stats)
    u = best.add_(b)  # value of the winning edge, a_j* + b_i

    def stats() -> Stats:
        mean, var = EdgeStats.apply(a, b, nbrs, nsum)
        return rows * k, mean, var

    scale, shift = bn_scale_shift(bn, stats)
    return activation_(torch.addcmul(shift, u, scale), negative_slope).view(batch, n, -1)
