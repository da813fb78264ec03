"""BatchNorm semantics for fused layers that never materialise the normalised tensor.

The fused ops compute batch statistics themselves (often without the full pre-BN tensor) and then
apply BN as a per-channel affine map ``y * scale + shift``. These helpers reproduce exactly what
``nn.BatchNorm*`` / ``nn.SyncBatchNorm`` do with those statistics: batch vs running statistics,
``momentum`` (including ``None`` = cumulative average), ``num_batches_tracked``, the unbiased running
variance and the cross-process reduction of SyncBatchNorm.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

# (count, mean, biased variance) of the local batch, per channel.
Stats = tuple[int, Tensor, Tensor]


def uses_batch_stats(bn: _BatchNorm) -> bool:
    """Whether ``bn`` normalises with the statistics of the current batch (as nn.BatchNorm decides)."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def sync_group(bn: _BatchNorm):
    """Process group SyncBatchNorm reduces over, or None when there is nothing to synchronise."""
    if not (isinstance(bn, nn.SyncBatchNorm) and bn.training):
        return None
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    group = bn.process_group or torch.distributed.group.WORLD
    return group if torch.distributed.get_world_size(group) > 1 else None


class _AllReduceSum(torch.autograd.Function):
    """Sum over the process group whose gradient is again the sum of the ranks' gradients (the role
    of the deprecated ``torch.distributed.nn.functional.all_reduce``)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        out = x.clone()
        torch.distributed.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


def _all_reduce_stats(count: int, mean: Tensor, var: Tensor, group) -> Stats:
    """Global (count, mean, biased var) from per-rank ones; autograd-aware (gradients are reduced too).

    Two small reductions (first the mean, then squared deviations around it) avoid the cancellation
    of a single sum / sum-of-squares reduction.
    """
    n = torch.tensor([float(count)], dtype=mean.dtype, device=mean.device)
    summed = _AllReduceSum.apply(torch.cat([mean * count, n]), group)
    total = summed[-1]
    gmean = summed[:-1] / total
    m2 = _AllReduceSum.apply(var * count + count * (mean - gmean).square(), group)
    return int(total.item()), gmean, m2 / total


def _momentum(bn: _BatchNorm) -> float:
    """Advance ``num_batches_tracked`` and return the running-average factor, as nn.BatchNorm.forward."""
    if not (bn.training and bn.track_running_stats and bn.num_batches_tracked is not None):
        return 0.0 if bn.momentum is None else bn.momentum
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def bn_statistics(bn: _BatchNorm, batch_stats: Callable[[], Stats]) -> Stats:
    """(count, mean, biased var) that ``bn`` normalises with for this batch.

    ``batch_stats`` is only called when BN uses batch statistics; it returns the local count and the
    mean and biased variance of the pre-BN values (differentiable or not). With SyncBatchNorm in a
    process group they are reduced over the group. Running statistics are updated in place exactly as
    nn.BatchNorm would (unbiased variance with the global count). With running statistics the count
    is 0.
    """
    factor = _momentum(bn)
    if not uses_batch_stats(bn):
        return 0, bn.running_mean, bn.running_var
    count, mean, var = batch_stats()
    group = sync_group(bn)
    if group is not None:
        count, mean, var = _all_reduce_stats(count, mean, var, group)
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {count}")
        with torch.no_grad():
            bn.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(var.detach(), alpha=factor * count / (count - 1))
    return count, mean, var


def bn_scale_shift(bn: _BatchNorm, batch_stats: Callable[[], Stats]) -> tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(y) == y * scale + shift`` for this batch (see
    :func:`bn_statistics` for ``batch_stats``); differentiable w.r.t. the statistics and BN affine."""
    _, mean, var = bn_statistics(bn, batch_stats)
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def batch_norm_rows(y: Tensor, bn: _BatchNorm) -> Tensor:
    """``bn`` applied to a channels-last (rows, C) matrix, i.e. with statistics over all rows.

    Uses the native kernel (which has a channels-last path for 2-D input) unless SyncBatchNorm has to
    reduce across processes, where the statistics go through :func:`bn_scale_shift` instead (this also
    makes SyncBatchNorm work for CPU tensors).
    """
    if sync_group(bn) is not None:

        def stats() -> Stats:
            var, mean = torch.var_mean(y, dim=0, correction=0)
            return y.shape[0], mean, var

        scale, shift = bn_scale_shift(bn, stats)
        return torch.addcmul(shift, y, scale)
    factor = _momentum(bn)
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(
        y,
        bn.running_mean if track else None,
        bn.running_var if track else None,
        bn.weight,
        bn.bias,
        uses_batch_stats(bn),
        factor,
        bn.eps,
    )


def activation_(y: Tensor, negative_slope: float) -> Tensor:
    """In-place ReLU (slope 0) or LeakyReLU; autograd allows both on a BN output."""
    return F.relu_(y) if negative_slope == 0 else F.leaky_relu_(y, negative_slope)


def activation(y: Tensor, negative_slope: float) -> Tensor:
    """Out-of-place variant of :func:`activation_`."""
    return F.relu(y) if negative_slope == 0 else F.leaky_relu(y, negative_slope)


def gamma_sign(bn: _BatchNorm) -> Tensor | None:
    """Sign of the BN scale per channel (+1 for gamma >= 0), or None when all are non-negative.

    BN + a monotone activation is increasing in its input where gamma >= 0 and decreasing elsewhere, so
    a max over a group of outputs comes from the group's max (resp. min) of the pre-BN values.
    """
    if bn.weight is None:
        return None
    w = bn.weight.detach()
    if not bool((w < 0).any()):
        return None
    return torch.where(w < 0, -1.0, 1.0).to(w.dtype)
