"""Writes small synthetic datasets in the native layouts of real ones: ``python -m selfsup_pcd.synth FORMAT --out DIR``.

Readers, pretraining and downstream pipelines can then be run end to end without the real (large,
research-licensed) datasets. Scenes come from ``data/synthetic/scenes.py``, RGB-D frames from
``data/synthetic/sequences.py`` (rendered offscreen), shapes from ProceduralShapes; the layouts are
documented in ``data/writers/`` and the README ("Synthetic datasets"). Deterministic by ``--seed``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy modules are imported where used, so that --help stays instant
    import numpy as np

    from selfsup_pcd.data.synthetic.scenes import Scene

FORMATS = ("scannet_frames", "scannet_scenes", "s3dis", "votenet_scannet", "votenet_sunrgbd", "modelnet40_h5")


def scene_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th scene of a run seeded with ``seed``."""
    import numpy as np

    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def scannet_name(index: int) -> str:
    """ScanNet-style scene name of the ``index``-th scene: ``scene0000_00``."""
    return f"scene{index:04d}_00"


def _scenes(args: argparse.Namespace, desc: str) -> Iterator[tuple[int, Scene]]:
    """(index, scene) pairs with a progress bar."""
    from tqdm import tqdm

    from selfsup_pcd.data.synthetic.scenes import make_scene

    for i in tqdm(range(args.scenes), desc=desc, unit="scene"):
        yield i, make_scene(scene_seed(args.seed, i))


def _scannet_frames(args: argparse.Namespace) -> None:
    from selfsup_pcd.data.synthetic.sequences import make_sequence
    from selfsup_pcd.data.writers.scannet_frames import write_scannet_frames

    for i, scene in _scenes(args, "scannet_frames"):
        seq = make_sequence(scene, args.frames, width=args.width, height=args.height, seed=args.seed)
        write_scannet_frames(args.out, scannet_name(i), seq.color, seq.depth_mm, seq.poses, seq.K)


def _scannet_scenes(args: argparse.Namespace) -> None:
    from selfsup_pcd.data.writers.scannet_scenes import scene_to_scannet, write_scannet_scene

    for i, scene in _scenes(args, "scannet_scenes"):
        write_scannet_scene(args.out, scannet_name(i), scene_to_scannet(scene))


def _s3dis(args: argparse.Namespace) -> None:
    import numpy as np

    from selfsup_pcd.data.synthetic.scenes import sample_scene
    from selfsup_pcd.data.writers.s3dis import ROOM_TYPES, s3dis_labels, write_s3dis_room

    rng = np.random.default_rng([args.seed, 0x53D15])
    counts: dict[tuple[int, str], int] = {}
    for i, scene in _scenes(args, "s3dis"):
        area = i % 6 + 1
        room_type = ROOM_TYPES[rng.integers(len(ROOM_TYPES))]
        counts[area, room_type] = counts.get((area, room_type), 0) + 1
        points = sample_scene(scene, args.points, seed=scene.seed)
        write_s3dis_room(args.out, area, f"{room_type}_{counts[area, room_type]}", points.xyz, points.rgb,
                         s3dis_labels(points.semantic), points.part)


def _votenet_scannet(args: argparse.Namespace) -> None:
    import numpy as np

    from selfsup_pcd.data.synthetic.scenes import sample_scene
    from selfsup_pcd.data.writers.scannet_scenes import nyu40_ids
    from selfsup_pcd.data.writers.votenet import write_votenet_scannet

    for i, scene in _scenes(args, "votenet_scannet"):
        points = sample_scene(scene, args.points, seed=scene.seed)
        vert = np.concatenate([points.xyz, points.rgb.astype(np.float32)], axis=1)
        write_votenet_scannet(args.out, scannet_name(i), vert, nyu40_ids(points.semantic), points.instance)


def upright_frame(pose: np.ndarray) -> np.ndarray:
    """(4, 4) world -> SUN RGB-D upright camera frame (origin at the camera, z up, y the horizontal view)."""
    import numpy as np

    forward = pose[:3, 2].copy()
    forward[2] = 0.0
    y = forward / np.linalg.norm(forward)
    z = np.array([0.0, 0.0, 1.0])
    x = np.cross(y, z)
    world_to_upright = np.eye(4)
    world_to_upright[:3, :3] = np.stack([x, y, z])
    world_to_upright[:3, 3] = -world_to_upright[:3, :3] @ pose[:3, 3]
    return world_to_upright


def _votenet_sunrgbd(args: argparse.Namespace) -> None:
    import math

    import numpy as np

    from selfsup_pcd.data.synthetic.scenes import points_in_box
    from selfsup_pcd.data.synthetic.sequences import backproject, make_sequence
    from selfsup_pcd.data.writers.votenet import SUNRGBD_CLASS_MAP, SUNRGBD_CLASSES, sunrgbd_box, write_votenet_sunrgbd

    sample_id = 0
    for _, scene in _scenes(args, "votenet_sunrgbd"):
        seq = make_sequence(scene, args.frames, width=args.width, height=args.height, seed=args.seed)
        for f in range(args.frames):
            sample_id += 1  # SUN RGB-D ids start at 000001
            valid = seq.depth_mm[f] > 0
            world = backproject(seq.depth_mm[f], seq.K, seq.poses[f])
            rgb = seq.color[f][valid].astype(np.float64) / 255.0
            rng = np.random.default_rng([args.seed, sample_id])
            keep = rng.choice(len(world), args.points, replace=len(world) < args.points)
            to_upright = upright_frame(seq.poses[f])
            xyz = world[keep] @ to_upright[:3, :3].T + to_upright[:3, 3]
            frame_yaw = math.atan2(to_upright[0, 1], to_upright[0, 0])
            boxes = []
            for obj in scene.objects:
                name = SUNRGBD_CLASS_MAP.get(obj.class_name)
                if name is None or points_in_box(world[keep], obj.box, tol=0.01).sum() < args.min_box_points:
                    continue
                box = obj.box.copy()
                box[:3] = to_upright[:3, :3] @ box[:3] + to_upright[:3, 3]
                box[6] = math.remainder(box[6] - frame_yaw, 2 * math.pi)
                boxes.append(sunrgbd_box(box, SUNRGBD_CLASSES.index(name)))
            split = "val" if sample_id % 5 == 0 else "train"
            write_votenet_sunrgbd(args.out, split, sample_id, np.concatenate([xyz, rgb[keep]], axis=1),
                                  np.array(boxes).reshape(-1, 8))


def _modelnet40_h5(args: argparse.Namespace) -> None:
    import numpy as np
    from tqdm import tqdm

    from selfsup_pcd.data.synthetic import CLASS_NAMES, make_mesh, sample_points, shape_seed
    from selfsup_pcd.data.writers.modelnet40_h5 import write_modelnet40_h5

    per_split = {"train": args.shapes_per_class, "test": max(1, args.shapes_per_class // 4)}
    splits = {}
    for split, count in per_split.items():
        jobs = [(c, i) for c in range(len(CLASS_NAMES)) for i in range(count)]
        data, normal = np.empty((len(jobs), 2048, 3), np.float32), np.empty((len(jobs), 2048, 3), np.float32)
        for k, (c, i) in enumerate(tqdm(jobs, desc=f"modelnet40_h5 {split}", unit="shape")):
            seed = shape_seed(args.seed, split, c, i)
            xyz, normals = sample_points(make_mesh(c, seed), 2048, seed)
            xyz = xyz - xyz.mean(axis=0)
            data[k], normal[k] = xyz / np.linalg.norm(xyz, axis=1).max(), normals
        splits[split] = (data, np.array([c for c, _ in jobs]), normal)
    write_modelnet40_h5(args.out, splits, CLASS_NAMES)


_WRITERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "scannet_frames": _scannet_frames,
    "scannet_scenes": _scannet_scenes,
    "s3dis": _s3dis,
    "votenet_scannet": _votenet_scannet,
    "votenet_sunrgbd": _votenet_sunrgbd,
    "modelnet40_h5": _modelnet40_h5,
}


def build_parser() -> argparse.ArgumentParser:
    """The command line (argparse only: nothing heavy is imported before a format runs)."""
    parser = argparse.ArgumentParser(
        prog="python -m selfsup_pcd.synth",
        description="Write a small synthetic dataset in the native layout of FORMAT under --out "
        "(see the README section 'Synthetic datasets').",
    )
    parser.add_argument("format", choices=FORMATS, metavar="FORMAT", help="one of: " + ", ".join(FORMATS))
    parser.add_argument("--out", type=Path, required=True, help="folder that receives the dataset's top folder")
    parser.add_argument("--scenes", type=int, default=2, help="rooms to generate (scene formats; default 2)")
    parser.add_argument("--frames", type=int, default=10,
                        help="RGB-D frames per scene (scannet_frames; votenet_sunrgbd: samples per scene)")
    parser.add_argument("--shapes-per-class", type=int, default=10,
                        help="modelnet40_h5: training shapes per class (test: a quarter, at least 1)")
    parser.add_argument("--points", type=int, default=50_000, help="points per room or sample (default 50000)")
    parser.add_argument("--width", type=int, default=640, help="rendered image width (default 640)")
    parser.add_argument("--height", type=int, default=480, help="rendered image height (default 480)")
    parser.add_argument("--min-box-points", type=int, default=50,
                        help="votenet_sunrgbd: points an object needs in view to get a box (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    for name in ("scenes", "frames", "shapes_per_class", "points", "width", "height"):
        if getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    _WRITERS[args.format](args)
    print(f"wrote {args.format} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
