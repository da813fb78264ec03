"""Renderer: coverage and depth against an independent rasteriser, exact pixel convention, determinism."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy import ndimage

from selfsup_pcd.render import renderer as renderer_module
from selfsup_pcd.render.cameras import Camera, intrinsics, look_at, make_rig
from selfsup_pcd.render.renderer import GREY_ALBEDO, Renderer, shared_renderer

EDGE_EPS = 0.01
REAL_MESHES = ["pymeshlab/bunny.obj", "pymeshlab/airplane.obj", "pymeshlab/colored_airplane.ply",
               "pymeshlab/cow.obj", "pyvista/airplane.ply", "pyvista/ant.ply"]


def unit_sphere_normalised(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    mesh = mesh.copy()
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    mesh.apply_scale(1.0 / np.linalg.norm(mesh.vertices, axis=1).max())
    return mesh


def reference_raster(mesh: trimesh.Trimesh, cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Depth of the nearest triangle at every pixel centre (0 = none), by brute-force rasterisation.

    Independent of OpenGL: triangles are projected with K, every pixel centre inside a triangle's bounding
    box is tested with barycentric coordinates and the depth is interpolated perspective-correctly.
    Also returns the pixels whose centre lies within ``EDGE_EPS`` pixel of a triangle edge: GPUs snap
    vertices to 1/256 pixel, so coverage there may go either way.
    """
    vertices = np.asarray(mesh.vertices) @ cam.world_to_cam[:3, :3].T + cam.world_to_cam[:3, 3]
    assert (vertices[:, 2] > 0).all(), "reference rasteriser needs every vertex in front of the camera"
    uv = vertices[:, :2] / vertices[:, 2:] * [cam.K[0, 0], cam.K[1, 1]] + cam.K[:2, 2]
    tri_uv, tri_z = uv[mesh.faces], vertices[mesh.faces][..., 2]  # (F, 3, 2), (F, 3)
    lo = np.ceil(tri_uv.min(axis=1) - 0.5).astype(int)  # first pixel whose centre can be inside
    hi = np.floor(tri_uv.max(axis=1) - 0.5).astype(int)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [cam.width - 1, cam.height - 1])
    extent = np.maximum(hi - lo + 1, 0)
    count = extent[:, 0] * extent[:, 1]
    face = np.repeat(np.arange(len(count)), count)
    local = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    col = lo[face, 0] + local % np.maximum(extent[face, 0], 1)
    row = lo[face, 1] + local // np.maximum(extent[face, 0], 1)
    p = np.stack([col + 0.5, row + 0.5], axis=1)
    a, b, c = tri_uv[face, 0], tri_uv[face, 1], tri_uv[face, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    w_a = ((b[:, 0] - p[:, 0]) * (c[:, 1] - p[:, 1]) - (b[:, 1] - p[:, 1]) * (c[:, 0] - p[:, 0])) / area
    w_b = ((c[:, 0] - p[:, 0]) * (a[:, 1] - p[:, 1]) - (c[:, 1] - p[:, 1]) * (a[:, 0] - p[:, 0])) / area
    w_c = 1.0 - w_a - w_b
    inside = (np.abs(area) > 1e-12) & (w_a >= -1e-9) & (w_b >= -1e-9) & (w_c >= -1e-9)
    edge_length = np.stack([np.linalg.norm(c - b, axis=1), np.linalg.norm(a - c, axis=1),
                            np.linalg.norm(b - a, axis=1)], axis=1)
    weights = np.stack([w_a, w_b, w_c], axis=1)
    distance = np.abs(weights * area[:, None]) / np.maximum(edge_length, 1e-12)  # to each edge, in pixels
    near_edge = ((distance <= EDGE_EPS) & (weights.min(axis=1, keepdims=True) >= -1e-2)).any(axis=1)
    ambiguous = np.zeros((cam.height, cam.width), dtype=bool)
    ambiguous[row[near_edge], col[near_edge]] = True
    inv_z = (w_a / tri_z[face, 0] + w_b / tri_z[face, 1] + w_c / tri_z[face, 2])[inside]
    depth = np.full((cam.height, cam.width), np.inf)
    np.minimum.at(depth, (row[inside], col[inside]), 1.0 / inv_z)
    depth[np.isinf(depth)] = 0.0
    return depth, ambiguous


@pytest.fixture(scope="module")
def renderer_224():
    with Renderer(224, 224) as renderer:
        yield renderer


@pytest.mark.parametrize("name", REAL_MESHES)
def test_real_mesh_depth_covers_exactly_the_mesh(shared_data, renderer_224, name):
    path = shared_data / "meshes" / name
    if not path.is_file():
        pytest.skip(f"{path} not found (see shared/data/meshes/PROVENANCE.md)")
    mesh = unit_sphere_normalised(trimesh.load(path, force="mesh", process=False))
    cameras = make_rig("ring", num_views=12, resolution=224)
    result = renderer_224.render_mesh(mesh, cameras)
    assert result.rgb.shape == (12, 224, 224, 3) and result.rgb.dtype == np.uint8
    assert result.depth.shape == (12, 224, 224) and result.depth.dtype == np.float32
    for v, cam in enumerate(cameras):
        reference, ambiguous = reference_raster(mesh, cam)
        covered, expected = result.depth[v] > 0, reference > 0
        # 1-pixel band around the silhouette, plus centres within EDGE_EPS of an edge (folds inside it)
        band = (ndimage.binary_dilation(expected) & ~ndimage.binary_erosion(expected)) | ambiguous
        assert expected.sum() > 1000, "the shape should fill a good part of the frame"
        wrong = covered != expected
        assert not (wrong & ~band).any(), f"view {v}: {int((wrong & ~band).sum())} coverage errors off the boundary"
        assert wrong.sum() <= 0.01 * expected.sum(), f"view {v}: {int(wrong.sum())} boundary pixels differ"
        # background pixels have the background colour, covered pixels are lit
        assert (result.rgb[v][~covered] == 0).all()
        # metric depth; a few pixels on internal depth edges (self-occlusion) may pick the other surface
        both = covered & expected & ~band
        close = np.isclose(result.depth[v][both], reference[both], rtol=2e-4, atol=1e-4)
        assert close.mean() > 0.998, f"view {v}: {int((~close).sum())} pixels with wrong depth"
    again = renderer_224.render_mesh(mesh, cameras)
    assert np.array_equal(again.rgb, result.rgb) and np.array_equal(again.depth, result.depth)


def test_pixel_centres_follow_intrinsics_exactly():
    """A rectangle spanning u in [10.3, 13.7], v in [5.3, 8.7] covers exactly columns 10-13 and rows 5-8.

    Off by half a pixel (centres at integers), it would cover columns 11-13 only; flipped rows would show
    up because the image is not symmetric (W=24, H=16, off-centre principal point).
    """
    width, height, z = 24, 16, 2.0
    K = np.array([[20.0, 0.0, 11.0], [0.0, 18.0, 7.5], [0.0, 0.0, 1.0]])
    world_to_cam = look_at([0.3, -0.2, -1.0], [0.3, -0.2, 0.0], up=[0.0, -1.0, 0.0])  # camera axes = world axes
    corners_uv = [(10.3, 5.3), (13.7, 5.3), (13.7, 8.7), (10.3, 8.7)]
    cam_points = np.array([((u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z) for u, v in corners_uv])
    world = (cam_points - world_to_cam[:3, 3]) @ world_to_cam[:3, :3]
    quad = trimesh.Trimesh(world, [[0, 1, 2], [0, 2, 3]], process=False)
    with Renderer(width, height) as renderer:
        result = renderer.render_mesh(quad, [Camera(K, world_to_cam, width, height)])
    expected = np.zeros((height, width), dtype=bool)
    expected[5:9, 10:14] = True
    assert np.array_equal(result.depth[0] > 0, expected)
    np.testing.assert_allclose(result.depth[0][expected], z, rtol=1e-5)
    # facing the headlight: albedo * (ambient + intensity / pi), grey in all three channels
    shade = round(255 * GREY_ALBEDO * (0.3 + 3.0 / np.pi))
    assert (result.rgb[0][expected] == shade).all() and (result.rgb[0][~expected] == 0).all()


def test_supersampling_keeps_centre_depth_and_antialiases_colour():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.9)
    cameras = make_rig("ring", num_views=2, resolution=32)
    with Renderer(32, 32) as plain, Renderer(32, 32, supersample=3) as smooth:
        a, b = plain.render_mesh(mesh, cameras), smooth.render_mesh(mesh, cameras)
    assert np.array_equal(a.depth > 0, b.depth > 0)  # same pixel-centre coverage
    np.testing.assert_allclose(a.depth, b.depth, atol=1e-3)
    # antialiasing: partially covered pixels outside the centre-sampled silhouette get some colour
    assert (b.rgb[a.depth == 0] > 0).any() and not (a.rgb[a.depth == 0] > 0).any()


def test_vertex_colours_and_grey(shared_data):
    path = shared_data / "meshes" / "pymeshlab" / "colored_airplane.ply"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    mesh = unit_sphere_normalised(trimesh.load(path, force="mesh", process=False))
    assert mesh.visual.kind == "vertex"
    cameras = make_rig("ring", num_views=3, resolution=64)
    with Renderer(64, 64) as renderer:
        coloured, grey = renderer.render_mesh(mesh, cameras), renderer.render_mesh(mesh, cameras, colors=False)
    rgb = grey.rgb[grey.depth > 0].astype(int)
    assert (rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all()
    colourful = coloured.rgb[coloured.depth > 0].astype(int)
    assert (np.ptp(colourful, axis=1) > 30).mean() > 0.2, "vertex colours should show"
    assert np.array_equal(coloured.depth, grey.depth)


def test_point_splats_have_correct_depth():
    """Discs lie in the surface (depth = the point's z); spheres stand about one radius in front of it."""
    rng = np.random.default_rng(0)
    points = rng.normal(size=(2000, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)  # on the unit sphere, normals = points
    radius = 0.05
    cameras = make_rig("ring", num_views=4, resolution=64)
    with Renderer(64, 64) as renderer:
        spheres = renderer.render_points(points, cameras, radius=radius)
        discs = renderer.render_points(points, cameras, radius=radius, normals=points)
    for v, cam in enumerate(cameras):
        cam_points = points @ cam.world_to_cam[:3, :3].T + cam.world_to_cam[:3, 3]
        uv = cam_points[:, :2] / cam_points[:, 2:] * [cam.K[0, 0], cam.K[1, 1]] + cam.K[:2, 2]
        facing = np.einsum("pi,pi->p", points, cam.center - points) / np.linalg.norm(cam.center - points, axis=1)
        front = facing > 0.5  # well inside the silhouette
        row, col = np.floor(uv[front, 1]).astype(int), np.floor(uv[front, 0]).astype(int)
        z = cam_points[front, 2]
        in_front_by = z - spheres.depth[v][row, col]
        assert (spheres.depth[v][row, col] > 0).all()
        # a sphere's front is one radius nearer than its centre; a neighbour's may be a little nearer still
        assert np.mean((in_front_by > -0.01) & (in_front_by < 2 * radius)) > 0.95
        assert 0.7 * radius < np.median(in_front_by) < 1.1 * radius
        assert np.mean(np.abs(z - discs.depth[v][row, col]) < 0.02) > 0.95


def test_camera_size_must_match():
    cam = Camera(intrinsics(40.0, 16, 16), look_at([0, 0, 3]), 16, 16)
    with Renderer(32, 32) as renderer, pytest.raises(ValueError, match="16x16"):
        renderer.render_mesh(trimesh.creation.box(), [cam])


def test_empty_mesh_renders_background():
    with Renderer(8, 8, background=(10, 20, 30)) as renderer:
        result = renderer.render_mesh(trimesh.Trimesh(), make_rig("ring", num_views=2, resolution=8))
    assert (result.depth == 0).all() and (result.rgb == [10, 20, 30]).all()


class RenderedBoxes(torch.utils.data.Dataset):
    """Renders in ``__getitem__``: each DataLoader worker creates its own renderer on first use."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        mesh = trimesh.creation.box(extents=[1.0, 0.5 + 0.1 * i, 0.7])
        result = shared_renderer(32, 32).render_mesh(mesh, make_rig("ring", num_views=3, resolution=32))
        return {"rgb": torch.from_numpy(result.rgb), "depth": torch.from_numpy(result.depth), "pid": os.getpid()}


def load_in_workers(start_method: str) -> list[dict]:
    loader = torch.utils.data.DataLoader(RenderedBoxes(), batch_size=None, num_workers=2,
                                         multiprocessing_context=start_method, timeout=120)
    items = list(loader)
    assert {int(item["pid"]) for item in items}.isdisjoint({os.getpid()})
    return items


WORKER_SCRIPT = """
import sys, torch
sys.path.insert(0, {folder!r})
from test_renderer import RenderedBoxes, load_in_workers
forked = load_in_workers("fork")  # before this process renders anything
in_process = [RenderedBoxes()[i] for i in range(4)]
spawned = load_in_workers("spawn")
for a, b, c in zip(in_process, forked, spawned):
    assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["depth"], b["depth"])
    assert torch.equal(a["rgb"], c["rgb"]) and torch.equal(a["depth"], c["depth"])
print("identical")
"""


def test_rendering_in_dataloader_workers():
    """fork and spawn DataLoader workers render the same images as the main process (fresh interpreter)."""
    script = WORKER_SCRIPT.format(folder=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "identical" in proc.stdout, proc.stderr[-3000:]


def render_box(i: int) -> float:
    return float(RenderedBoxes()[i]["depth"].sum())


def test_fork_after_rendering_with_threaded_llvmpipe_raises_instead_of_hanging():
    render_box(0)
    if renderer_module._threaded_llvmpipe_pid != os.getpid():
        pytest.skip("not rendering with threaded llvmpipe (GPU driver or LP_NUM_THREADS=0)")
    pool = multiprocessing.get_context("fork").Pool(1)
    try:
        with pytest.raises(RuntimeError, match="forked from process"):
            pool.apply_async(render_box, (1,)).get(timeout=120)
    finally:
        pool.terminate()
