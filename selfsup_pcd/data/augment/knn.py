"""Exact k-nearest-neighbour queries among the valid points of each cloud of a batch.

Used by the kNN up-sampling. On CPUs a KD-tree (``scipy.spatial.cKDTree``, one per cloud, clouds spread over
the torch thread count) is ~5x faster than a brute-force distance matrix + top-k; on GPUs the brute force is
the fast path. Both return the neighbours sorted by distance, so they agree up to ties.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor


def knn_among_valid(points: Tensor, counts: Tensor, queries: Tensor, k: int) -> Tensor:
    """Indices (B, Q, k) of the k nearest of the first ``counts[b]`` points of each cloud.

    ``points`` (B, N, 3) with the valid points of cloud b in rows ``0 .. counts[b] - 1``; ``queries``
    (B, Q) are row indices of query points (valid rows). A query point is its own nearest neighbour.
    Neighbours are ordered by increasing distance.
    """
    if int(counts.min()) < k:
        raise ValueError(f"kNN needs at least k={k} valid points per cloud, got {int(counts.min())}")
    if points.device.type == "cpu":
        return _knn_kdtree(points, counts, queries, k)
    return _knn_brute_force(points, counts, queries, k)


def _knn_brute_force(points: Tensor, counts: Tensor, queries: Tensor, k: int) -> Tensor:
    centres = torch.gather(points, 1, queries.unsqueeze(-1).expand(-1, -1, points.shape[-1]))
    dist = torch.cdist(centres, points)
    invalid = torch.arange(points.shape[1], device=points.device) >= counts.unsqueeze(1)
    dist.masked_fill_(invalid.unsqueeze(1), float("inf"))
    return dist.topk(k, dim=-1, largest=False, sorted=True).indices


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool): threads do not survive fork


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] != workers:
        _POOL = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="knn"))
    return _POOL[2]


def _knn_kdtree(points: Tensor, counts: Tensor, queries: Tensor, k: int) -> Tensor:
    xyz = points.detach().to(torch.float64).numpy()
    q = queries.numpy()
    sizes = counts.tolist()

    def one_cloud(b: int) -> np.ndarray:
        valid = xyz[b, : sizes[b]]
        tree = cKDTree(valid, balanced_tree=False, compact_nodes=False)
        # centroids are drawn with replacement: query each distinct point once
        unique, inverse = np.unique(q[b], return_inverse=True)
        _, idx = tree.query(valid[unique], k=k)
        return idx.reshape(len(unique), k)[inverse]

    # scipy releases the GIL in build and query: clouds run in parallel on the torch thread count
    workers = min(max(1, torch.get_num_threads()), len(xyz))
    rows = map(one_cloud, range(len(xyz))) if workers == 1 else _pool(workers).map(one_cloud, range(len(xyz)))
    return torch.from_numpy(np.stack(list(rows)).astype(np.int64))
