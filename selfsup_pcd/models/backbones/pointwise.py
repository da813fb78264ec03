"""Autograd functions for channels-last pointwise layers: linear (1×1 conv) → BatchNorm → activation.

They compute exactly what ``F.linear`` + ``nn.BatchNorm`` + (Leaky)ReLU [+ pooling over each shape's
points] compute, with hand-written backward passes that avoid the temporaries autograd would create:

* ``LinearBNAct``: returns the activations and keeps only them (no pre-BN copy). Since y − mean(y)
  is linear in x, the BN statistics come from the Cin×Cin Gram matrix of x, and in backward terms
  like (y − mean) W become (x − x̄)(Wᵀ D W): cheap for the narrow layers it is used for.
* ``LinearBNActPool``: pooled (max / [max ‖ avg]) outputs, per-point outputs optional; keeps the
  pre-BN values y and recomputes everything else chunk-wise in backward.
* ``LinearGroupMax``: per-shape max of y plus its mean/var, never storing y; backward in O(Cin²).

Work is done on cache-sized chunks of rows with reused scratch buffers, so the large per-step
allocations are only the tensors autograd has to keep and the input gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

from .bn import activation_, bn_statistics, sync_group, uses_batch_stats

# Scratch blocks of ~4 MiB (fp32): reused across chunks, so they stay in cache and fault in once.
CHUNK_ELEMS = 1 << 20


def _chunk(width: int, total: int) -> int:
    return max(1, min(total, CHUNK_ELEMS // max(1, width)))


def _centred_sq_sum(y: Tensor, mean: Tensor) -> Tensor:
    """Σ_rows (y − mean)², chunk by chunk (no cancellation, no full-size temporary)."""
    per = _chunk(y.shape[1], y.shape[0])
    buf = y.new_empty(per, y.shape[1])
    acc = y.new_zeros(y.shape[1])
    for r0 in range(0, y.shape[0], per):
        d = torch.sub(y[r0 : r0 + per], mean, out=buf[: min(per, y.shape[0] - r0)])
        acc += d.mul_(d).sum(0)
    return acc


def _centred_gram(x: Tensor, xbar: Tensor) -> Tensor:
    """(x − x̄)ᵀ(x − x̄), chunk by chunk."""
    per = _chunk(x.shape[1], x.shape[0])
    buf = x.new_empty(per, x.shape[1])
    gram = x.new_zeros(x.shape[1], x.shape[1])
    for r0 in range(0, x.shape[0], per):
        d = torch.sub(x[r0 : r0 + per], xbar, out=buf[: min(per, x.shape[0] - r0)])
        gram.addmm_(d.t(), d)
    return gram


def _act_grad(g: Tensor, pre: Tensor, slope: float, out: Tensor) -> Tensor:
    """g · act'(pre) into ``out`` (may be ``g``) in one pass, with autograd's own kernels; ``pre`` may
    be the pre-activation or the activation (same sign)."""
    if slope == 0:
        return torch.ops.aten.threshold_backward.grad_input(g, pre, 0, grad_input=out)
    return torch.ops.aten.leaky_relu_backward.grad_input(g, pre, slope, False, grad_input=out)


def _last_index_of(values: Tensor, target: Tensor) -> Tensor:
    """Largest m with values[g, m, c] == target[g, c], as (g, c) int64 (vectorised, no argmax kernel)."""
    iota = torch.arange(values.shape[1], dtype=values.dtype, device=values.device).view(1, -1, 1)
    return (values == target.unsqueeze(1)).to(values.dtype).mul_(iota).amax(dim=1).to(torch.long)


def _group_max(y3: Tensor, top: Tensor, arg: Tensor | None) -> None:
    """top[g, c] = max over rows r of y3[g, r, c]; with ``arg``, also a row r attaining it.

    Two levels so that the full (g, n, c) block is read once: maxima of blocks of 32 rows, then only
    the winning block's rows are searched for the index (torch.max with indices over a non-inner
    dimension is several times slower than this on CPUs).
    """
    g, n, c = y3.shape
    if arg is None:
        torch.amax(y3, dim=1, out=top)
        return
    size = next((b for b in (32, 16, 8, 4, 2) if n % b == 0 and n > b), n)
    blocks = y3.view(g, n // size, size, c)
    block_max = blocks.amax(dim=2)
    torch.amax(block_max, dim=1, out=top)
    block = _last_index_of(block_max, top)
    inner = torch.gather(blocks, 1, block.view(g, 1, 1, c).expand(g, 1, size, c)).squeeze(1)
    torch.add(_last_index_of(inner, top), block, alpha=size, out=arg)


class _Norm(NamedTuple):
    """What BN normalised this batch with: ``bn(y) = y * scale + shift``, scale = gamma·rstd."""

    batch: bool  # batch statistics (training) rather than running ones
    count: int  # global number of values per channel (batch statistics only)
    mean: Tensor
    rstd: Tensor
    scale: Tensor
    shift: Tensor
    group: object  # SyncBatchNorm process group, or None


def _normalisation(
    bn: _BatchNorm, gamma: Tensor | None, beta: Tensor | None, rows: int, y_stats: Callable[[], tuple]
) -> _Norm:
    """BN statistics (synced, running stats updated) and the affine map, inside a Function.forward."""
    count, mean, var = bn_statistics(bn, lambda: (rows, *y_stats()))
    rstd = torch.rsqrt(var + bn.eps)
    scale = rstd if gamma is None else rstd * gamma
    shift = -mean * scale
    if beta is not None:
        shift = shift + beta
    batch = uses_batch_stats(bn)
    return _Norm(batch, count, mean, rstd, scale, shift, sync_group(bn) if batch else None)


def _bn_backward(norm: _Norm, g_beta: Tensor, sdyx: Tensor):
    """From the local Σ g_p and Σ g_p (y − mean) (g_p: gradient w.r.t. the BN output), the gradients
    of gamma and beta and the coefficients c1, c2 of dL/dy = scale·g_p − c1 − (y − mean)·c2
    (c1 = c2 = None with running statistics). SyncBatchNorm sums over the group, like its backward."""
    grad_gamma, grad_beta = sdyx * norm.rstd, g_beta
    if not norm.batch:
        return grad_gamma, grad_beta, None, None
    sums = torch.cat([g_beta, sdyx])
    if norm.group is not None:
        torch.distributed.all_reduce(sums, group=norm.group)
    c = g_beta.shape[0]
    c1 = norm.scale * sums[:c] / norm.count
    c2 = norm.scale * norm.rstd.square() * sums[c:] / norm.count
    return grad_gamma, grad_beta, c1, c2


def _affine_grads(ctx, grad_gamma: Tensor, grad_beta: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Gradients for the (gamma, beta) inputs at positions 3 and 4; None where not needed / absent."""
    return (
        grad_gamma if ctx.needs_input_grad[3] else None,
        grad_beta if ctx.needs_input_grad[4] else None,
    )


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())


def _y_stats(y: Tensor) -> Callable[[], tuple[Tensor, Tensor]]:
    """Mean and biased variance of the rows of y, for when y has to be built anyway."""

    def stats() -> tuple[Tensor, Tensor]:
        mean = y.sum(0).div_(y.shape[0])
        return mean, _centred_sq_sum(y, mean).div_(y.shape[0])

    return stats


def _stats_from_gram(
    x: Tensor, weight: Tensor, bias: Tensor | None, with_gram: bool = True
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """x̄, mean(y) = x̄ Wᵀ + b and var(y) = diag(W Cov(x) Wᵀ) (biased) for y = x Wᵀ + b, plus the
    centred Gram matrix; the quadratic form in float64 adds no rounding beyond the Gram's."""
    rows = x.shape[0]
    xbar = x.sum(0).div_(rows)
    wd = weight.to(torch.float64)
    mean = (xbar.to(torch.float64) @ wd.t()).to(x.dtype)
    if bias is not None:
        mean = mean + bias
    if not with_gram:
        return xbar, mean, None, None
    gram = _centred_gram(x, xbar)
    var = ((wd @ gram.to(torch.float64)) * wd).sum(1).div_(rows).to(x.dtype)
    return xbar, mean, var, gram


class LinearBNAct(torch.autograd.Function):
    """act(bn(x Wᵀ + b)) for x (rows, Cin); for layers with small Cin (the BN statistics and the
    backward use the Cin×Cin Gram matrix of x, so y is only ever touched to produce the output)."""

    @staticmethod
    def forward(ctx, x, weight, bias, gamma, beta, bn: _BatchNorm, slope: float):
        rows = x.shape[0]
        need_grad = any(ctx.needs_input_grad[:5])
        xbar = mean_loc = gram = None
        if need_grad or uses_batch_stats(bn):
            xbar, mean_loc, var_loc, gram = _stats_from_gram(x, weight, bias)
        norm = _normalisation(bn, gamma, beta, rows, lambda: (mean_loc, var_loc))
        # BN folded into the matmul: s (x Wᵀ + b) + t = x (s W)ᵀ + (s b + t)
        shift = norm.shift if bias is None else torch.addcmul(norm.shift, bias, norm.scale)
        out = activation_(torch.addmm(shift, x, (weight * norm.scale.unsqueeze(1)).t()), slope)
        ctx.norm, ctx.slope = norm, slope
        if need_grad:
            ctx.save_for_backward(x, weight, out, xbar, mean_loc, gram)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out):
        x, weight, out, xbar, mean_loc, gram = ctx.saved_tensors
        norm, slope = ctx.norm, ctx.slope
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        rows, cin = x.shape
        g_out = g_out.contiguous()
        g_beta = x.new_zeros(weight.shape[0])
        pc = x.new_zeros(weight.shape)  # g_pᵀ (x − x̄)
        grad_x = x.new_empty(rows, cin) if need_x else None
        per = _chunk(max(weight.shape), rows)
        gp_buf, xc_buf = x.new_empty(per, weight.shape[0]), x.new_empty(per, cin)
        scaled_w = weight * norm.scale.unsqueeze(1)
        for r0 in range(0, rows, per):
            r1 = min(rows, r0 + per)
            gp = _act_grad(g_out[r0:r1], out[r0:r1], slope, out=gp_buf[: r1 - r0])
            g_beta += gp.sum(0)
            pc.addmm_(gp.t(), torch.sub(x[r0:r1], xbar, out=xc_buf[: r1 - r0]))
            if need_x:
                torch.mm(gp, scaled_w, out=grad_x[r0:r1])
        offset = mean_loc - norm.mean  # local batch mean of y minus the mean BN used
        grad_gamma, grad_beta, c1, c2 = _bn_backward(norm, g_beta, (pc * weight).sum(1) + offset * g_beta)
        gw = norm.scale.unsqueeze(1) * (pc + g_beta.unsqueeze(1) * xbar) if need_w else None
        gb = norm.scale * g_beta if need_b else None
        if c1 is not None:  # the BN-statistics part: dL/dy −= c1 + (y − mean) c2, y − mean = xc Wᵀ + offset
            if need_x:
                a = weight.t() @ (weight * c2.unsqueeze(1))
                grad_x.addmm_(x, a, alpha=-1).add_(xbar @ a - (c1 + offset * c2) @ weight)
            if need_w:
                sx = xbar * rows
                gw -= c1.unsqueeze(1) * sx + c2.unsqueeze(1) * (weight @ gram + offset.unsqueeze(1) * sx)
            if need_b:
                gb -= (c1 + c2 * offset) * rows
        return grad_x, gw, gb, *_affine_grads(ctx, grad_gamma, grad_beta), None, None


class LinearBNActPool(torch.autograd.Function):
    """Pooled act(bn(x Wᵀ + b)) over each of ``groups`` consecutive blocks of rows: max, or
    [max ‖ mean] with ``with_avg``; the per-row activations are returned only with ``with_points``."""

    @staticmethod
    def forward(ctx, x, weight, bias, gamma, beta, bn, slope: float, groups: int, with_avg: bool, with_points: bool):
        rows, cout = x.shape[0], weight.shape[0]
        n = rows // groups
        y = _linear(x, weight, bias)
        norm = _normalisation(bn, gamma, beta, rows, _y_stats(y))
        need_grad = any(ctx.needs_input_grad[:5])
        top = x.new_empty(groups, cout)
        total = x.new_empty(groups, cout) if with_avg else None
        points = x.new_empty(rows, cout) if with_points else x.new_empty(0)
        arg = torch.empty(groups, cout, dtype=torch.long, device=x.device) if need_grad else None
        per = max(1, min(groups, CHUNK_ELEMS // (n * cout)))
        buf = None if with_points else x.new_empty(per * n, cout)
        for g0 in range(0, groups, per):
            g1 = min(groups, g0 + per)
            sl = slice(g0 * n, g1 * n)
            z = points[sl] if with_points else buf[: (g1 - g0) * n]
            activation_(torch.addcmul(norm.shift, y[sl], norm.scale, out=z), slope)
            z3 = z.view(g1 - g0, n, cout)
            _group_max(z3, top[g0:g1], arg[g0:g1] if need_grad else None)
            if with_avg:
                torch.sum(z3, dim=1, out=total[g0:g1])
        pooled = top if not with_avg else torch.cat([top, total.div_(n)], dim=1)
        if need_grad:
            arg += torch.arange(0, rows, n, device=x.device).unsqueeze(1)
            ctx.save_for_backward(x, weight, y, arg)
        ctx.norm, ctx.slope, ctx.groups, ctx.with_avg = norm, slope, groups, with_avg
        ctx.set_materialize_grads(False)  # an unused point output must not cost a zero-filled gradient
        if not with_points:
            ctx.mark_non_differentiable(points)
        return pooled, points

    @staticmethod
    @once_differentiable
    def backward(ctx, g_pooled, g_points):
        x, weight, y, arg = ctx.saved_tensors
        norm, slope, groups = ctx.norm, ctx.slope, ctx.groups
        rows, cin = x.shape
        cout = weight.shape[0]
        n = rows // groups
        if g_pooled is None:
            g_pooled = x.new_zeros(groups, 2 * cout if ctx.with_avg else cout)
        g_max = g_pooled[:, :cout].contiguous()
        g_avg = g_pooled[:, cout:] / n if ctx.with_avg else None
        per = max(1, min(groups, CHUNK_ELEMS // (n * cout)))
        gp_buf, d_buf = x.new_empty(per * n, cout), x.new_empty(per * n, cout)

        def grad_pre(g0: int, g1: int) -> Tensor:
            """dL/d(BN output) for the rows of groups g0..g1 (into gp_buf)."""
            sl = slice(g0 * n, g1 * n)
            gp = gp_buf[: (g1 - g0) * n]
            if g_points is not None and g_points.numel():
                gp.copy_(g_points[sl])
            else:
                gp.zero_()
            if g_avg is not None:
                gp.view(g1 - g0, n, cout).add_(g_avg[g0:g1].unsqueeze(1))
            gp.scatter_add_(0, arg[g0:g1] - g0 * n, g_max[g0:g1])
            pre = torch.addcmul(norm.shift, y[sl], norm.scale, out=d_buf[: (g1 - g0) * n])
            return _act_grad(gp, pre, slope, out=gp)

        g_beta, sdyx = x.new_zeros(cout), x.new_zeros(cout)
        for g0 in range(0, groups, per):
            g1 = min(groups, g0 + per)
            gp = grad_pre(g0, g1)
            g_beta += gp.sum(0)
            d = torch.sub(y[g0 * n : g1 * n], norm.mean, out=d_buf[: (g1 - g0) * n])
            sdyx += d.mul_(gp).sum(0)
        grad_gamma, grad_beta, c1, c2 = _bn_backward(norm, g_beta, sdyx)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = x.new_empty(rows, cin) if need_x else None
        gw = x.new_zeros(weight.shape) if need_w else None
        gb = x.new_zeros(cout) if need_b else None
        if need_x or need_w or need_b:
            for g0 in range(0, groups, per):
                g1 = min(groups, g0 + per)
                sl = slice(g0 * n, g1 * n)
                gy = grad_pre(g0, g1).mul_(norm.scale)  # dL/dy
                if c1 is not None:
                    d = torch.sub(y[sl], norm.mean, out=d_buf[: (g1 - g0) * n])
                    gy.sub_(d.mul_(c2)).sub_(c1)
                if need_x:
                    torch.mm(gy, weight, out=grad_x[sl])
                if need_w:
                    gw.addmm_(gy.t(), x[sl])
                if need_b:
                    gb += gy.sum(0)
        return grad_x, gw, gb, *_affine_grads(ctx, grad_gamma, grad_beta), None, None, None, None, None


class LinearGroupMax(torch.autograd.Function):
    """Per-group max of y = x Wᵀ (groups = consecutive blocks of rows), plus mean/var of all of y.

    Forward builds y only in cache-sized chunks; mean(y) = x̄ Wᵀ and var(y) = diag(W Cov(x) Wᵀ) come
    from the Gram matrix of the centred x (no pass over y; backward needs that matrix anyway).
    Backward needs no y at all: the gradient of the max is sparse (one row per group and channel)
    and that of mean/var is affine in y, hence in x, so dL/dx and dL/dW reduce to Cin×Cin products
    instead of Cin×Cout ones.
    ``sign`` (per output channel, ±1 or None) selects min instead of max where it is negative.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, sign: Tensor | None, groups: int, with_stats: bool):
        rows, cin = x.shape
        cout = weight.shape[0]
        n = rows // groups
        xbar, mean, var, gram = _stats_from_gram(x, weight, None, with_gram=with_stats)
        w = weight if sign is None else weight * sign.unsqueeze(1)
        need_index = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        per = max(1, min(groups, CHUNK_ELEMS // (n * cout)))
        buf = x.new_empty(per * n, cout)
        top = x.new_empty(groups, cout)
        arg = torch.empty(groups, cout, dtype=torch.long, device=x.device) if need_index else None
        for g0 in range(0, groups, per):
            g1 = min(groups, g0 + per)
            y3 = torch.mm(x[g0 * n : g1 * n], w.t(), out=buf[: (g1 - g0) * n]).view(g1 - g0, n, cout)
            _group_max(y3, top[g0:g1], arg[g0:g1] if need_index else None)
        mx = top if sign is None else top * sign
        if var is None:
            var = x.new_zeros(cout)
        if need_index:
            arg += torch.arange(0, rows, n, device=x.device).unsqueeze(1)
        ctx.with_stats = with_stats
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, xbar, weight, arg, gram)
        if not with_stats:
            ctx.mark_non_differentiable(var)
        return mx, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, g_mx: Tensor | None, g_mean: Tensor | None, g_var: Tensor | None):
        x, xbar, weight, arg, gram = ctx.saved_tensors
        rows, cin = x.shape
        cvar = g_var * (2.0 / rows) if (ctx.with_stats and g_var is not None) else None
        gx = gw = None
        if ctx.needs_input_grad[0]:
            row = x.new_zeros(cin) if g_mean is None else (g_mean @ weight).div_(rows)
            if cvar is not None:  # (2/M)·(x − x̄) Wᵀ diag(g_var) W: a Cin×Cin product, not (M, Cout)
                a = weight.t() @ (weight * cvar.unsqueeze(1))
                gx = torch.addmm(row - xbar @ a, x, a)
            else:
                gx = row.expand(rows, cin).clone()
        if ctx.needs_input_grad[1]:
            gw = weight.new_zeros(weight.shape)
            if g_mean is not None:
                gw += g_mean.unsqueeze(1) * xbar
            if cvar is not None:
                gw += (weight * cvar.unsqueeze(1)) @ gram
        if g_mx is not None:  # the max picks one row per (group, channel): scatter / gather those rows
            sparse_rows_grad(x, weight, arg, g_mx, gx, gw)
        return gx, gw, None, None, None


def sparse_rows_grad(x: Tensor, weight: Tensor, arg: Tensor, g: Tensor, gx: Tensor | None, gw: Tensor | None) -> None:
    """gx[arg[b, c]] += g[b, c]·W[c] and gw[c] += Σ_b g[b, c]·x[arg[b, c]], a few groups at a time."""
    groups, cout = arg.shape
    cin = x.shape[1]
    per = max(1, min(groups, CHUNK_ELEMS // (cout * cin)))
    buf = x.new_empty(per * cout * cin)
    for g0 in range(0, groups, per):
        g1 = min(groups, g0 + per)
        block = buf[: (g1 - g0) * cout * cin]
        if gx is not None:
            rows = torch.mul(g[g0:g1].unsqueeze(2), weight, out=block.view(g1 - g0, cout, cin))
            gx.index_add_(0, arg[g0:g1].reshape(-1), rows.view(-1, cin))
        if gw is not None:  # rows ordered (channel, group), so the sum over groups is a middle-dim sum
            picked = torch.index_select(x, 0, arg[g0:g1].t().reshape(-1), out=block.view(-1, cin))
            gw += picked.view(cout, g1 - g0, cin).mul_(g[g0:g1].t().unsqueeze(2)).sum(1)
