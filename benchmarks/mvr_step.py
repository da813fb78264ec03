"""MVR training throughput: cached vs online teacher, and the original implementation's step, per student.

One step = forward + backward + Adam step of the whole MVR objective (NT-Xent over 512 pixel↔point pairs
per object, global MSE, PointNet regulariser) on B objects of 1,024 points with 12 views of 32×32 and a
ResNet-50 teacher (small stem; random weights: the speed does not depend on them). Implementations:

* ``cached``: ours, the trunk's maps read from the teacher-feature cache (float16 on disk, float32 here);
* ``online``: ours, the frozen teacher run on the views every step (eval-mode BatchNorm);
* ``original``: as the original code computes it: reference (unfused) student, Conv1d heads on (B, C, N),
  the teacher with train-mode BatchNorm on every step, ``convup`` → bilinear upsample to 32×32 → index,
  and no transparent huge pages (the original does not set them).

Each (student, implementation, batch) runs in a fresh subprocess so its peak RSS is its own; throughput
comes from the median step. ``data s/batch`` is the loader's share for the cached and online paths
(read one batch from a synthetic render cache + teacher-feature file in the project's layout, and
sample its pairs); it overlaps with the step when ``num_workers`` > 0. Timings on shared 2-core machines
drift by ~15 %: compare rows of one run.

    python benchmarks/mvr_step.py                              # the issue's table (2 threads)
    python benchmarks/mvr_step.py --students dgcnn --batches 8 --impls cached original --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

STUDENTS = ("dgcnn", "pointnet")
IMPLS = ("cached", "online", "original")
ORIGINAL_OBJECTS_PER_S = 1.06  # issue #4: the original step, DGCNN, batch 8, 2 threads, this machine kind


def _rss_kib() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _synthetic_batch(batch: int, points: int, views: int, res: int, pairs: int, trunk: tuple[int, int, int]):
    import torch

    g = torch.Generator().manual_seed(0)
    table = torch.stack([torch.randint(0, views, (batch, pairs), generator=g),
                         torch.randint(0, res, (batch, pairs), generator=g),
                         torch.randint(0, res, (batch, pairs), generator=g),
                         torch.randint(0, points, (batch, pairs), generator=g)], dim=-1)
    xyz = torch.randn(batch, points, 3, generator=g)
    xyz = xyz / xyz.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
    return {
        "points": xyz,
        "pairs": table,
        "image_size": torch.tensor([res, res]),
        "views": torch.rand(batch, views, 3, res, res, generator=g),
        "teacher_feats": torch.rand(batch, views, *trunk, generator=g).half().float(),
    }


def _ours(args: argparse.Namespace):
    """Our MVR LightningModule (cached or online teacher) and its step."""
    import functools

    import torch

    from selfsup_pcd.methods.mvr import MVR
    from selfsup_pcd.models.backbones import DGCNNEncoder, PointNetEncoder

    student = DGCNNEncoder(k=20, pooling="max") if args.student == "dgcnn" else PointNetEncoder()
    module = MVR(student, functools.partial(torch.optim.Adam, lr=1e-3),
                 teacher={"arch": args.teacher, "online": args.impl == "online"})
    module.train()
    trainable = [p for p in module.parameters() if p.requires_grad]

    def loss(batch: dict) -> torch.Tensor:
        drop = "teacher_feats" if args.impl == "online" else "views"
        return module.losses({k: v for k, v in batch.items() if k != drop})["loss"]

    return module.teacher.trunk_dim, trainable, loss


def _original(args: argparse.Namespace):
    """The original's computation (spec §4–§5) with the reference students."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference_models import ReferenceDGCNN, ReferencePointNet

    from selfsup_pcd.methods.losses import nt_xent
    from selfsup_pcd.models.image import MultiViewTeacher
    from selfsup_pcd.tasks.losses import orthogonality_penalty

    student = ReferenceDGCNN(k=20, pooling="max") if args.student == "dgcnn" else ReferencePointNet()
    point_project = nn.Sequential(nn.Conv1d(1024, 512, 1), nn.BatchNorm1d(512), nn.ReLU(), nn.Conv1d(512, 128, 1))
    global_project = nn.Sequential(nn.Linear(1024, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(),
                                   nn.Linear(512, 128))
    teacher = MultiViewTeacher(args.teacher).requires_grad_(False).train()  # quirk 1: train-mode BN
    convup = nn.Conv2d(teacher.trunk_dim, 128, 1)
    modules = nn.ModuleList([student, point_project, global_project, convup]).train()

    def loss(batch: dict) -> torch.Tensor:
        views, pairs = batch["views"], batch["pairs"]
        b, v = views.shape[:2]
        out = student(batch["points"])
        global_feat, point_feat = out[0], out[1]
        point = point_project(point_feat.transpose(1, 2))                     # (B, 128, N)
        feats = teacher.f(views.flatten(0, 1))
        target = teacher.g(teacher.t(F.adaptive_avg_pool2d(feats, 1).flatten(1)).view(b, v, -1).amax(1))
        pixel = F.interpolate(convup(feats), size=views.shape[-2:], mode="bilinear", align_corners=True)
        view = pairs[..., 0] + v * torch.arange(b).unsqueeze(1)
        q = pixel[view, :, pairs[..., 1], pairs[..., 2]]                      # (B, P, 128)
        p = point.transpose(1, 2).gather(1, pairs[..., 3:4].expand(-1, -1, 128))
        total = nt_xent(p, q, 0.5) + F.mse_loss(global_project(global_feat), target)
        if len(out) > 2 and out[2] is not None:
            total = total + 0.001 * orthogonality_penalty(out[2], "sum")
        return total

    return teacher.trunk_dim, list(modules.parameters()), loss


def _data_seconds(args: argparse.Namespace, trunk: tuple[int, int, int]) -> float:
    """One batch through the datamodule (read + collate + pair sampling) from a synthetic cache."""
    import time

    import h5py
    import numpy as np

    from selfsup_pcd.data.mvr import MVRDataModule

    rng = np.random.default_rng(0)
    shapes, v, res, n = max(2 * args.batch, 16), args.views, args.resolution, args.points
    with tempfile.TemporaryDirectory() as tmp:
        per_shape = 3000
        with h5py.File(Path(tmp) / "train.h5", "w") as f:
            f.attrs.update({"format": "selfsup_pcd/render-cache", "complete": True, "fingerprint": "synthetic"})
            f["views"] = rng.integers(0, 255, (shapes, v, res, res, 3), dtype=np.uint8)
            f["points"] = rng.standard_normal((shapes, n, 3)).astype(np.float32)
            f["label"] = np.zeros(shapes, dtype=np.int64)
            pairs = np.stack([rng.integers(0, v, shapes * per_shape), rng.integers(0, res, shapes * per_shape),
                              rng.integers(0, res, shapes * per_shape), rng.integers(0, n, shapes * per_shape)], 1)
            f.create_dataset("pairs", data=pairs.astype(np.int32), chunks=(8192, 4), compression="lzf")
            f["pairs_offset"] = np.arange(shapes + 1, dtype=np.int64) * per_shape
        if args.impl == "cached":
            with h5py.File(Path(tmp) / "feats.h5", "w") as f:
                f.create_dataset("feats", data=rng.random((shapes, v, *trunk), dtype=np.float32).astype(np.float16),
                                 chunks=(1, v, *trunk))
        dm = MVRDataModule(render_dir=tmp, num_points=n, batch_size=args.batch, pairs={"num_pairs": args.pairs})
        if args.impl == "cached":
            dm.use_teacher_features(Path(tmp) / "feats.h5")
        loader = dm.train_dataloader()
        start = time.perf_counter()
        dm.on_after_batch_transfer(dm.on_before_batch_transfer(next(iter(loader)), 0), 0)
        return time.perf_counter() - start


def worker(args: argparse.Namespace) -> dict:
    """Run in the subprocess: ``args.steps`` timed steps after ``args.warmup`` ones."""
    import importlib
    import resource
    import time

    importlib.import_module("selfsup_pcd")  # before torch: THP for torch's allocator (unset for `original`)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    trunk_dim, params, loss = (_original if args.impl == "original" else _ours)(args)
    h = args.resolution // 8
    batch = _synthetic_batch(args.batch, args.points, args.views, args.resolution, args.pairs, (trunk_dim, h, h))
    opt = torch.optim.Adam(params, lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(batch).backward()
        opt.step()

    base = _rss_kib()
    for _ in range(max(1, args.warmup)):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    median = statistics.median(times)
    data_s = _data_seconds(args, (trunk_dim, h, h)) if args.impl != "original" else float("nan")
    return {"student": args.student, "impl": args.impl, "batch": args.batch, "objects_per_s": args.batch / median,
            "step_s": median, "step_min_s": min(times), "peak_mib": max(0, peak - base) / 1024, "data_s": data_s}


def _run_subprocess(args: argparse.Namespace, student: str, impl: str, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--student", student, "--impl", impl, "--batch", str(batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--teacher", args.teacher, "--points", str(args.points), "--views", str(args.views),
           "--resolution", str(args.resolution), "--pairs", str(args.pairs)]
    env = dict(os.environ)
    if impl == "original":
        env["THP_MEM_ALLOC_ENABLE"] = "0"
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{student}/{impl}/{batch} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print_table(rows: list[list[str]], title: str) -> None:
    header = ["student", "teacher", "batch", "objects/s", "s/step (median, min)", "peak MiB", "data s/batch",
              "vs original (this run)", "vs 1.06 obj/s"]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print(title)
        for r in [header, *rows]:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        return
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    Console(width=max(150, Console().width)).print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", nargs="+", choices=STUDENTS, default=list(STUDENTS))
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--original-batches", nargs="+", type=int, default=[8],
                        help="batches at which the (slow) original implementation is also timed")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--student", choices=STUDENTS, help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    results = {}
    for student in args.students:
        for batch in args.batches:
            for impl in args.impls:
                if impl == "original" and batch not in args.original_batches:
                    continue
                results[(student, impl, batch)] = r = _run_subprocess(args, student, impl, batch)
                print(f"{student:8s} {impl:8s} batch {batch:3d}: {r['objects_per_s']:.2f} objects/s", flush=True)
    rows = []
    for (student, impl, batch), r in results.items():
        ref = results.get((student, "original", batch))
        ratio = f"{r['objects_per_s'] / ref['objects_per_s']:.2f}x" if ref and impl != "original" else ""
        published = f"{r['objects_per_s'] / ORIGINAL_OBJECTS_PER_S:.2f}x" if student == "dgcnn" and batch == 8 else ""
        data_s = "" if r["data_s"] != r["data_s"] else f"{r['data_s']:.3f}"
        rows.append([student, impl, str(batch), f"{r['objects_per_s']:.2f}",
                     f"{r['step_s']:.2f}, {r['step_min_s']:.2f}", f"{r['peak_mib']:.0f}", data_s, ratio, published])
    title = (f"MVR training step (fwd+bwd+Adam): {args.points} points, {args.views} views of {args.resolution}², "
             f"{args.pairs} pairs, {args.teacher} teacher, {args.threads} threads, median of {args.steps} steps")
    _print_table(rows, title)
    if args.json:
        print(json.dumps(list(results.values())))


if __name__ == "__main__":
    main()
