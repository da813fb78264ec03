"""Autograd functions for DGCNN's EdgeConv without (B, N, k, C) edge tensors.

With W = [W1 | W2] acting on [x_j − x_i, x_i], the edge value is y_ij = a_j + b_i with per-point
a = x W1ᵀ and b = x (W2 − W1)ᵀ. BN + LeakyReLU are monotone per channel (increasing where gamma >= 0),
so the max over neighbours j of act(bn(y_ij)) is act(bn(b_i + a_j*)) with j* the neighbour of extreme
a. ``NeighbourMax`` finds j* and ``EdgeStats`` gives the BN statistics over all B·N·k edges from
per-point sums.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .pointwise import CHUNK_ELEMS


class NeighbourMax(torch.autograd.Function):
    """best[i, c] = a[j*, c] with j* = argmax over the k neighbours j of i of sign[c]·a[j, c].

    Also returns nsum[i] = Σ_{j∈N(i)} a[j] (for the BN statistics) from the same cached gathers.
    Neighbours are gathered a chunk of rows at a time into one reused buffer; only the winning index
    per (point, channel) is kept for backward, which scatters the gradient there.
    """

    @staticmethod
    def forward(ctx, a: Tensor, nbrs: Tensor, sign: Tensor | None, need_sum: bool):
        rows, ch = a.shape
        k = nbrs.shape[1]
        src = a if sign is None else a * sign
        need_index = ctx.needs_input_grad[0]
        best = a.new_empty(rows, ch)
        nsum = a.new_empty(rows, ch) if need_sum else a.new_empty(0)
        jstar = torch.empty(rows, ch, dtype=torch.long, device=a.device) if need_index else None
        per = max(1, min(rows, CHUNK_ELEMS // (k * ch)))
        buf = a.new_empty(per * k, ch)
        iota = torch.arange(k, dtype=a.dtype, device=a.device).view(1, k, 1)
        for r0 in range(0, rows, per):
            r1 = min(rows, r0 + per)
            cand = buf[: (r1 - r0) * k]
            torch.index_select(src, 0, nbrs[r0:r1].reshape(-1), out=cand)
            cand = cand.view(r1 - r0, k, ch)
            torch.amax(cand, dim=1, out=best[r0:r1])
            if need_sum:
                torch.sum(cand, dim=1, out=nsum[r0:r1])
            if need_index:  # slot of the (last) maximum, vectorised; then its point index
                cand.eq_(best[r0:r1].unsqueeze(1)).mul_(iota)
                slot = cand.amax(dim=1).to(torch.long)
                torch.gather(nbrs[r0:r1], 1, slot, out=jstar[r0:r1])
        if sign is not None:
            best.mul_(sign)
            if need_sum:
                nsum.mul_(sign)
        ctx.save_for_backward(jstar)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(nsum)
        return best, nsum

    @staticmethod
    @once_differentiable
    def backward(ctx, g_best: Tensor, g_nsum: Tensor | None):
        (jstar,) = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0] and g_best is not None:
            grad = torch.zeros_like(g_best).scatter_add_(0, jstar, g_best)
        return grad, None, None, None


def reverse_sum(nbrs: Tensor, deg: Tensor, values: Tensor) -> Tensor:
    """r[j] = Σ_{i : j ∈ N(i)} values[i], via a sparse CSR matrix of the reversed kNN graph."""
    rows, k = nbrs.shape
    order = torch.argsort(nbrs.reshape(-1))
    crow = torch.zeros(rows + 1, dtype=torch.long, device=nbrs.device)
    torch.cumsum(deg, 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        adj_t = torch.sparse_csr_tensor(
            crow, order // k, values.new_ones(order.numel()), size=(rows, rows), check_invariants=False
        )
        return adj_t @ values


class EdgeStats(torch.autograd.Function):
    """Mean and biased variance of all edge values y_ij = a_j + b_i (i: point, j ∈ N(i): k neighbours).

    With d_j = in-degree of j, μa = Σ d_j a_j / (Nk), μb = Σ b_i / N, ã = a − μa, b̃ = b − μb:
      mean = μa + μb,   Nk·var = Σ_j d_j ã_j² + Σ_i b̃_i (k b̃_i + 2 Σ_{j∈N(i)} ã_j),
    all per point (centred, so no cancellation). The gradient needs Σ over the reversed graph of b̃.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, nbrs: Tensor, nsum: Tensor):
        rows, ch = a.shape
        k = nbrs.shape[1]
        n = rows * k
        deg_i = torch.bincount(nbrs.reshape(-1), minlength=rows)
        deg = deg_i.to(a.dtype)
        mu_a = (deg @ a).div_(n)
        mu_b = b.sum(0).div_(rows)
        q = a.new_zeros(ch)
        per = max(1, min(rows, CHUNK_ELEMS // ch))
        for r0 in range(0, rows, per):
            r1 = min(rows, r0 + per)
            ac = a[r0:r1] - mu_a
            ac.mul_(ac)
            q.add_(deg[r0:r1] @ ac)
            bc = b[r0:r1] - mu_b
            t = torch.add(nsum[r0:r1], mu_a, alpha=-k).mul_(2).add_(bc, alpha=k)  # k b̃ + 2 Σ ã_j
            q.add_(t.mul_(bc).sum(0))
        ctx.save_for_backward(a, b, nbrs, nsum, deg_i, mu_a, mu_b)
        return mu_a + mu_b, q.div_(n).clamp_min_(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_mean: Tensor | None, g_var: Tensor | None):
        a, b, nbrs, nsum, deg_i, mu_a, mu_b = ctx.saved_tensors
        rows, ch = a.shape
        k = nbrs.shape[1]
        n = rows * k
        deg = deg_i.to(a.dtype).unsqueeze(1)
        if g_mean is None:
            g_mean = a.new_zeros(ch)
        if g_var is None:
            g_var = a.new_zeros(ch)
        cv = g_var * (2.0 / n)
        # d var / d a_j = 2/(Nk)·(d_j ã_j + Σ_{i→j} b̃_i);  d mean / d a_j = d_j/(Nk)
        ga = (a - mu_a).mul_(deg).add_(reverse_sum(nbrs, deg_i, b - mu_b)).mul_(cv)
        ga.addcmul_(deg, (g_mean / n).unsqueeze(0))
        # d var / d b_i = 2/(Nk)·(Σ_{j∈N(i)} ã_j + k b̃_i);  d mean / d b_i = 1/N
        gb = torch.add(nsum, mu_a, alpha=-k).add_(b - mu_b, alpha=k).mul_(cv).add_(g_mean / rows)
        return ga, gb, None, None
