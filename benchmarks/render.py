"""Rendering speed on CPU: views/s per back end (OSMesa, EGL), resolution and shape.

    python benchmarks/render.py [--resolutions 32 128 224] [--seconds 2]

Each back end runs in a fresh subprocess because PyOpenGL fixes its platform at import. Shapes: a
procedural chair (a few thousand faces), the Stanford bunny from ../shared/data/meshes when present
(56k faces), and 1,024 point splats (spheres). A view is colour + depth of one camera of the 12-view ring;
the time includes shading and uploading the geometry, as ``Renderer.render_mesh`` does it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNNY = ROOT.parent / "shared" / "data" / "meshes" / "pymeshlab" / "bunny.obj"
BACKENDS = ("osmesa", "egl")


def shapes() -> list[tuple[str, object, str]]:
    """(name, geometry, kind) with geometry a trimesh (kind "mesh") or (N, 3) points (kind "points")."""
    import numpy as np
    import trimesh

    from selfsup_pcd.data.synthetic import CLASS_NAMES, make_mesh

    def normalised(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        mesh.apply_translation(-mesh.bounds.mean(axis=0))
        mesh.apply_scale(1.0 / np.linalg.norm(mesh.vertices, axis=1).max())
        return mesh

    chair = normalised(make_mesh(CLASS_NAMES.index("chair"), seed=0))
    out = [(f"procedural chair ({len(chair.faces):,} faces)", chair, "mesh")]
    if BUNNY.is_file():
        bunny = normalised(trimesh.load(BUNNY, force="mesh", process=False))
        out.append((f"bunny ({len(bunny.faces):,} faces)", bunny, "mesh"))
    points, _ = trimesh.sample.sample_surface(chair, 1024, seed=np.random.default_rng(0))
    out.append(("1,024 point splats (spheres)", np.asarray(points), "points"))
    return out


def worker(resolutions: list[int], seconds: float) -> None:
    """Runs in the subprocess: prints one JSON line per measurement."""
    from selfsup_pcd.render.cameras import make_rig
    from selfsup_pcd.render.renderer import Renderer

    items = shapes()
    for resolution in resolutions:
        started = time.perf_counter()
        renderer = Renderer(resolution, resolution)
        cameras = make_rig("ring", num_views=12, resolution=resolution)
        for name, geometry, kind in items:
            render = renderer.render_mesh if kind == "mesh" else renderer.render_points
            render(geometry, cameras[:1])  # context creation, shader compilation
            if started is not None:
                print(json.dumps({"resolution": resolution, "setup_s": time.perf_counter() - started}), flush=True)
                started = None
            views, begin = 0, time.perf_counter()
            while time.perf_counter() - begin < seconds:
                render(geometry, cameras)
                views += len(cameras)
            rate = views / (time.perf_counter() - begin)
            print(json.dumps({"shape": name, "resolution": resolution, "views_per_s": rate}), flush=True)
        renderer.close()


def run_backend(backend: str, args: argparse.Namespace) -> tuple[dict, dict, str]:
    env = dict(os.environ, PYOPENGL_PLATFORM=backend)
    cmd = [sys.executable, __file__, "--worker", "--seconds", str(args.seconds), "--resolutions",
           *map(str, args.resolutions)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    rates, setup = {}, {}
    for line in proc.stdout.splitlines():
        row = json.loads(line)
        if "setup_s" in row:
            setup[row["resolution"]] = row["setup_s"]
        else:
            rates[(row["shape"], row["resolution"])] = row["views_per_s"]
    error = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["failed"])[-1]
    return rates, setup, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 128, 224])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.resolutions, args.seconds)
        return

    header = ["back end", "shape", *[f"{r}x{r} views/s" for r in args.resolutions]]
    rows, notes = [], []
    for backend in BACKENDS:
        rates, setup, error = run_backend(backend, args)
        if error:
            notes.append(f"{backend}: {error}")
        for shape in dict.fromkeys(s for s, _ in rates):
            rows.append([backend, shape, *[f"{rates.get((shape, r), float('nan')):.1f}" for r in args.resolutions]])
        if setup:
            rows.append([backend, "(renderer creation + first view, s)",
                         *[f"{setup.get(r, float('nan')):.2f}" for r in args.resolutions]])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    for note in notes:
        print(f"note: {note}")
    threads = os.environ.get("LP_NUM_THREADS", "default")
    print(f"({os.cpu_count()} CPU cores; llvmpipe threads: LP_NUM_THREADS={threads})")


if __name__ == "__main__":
    main()
