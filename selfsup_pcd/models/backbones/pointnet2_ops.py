"""PointNet++ operations in plain PyTorch, behind a small registry so a compiled kernel can replace them.

Five operations, all channels-last and batched (every tensor has the batch first):

* ``furthest_point_sample(xyz (B, N, 3), npoint) -> (B, npoint) int64``
* ``ball_query(radius, nsample, xyz (B, N, 3), new_xyz (B, S, 3)) -> (B, S, nsample) int64``
* ``group_points(features (B, N, C), idx (B, S, K)) -> (B, S, K, C)``
* ``three_nn(unknown (B, n, 3), known (B, m, 3)) -> (dist (B, n, 3), idx (B, n, 3) int64)``
* ``three_interpolate(features (B, m, C), idx (B, n, 3), weight (B, n, 3)) -> (B, n, C)``

Conventions follow the CUDA kernels of the PyTorch PointNet++ ports that VoteNet uses:

* FPS starts at index 0 of every cloud; each step takes the point farthest from the chosen set (distance =
  min over the chosen points; ties go to the lowest index). The CUDA kernel also never picks points within
  ~3 cm of the origin (``|p|² <= 1e-3``); that quirk is **not** reproduced here.
* Ball query: the first ``nsample`` points with ``|p − q|² < radius²`` (strict) in index order; when fewer
  are found the remaining slots repeat the first one found; a query with none gets index 0 everywhere
  (with FPS centres taken from the cloud the centre itself is always found).
* Squared distances are ``dx² + dy² + dz²`` of coordinate differences in float32, as the kernels compute them,
  so membership and order match a brute-force loop exactly (the expanded ``|p|² + |q|² − 2p·q`` form is
  only used to pre-select candidates with a safety margin).
* ``three_nn`` returns Euclidean distances (not squared) of the three nearest known points, nearest first;
  exact distance ties may be ordered differently from the kernel's lower-index-first rule.

Dispatch: each public function calls the implementation selected for it (``"torch"`` here).
``register(op, name)`` adds one, ``set_implementation(op, name)`` selects it and ``use(name)`` selects
``name`` for every op that has it, within a ``with`` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

OPS = ("furthest_point_sample", "ball_query", "group_points", "three_nn", "three_interpolate")
_REGISTRY: dict[str, dict[str, Callable]] = {op: {} for op in OPS}
_ACTIVE: dict[str, str] = {op: "torch" for op in OPS}

# distance scratch per chunk: at most this many (query, point) pairs (16 MiB fp32)
_PAIR_CHUNK = 1 << 22


def register(op: str, name: str) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as implementation ``name`` of ``op`` (same signature as the public op)."""
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; choose one of {OPS}")

    def deco(fn: Callable) -> Callable:
        _REGISTRY[op][name] = fn
        return fn

    return deco


def implementations(op: str) -> list[str]:
    """Names registered for ``op``."""
    return sorted(_REGISTRY[op])


def active_implementation(op: str) -> str:
    return _ACTIVE[op]


def set_implementation(op: str, name: str) -> None:
    """Selects implementation ``name`` for ``op`` (process-wide)."""
    if name not in _REGISTRY.get(op, {}):
        raise KeyError(f"no implementation {name!r} of {op!r}; registered: {implementations(op)}")
    _ACTIVE[op] = name


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Within the block, every op that has an implementation ``name`` uses it."""
    previous = dict(_ACTIVE)
    ops = [op for op in OPS if name in _REGISTRY[op]]
    if not ops:
        raise KeyError(f"no op has an implementation named {name!r}")
    try:
        for op in ops:
            _ACTIVE[op] = name
        yield
    finally:
        _ACTIVE.update(previous)


# ------------------------------------------------------------------------------------------ public ops
def furthest_point_sample(xyz: Tensor, npoint: int) -> Tensor:
    """Indices (B, npoint) of iterative farthest-point samples of ``xyz`` (B, N, 3), starting at index 0."""
    return _REGISTRY["furthest_point_sample"][_ACTIVE["furthest_point_sample"]](xyz, npoint)


def ball_query(radius: float, nsample: int, xyz: Tensor, new_xyz: Tensor) -> Tensor:
    """Indices (B, S, nsample) into ``xyz`` of the first points within ``radius`` of each ``new_xyz`` centre."""
    return _REGISTRY["ball_query"][_ACTIVE["ball_query"]](radius, nsample, xyz, new_xyz)


def group_points(features: Tensor, idx: Tensor) -> Tensor:
    """Rows of ``features`` (B, N, C) picked by ``idx`` (B, S, K) -> (B, S, K, C); differentiable."""
    return _REGISTRY["group_points"][_ACTIVE["group_points"]](features, idx)


def three_nn(unknown: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
    """Distances and indices (B, n, 3) of the three ``known`` points nearest each ``unknown`` point."""
    return _REGISTRY["three_nn"][_ACTIVE["three_nn"]](unknown, known)


def three_interpolate(features: Tensor, idx: Tensor, weight: Tensor) -> Tensor:
    """Σ_k weight[..., k] · features[idx[..., k]] for ``features`` (B, m, C) -> (B, n, C); differentiable."""
    return _REGISTRY["three_interpolate"][_ACTIVE["three_interpolate"]](features, idx, weight)


def gather_points(values: Tensor, idx: Tensor) -> Tensor:
    """``values`` (B, N, ...) at ``idx`` (B, S) -> (B, S, ...)."""
    batch = torch.arange(values.shape[0], device=values.device).unsqueeze(1)
    return values[batch, idx]


def three_nn_weights(dist: Tensor, eps: float = 1e-8) -> Tensor:
    """Inverse-distance weights of :func:`three_nn` distances, normalised to sum 1 (PointNet++ FP layers)."""
    recip = 1.0 / (dist + eps)
    return recip / recip.sum(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------------ implementations
def _check_xyz(name: str, xyz: Tensor) -> None:
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{name} must be (B, N, 3), got {tuple(xyz.shape)}")


def _sq_dist(q: Tensor, p: Tensor) -> Tensor:
    """dx² + dy² + dz² between rows of ``q`` (..., 3) and ``p`` (..., 3) (broadcast), in the kernels' order."""
    d = q[..., 0] - p[..., 0]
    out = d * d
    d = q[..., 1] - p[..., 1]
    out += d * d
    d = q[..., 2] - p[..., 2]
    out += d * d
    return out


@register("furthest_point_sample", "torch")
@torch.no_grad()
def _fps_torch(xyz: Tensor, npoint: int) -> Tensor:
    """One (B, N) distance update per sample: vectorised over the batch, a Python loop over ``npoint``."""
    _check_xyz("xyz", xyz)
    batch, n, _ = xyz.shape
    if not 0 < npoint <= n:
        raise ValueError(f"cannot sample {npoint} of {n} points")
    coords = [c.contiguous() for c in xyz.detach().float().unbind(-1)]  # 3 × (B, N)
    out = torch.empty(batch, npoint, dtype=torch.long, device=xyz.device)
    dist = torch.full((batch, n), 1e10, dtype=torch.float32, device=xyz.device)
    acc, tmp = torch.empty_like(dist), torch.empty_like(dist)
    farthest = torch.zeros(batch, 1, dtype=torch.long, device=xyz.device)
    for i in range(npoint):
        out[:, i : i + 1] = farthest
        torch.sub(coords[0], coords[0].gather(1, farthest), out=acc).square_()
        for c in coords[1:]:
            acc.add_(torch.sub(c, c.gather(1, farthest), out=tmp).square_())
        torch.minimum(dist, acc, out=dist)
        farthest = dist.max(dim=1, keepdim=True).indices  # first maximum (ties: lowest index)
    return out


@register("ball_query", "torch")
@torch.no_grad()
def _ball_query_torch(radius: float, nsample: int, xyz: Tensor, new_xyz: Tensor) -> Tensor:
    """Candidates from the expanded distance (one ``baddbmm`` per chunk, generous margin), then exact
    differences on the candidates only; ranks within each query row come from a cumulative count."""
    _check_xyz("xyz", xyz)
    _check_xyz("new_xyz", new_xyz)
    if nsample < 1:
        raise ValueError(f"nsample must be positive, got {nsample}")
    xyz, new_xyz = xyz.detach().float(), new_xyz.detach().float()
    batch, n, _ = xyz.shape
    s = new_xyz.shape[1]
    device = xyz.device
    r2 = torch.tensor(radius, dtype=torch.float32).square().item()  # radius² rounded as a float32 product
    out = torch.zeros(batch, s, nsample, dtype=torch.long, device=device)
    p_sq = xyz.square().sum(-1)  # (B, N)
    q_sq = new_xyz.square().sum(-1)  # (B, S)
    p_max = p_sq.amax(dim=1, keepdim=True)  # (B, 1)
    per = max(1, _PAIR_CHUNK // max(n, 1))
    for b in range(batch):
        for s0 in range(0, s, per):
            s1 = min(s, s0 + per)
            q = new_xyz[b, s0:s1]
            # |p|² − 2p·q < r² − |q|² (+ margin): the expanded form's error is <~ 4·eps32·(|p|² + |q|²), so a
            # margin of 1e-5·(|q|² + max|p|²) keeps every true neighbour among the candidates
            partial = torch.addmm(p_sq[b].unsqueeze(0), q, xyz[b].t(), alpha=-2)
            qs = q_sq[b, s0:s1, None]
            threshold = (qs + p_max[b]).mul_(1e-5).add_(1e-12 + r2).sub_(qs)
            rows, cols = torch.nonzero(partial < threshold, as_tuple=True)
            keep = _sq_dist(q[rows], xyz[b, cols]) < r2
            rows, cols = rows[keep], cols[keep]  # still sorted by row, then by point index
            counts = torch.bincount(rows, minlength=s1 - s0)
            starts = counts.cumsum(0) - counts
            rank = torch.arange(len(rows), device=device) - starts[rows]
            first = rank < nsample
            block = torch.full((s1 - s0, nsample), -1, dtype=torch.long, device=device)
            block[rows[first], rank[first]] = cols[first]
            pad = torch.where(counts > 0, block[:, 0], 0).unsqueeze(1)
            out[b, s0:s1] = torch.where(block < 0, pad, block)
    return out


@register("group_points", "torch")
def _group_points_torch(features: Tensor, idx: Tensor) -> Tensor:
    if features.ndim != 3 or idx.ndim < 2 or idx.shape[0] != features.shape[0]:
        raise ValueError(f"features (B, N, C) and idx (B, ...) expected, got {tuple(features.shape)} and "
                         f"{tuple(idx.shape)}")
    batch, n, c = features.shape
    offsets = torch.arange(0, batch * n, n, device=idx.device).view(batch, *([1] * (idx.ndim - 1)))
    flat = (idx + offsets).reshape(-1)
    return features.reshape(batch * n, c).index_select(0, flat).view(*idx.shape, c)


@register("three_nn", "torch")
@torch.no_grad()
def _three_nn_torch(unknown: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
    _check_xyz("unknown", unknown)
    _check_xyz("known", known)
    if known.shape[1] < 3:
        raise ValueError(f"three_nn needs at least 3 known points, got {known.shape[1]}")
    unknown, known = unknown.detach().float(), known.detach().float()
    batch, n, _ = unknown.shape
    m = known.shape[1]
    dist = unknown.new_empty(batch, n, 3)
    idx = torch.empty(batch, n, 3, dtype=torch.long, device=unknown.device)
    per = max(1, _PAIR_CHUNK // m)
    for b in range(batch):
        for r0 in range(0, n, per):
            r1 = min(n, r0 + per)
            d2 = _sq_dist(unknown[b, r0:r1, None, :], known[b, None, :, :])  # (rows, m), exact differences
            top = d2.topk(3, dim=1, largest=False, sorted=True)
            dist[b, r0:r1], idx[b, r0:r1] = top.values, top.indices
    return dist.sqrt_(), idx


@register("three_interpolate", "torch")
def _three_interpolate_torch(features: Tensor, idx: Tensor, weight: Tensor) -> Tensor:
    grouped = group_points(features, idx)  # (B, n, 3, C)
    return torch.einsum("bnkc,bnk->bnc", grouped, weight.to(grouped.dtype))
