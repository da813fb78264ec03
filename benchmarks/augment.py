"""Views per second of STRL's full augmentation chain: the batched tensor chain vs. a per-sample NumPy baseline.

The chain (``strl_byol.md`` §2): kNN up-sampling 2048 -> 4096, random crop (p 0.5), normalisation, cutout
(p 0.5), scaling, small rotation, translation, jitter, input dropout, then 2,048 points sampled. The baseline
is written here the way the original ``BYOL/data/data_utils.py`` works: one cloud at a time, a full
N x N distance matrix for the up-sampling, rejection loops for crop and cutout. Both run in this process,
on the same clouds (procedural shapes), with the same thread count (torch and the BLAS), so their ratio is
meaningful even on a busy machine; absolute numbers drift with load on shared 2-core machines.

    python benchmarks/augment.py --threads 2 --batch 32 --points 2048 --batches 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=2048, help="points per input cloud and per view")
    parser.add_argument("--batches", type=int, default=5, help="timed batches per implementation")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


ARGS = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy / torch load
    os.environ[var] = str(ARGS.threads)

import selfsup_pcd  # noqa: E402, F401, I001  (before torch: allocator settings, as in training)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from selfsup_pcd.data.augment import (  # noqa: E402
    AugmentChain,
    InputDropout,
    Jitter,
    Normalize,
    PointBatch,
    RandomCrop,
    RandomCutout,
    RotatePerturbation,
    Scale,
    Translate,
    UpSample,
    sample_points,
)


# -- the per-sample NumPy baseline (the original's algorithms) ---------------------------------------------
def _rotation(angle: float, axis: int) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    if axis == 1:  # about y: [[c, 0, s], [0, 1, 0], [-s, 0, c]]
        r[i, j], r[j, i] = s, -s
    return r


def np_upsample(points: np.ndarray, target: int, rng: np.random.Generator, nsample: int = 5) -> np.ndarray:
    n = len(points)
    if n >= target:
        return points
    centres = rng.choice(n, target - n)
    xyz = points[:, :3]
    sq = (xyz * xyz).sum(1, keepdims=True)
    dist = (sq - 2 * xyz @ xyz.T + sq.T)[centres]  # the full N x N matrix, as the original
    near = np.argpartition(dist, 2 * nsample, axis=1)[:, : 2 * nsample]
    u = rng.random((len(centres), 2 * nsample))
    choice = near[u > np.median(u, axis=1, keepdims=True)].reshape(-1, nsample)
    return np.concatenate([points, points[choice].mean(axis=1)], axis=0)


def np_crop(points: np.ndarray, min_points: int, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    if rng.uniform() > p:
        return points
    for _ in range(10):
        lo, hi = points[:, :3].min(0), points[:, :3].max(0)
        rx, ar = rng.uniform(0.6, 1.1), rng.uniform(0.75, 1.33)
        size = np.array([rx, rx * ar, rx / ar])
        start = (1 - size) * rng.random(3)  # U(0, 1 - size), also where 1 - size < 0 (legacy np.random)
        box_lo, box_hi = lo + (hi - lo) * start, lo + (hi - lo) * (start + size)
        keep = np.all((points[:, :3] > box_lo) & (points[:, :3] < box_hi), axis=1)
        if min_points <= keep.sum() < len(points):
            return points[keep]
    return points


def np_cutout(points: np.ndarray, min_points: int, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    if rng.uniform() > p:
        return points
    for _ in range(10):
        lo, hi = points[:, :3].min(0), points[:, :3].max(0)
        size = rng.uniform(0.3, 0.6, 3)
        start = (1 - size) * rng.random(3)  # U(0, 1 - size), also where 1 - size < 0 (legacy np.random)
        box_lo, box_hi = lo + (hi - lo) * start, lo + (hi - lo) * (start + size)
        cut = np.all((points[:, :3] > box_lo) & (points[:, :3] < box_hi), axis=1)
        if len(points) - cut.sum() >= min_points and cut.sum() > 0:
            return points[~cut]
    return points


def np_view(points: np.ndarray, num_points: int, rng: np.random.Generator) -> np.ndarray:
    pts = np_upsample(points.astype(np.float32), 2 * num_points, rng)
    pts = np_crop(pts, num_points, rng)
    pts = pts - pts.mean(0)  # normalise
    pts = pts / np.sqrt((pts**2).sum(1)).max()
    pts = np_cutout(pts, num_points, rng)
    pts = pts * rng.uniform(0.8, 1.25)
    angles = np.clip(0.06 * rng.standard_normal(3), -0.18, 0.18)
    rot = _rotation(angles[2], 2) @ _rotation(angles[1], 1) @ _rotation(angles[0], 0)
    pts = pts @ rot.T
    pts = pts + rng.uniform(-0.1, 0.1, 3) * (pts.max(0) - pts.min(0))
    pts = pts + np.clip(0.01 * rng.standard_normal(pts.shape), -0.05, 0.05)
    ratio = rng.random() * 0.875
    drop = np.flatnonzero(rng.random(len(pts)) <= ratio)
    pts[drop] = pts[0]
    return pts[rng.permutation(len(pts))[:num_points]].astype(np.float32)


# -- the batched chain -----------------------------------------------------------------------------------
def batched_chain(num_points: int) -> AugmentChain:
    return AugmentChain([UpSample(), RandomCrop(), Normalize(), RandomCutout(), Scale(), RotatePerturbation(),
                         Translate(), Jitter(), InputDropout()], num_points=num_points)


def clouds(batch: int, points: int, seed: int) -> np.ndarray:
    """(B, N, 3) points sampled on procedural shapes (surfaces, like ShapeNet's)."""
    from selfsup_pcd.data.synthetic.shapes import CLASS_NAMES, make_mesh
    from selfsup_pcd.data.synthetic.shapes import sample_points as sample_mesh

    out = np.empty((batch, points, 3), dtype=np.float32)
    for i in range(batch):
        xyz, _ = sample_mesh(make_mesh(i % len(CLASS_NAMES), seed + i), points, seed + i)
        out[i] = xyz
    return out


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    data = clouds(ARGS.batch, ARGS.points, ARGS.seed)
    tensor = torch.from_numpy(data)
    chain = batched_chain(ARGS.points)
    generator = torch.Generator().manual_seed(ARGS.seed)
    rng = np.random.default_rng(ARGS.seed)

    results = {
        "per-sample NumPy (original algorithms)": timed(
            lambda: [np_view(cloud, ARGS.points, rng) for cloud in data], ARGS.batches),
        "batched tensor chain (selfsup_pcd.data.augment)": timed(lambda: chain(tensor, generator), ARGS.batches),
    }
    base = statistics.median(results["per-sample NumPy (original algorithms)"])
    print(f"\nSTRL view chain, {ARGS.points} points, batch {ARGS.batch}, {ARGS.threads} thread(s), "
          f"median of {ARGS.batches} batches (torch {torch.__version__}, numpy {np.__version__})\n")
    print("| implementation | ms / batch | views/s | speed-up |\n|---|---:|---:|---:|")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"| {name} | {1000 * med:.0f} | {ARGS.batch / med:.0f} | {base / med:.1f}x |")

    # where the batched chain's time goes
    profile: dict[str, list[float]] = {}
    for _ in range(ARGS.batches):
        batch = PointBatch.full(tensor)
        for op in chain.transforms:
            start = time.perf_counter()
            batch = op.apply(batch, generator)
            profile.setdefault(type(op).__name__, []).append(time.perf_counter() - start)
        start = time.perf_counter()
        sample_points(batch, ARGS.points, generator)
        profile.setdefault("sample", []).append(time.perf_counter() - start)
    total = sum(statistics.median(t) for t in profile.values())
    print("\n| batched step | ms / batch | share |\n|---|---:|---:|")
    for name, times in profile.items():
        med = statistics.median(times)
        print(f"| {name} | {1000 * med:.1f} | {100 * med / total:.0f}% |")


if __name__ == "__main__":
    sys.exit(main())
