"""SR-UNet training-step throughput on CPU at 2 cm and 5 cm voxels (issue #6).

One step = voxelise nothing (done once beforehand), forward + backward + SGD step of the SR-UNet with
cross-entropy on the voxel labels, for one procedural room sampled to ``--points`` surface points. Throughput
is original points per second (and voxels per second) from the median step time; "peak MiB" is the growth of
the process's peak RSS over the RSS before the first step, so run one configuration per process
(``--arch``/``--voxel``) for a per-configuration figure; the default loops over both voxel sizes in one process.

    python benchmarks/srunet.py --threads 2 --points 200000 --steps 3
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from selfsup_pcd.data.synthetic.scenes import make_scene, sample_scene
from selfsup_pcd.data.voxelize import IGNORE_INDEX, collate_voxels, voxelize
from selfsup_pcd.models.backbones.srunet import SRUNet


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(arch: str, voxel: float, points: int, steps: int, warmup: int, seed: int) -> dict:
    pts = sample_scene(make_scene(seed), points, seed)
    vox = voxelize(pts.xyz, pts.rgb.astype(np.float32) / 255 - 0.5, voxel, pts.semantic)
    batch = collate_voxels([{"coords": vox.coords, "feats": vox.feats, "labels": vox.labels,
                             "inverse": vox.inverse}])
    torch.manual_seed(seed)
    net = SRUNet(in_channels=3, out_channels=20, arch=arch)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    before = _peak_mib()

    def step() -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(net(batch["coords"], batch["feats"]), batch["labels"], ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    for _ in range(warmup):
        step()
    median = statistics.median(step() for _ in range(steps))
    return {"arch": arch, "voxel_cm": voxel * 100, "points": points, "voxels": len(vox.coords), "s_per_step": median,
            "points_per_s": points / median, "voxels_per_s": len(vox.coords) / median,
            "peak_mib": _peak_mib() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["Res16UNet34C"])
    parser.add_argument("--voxel", type=float, nargs="+", default=[0.02, 0.05])
    parser.add_argument("--points", type=int, default=200_000, help="surface points of the room (one scene/step)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [run(a, v, args.points, args.steps, args.warmup, args.seed) for a in args.arch for v in args.voxel]
    print(f"SR-UNet forward+backward+SGD step, CPU, {args.threads} threads, one room of {args.points:,} points, "
          f"median of {args.steps} steps")
    print("| arch | voxel | voxels | s/step | points/s | voxels/s | peak MiB (growth) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arch']} | {r['voxel_cm']:.0f} cm | {r['voxels']:,} | {r['s_per_step']:.2f} | "
              f"{r['points_per_s']:,.0f} | {r['voxels_per_s']:,.0f} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
