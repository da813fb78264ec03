"""Offscreen rendering of meshes and point splats with pyrender: shaded RGB, metric depth, exact cameras.

Design decisions (the original MVR renderer was never released, spec §2 / quirk 4):

* **Cameras.** OpenCV ``K`` / ``world_to_cam`` (``cameras.py``) become a ``pyrender.IntrinsicsCamera`` and
  an OpenGL pose (``cam_to_world @ diag(1, -1, -1, 1)``), so ``K @ X_cam`` lands exactly on the rendered
  pixels: pixel ``(row, col)`` shows what covers its centre ``(col + 0.5, row + 0.5)``.
* **One sample per pixel.** pyrender's EGL path draws into a 4x multisampled framebuffer whose depth
  is resolved from one off-centre sample, and OSMesa draws single-sampled, so the two back ends would
  disagree by a pixel at silhouettes. The multisampled buffers are re-allocated with one sample, which
  makes both sample every pixel at its centre. ``supersample=3`` (odd, so one sub-pixel sits on each
  pixel centre) antialiases the colour by a box filter and keeps depth from the centre sub-pixel.
* **Shading.** Lambertian with a headlight (a directional light along the camera axis), two-sided
  because mesh normals in the wild are often inconsistent: per face
  ``colour = albedo * (ambient + light_intensity * |n . d| / pi)``, clipped to [0, 1], computed in NumPy
  and drawn unlit (pyrender's FLAT mode), so images are exact and identical between runs and back ends.
  The albedo is the mesh's vertex/face colours when ``colors=True`` and it has some, else grey
  (``GREY_ALBEDO``) in all three channels.
* **Depth** is the metric z along the camera axis (pyrender's linearised depth buffer), 0 where nothing
  is hit; near and far planes are fitted to the geometry per view.

The OpenGL context is created on first use in the process that renders (DataLoader or multiprocessing
workers each create their own; a context inherited through ``fork`` is never touched). One limit of
Mesa's software rasteriser (llvmpipe, both back ends on a CPU): its worker threads do not survive
``fork``, so a process forked after its parent rendered would hang on its first render. That case
raises an error instead; avoid it by rendering only in the workers, by spawn/forkserver workers, or by
``LP_NUM_THREADS=0`` (llvmpipe renders in the calling thread; the render cache's workers set it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import trimesh

from selfsup_pcd.render.backend import import_pyrender
from selfsup_pcd.render.cameras import Camera

GREY_ALBEDO = 0.7
# OpenCV camera axes (x right, y down, z forward) -> OpenGL camera axes (x right, y up, z backward).
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
# Icosphere subdivisions of a point splat without normals: 0 = icosahedron (20 faces; 2.5x faster than 1).
SPLAT_SUBDIVISIONS = 0
DISC_SIDES = 6

_inherited_contexts: list[Any] = []  # contexts copied into a forked child: kept alive, never deleted
_threaded_llvmpipe_pid: int | None = None  # process that started llvmpipe's rasteriser threads


@dataclass
class RenderResult:
    """Images of ``V`` views. Pixel ``(row, col)`` is centred at ``(col + 0.5, row + 0.5)`` in K's frame."""

    rgb: np.ndarray  # (V, H, W, 3) uint8
    depth: np.ndarray  # (V, H, W) float32, metric z-depth along the camera axis, 0 where nothing is hit
    K: np.ndarray  # (V, 3, 3) float64
    world_to_cam: np.ndarray  # (V, 4, 4) float64, OpenCV convention


@dataclass
class _Geometry:
    """Triangles to draw, with what is needed to shade them for a given viewing direction."""

    positions: np.ndarray  # (T*3, 3) float32 triangle corners, or base-shape vertices when instanced
    indices: np.ndarray | None  # (T, 3) for an indexed (instanced) base shape
    normals: np.ndarray  # (T, 3) unit face normals, or (vertices, 3) for the instanced base shape
    albedo: np.ndarray  # like positions, (.., 3) float32 in [0, 1]
    poses: np.ndarray | None  # (I, 4, 4) instance transforms
    bounds: np.ndarray  # (2, 3) world-space bounding box of everything drawn


def _face_normals(corners: np.ndarray) -> np.ndarray:
    """Unit normals of triangles given as (T, 3, 3) corners; zero for degenerate triangles."""
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)


def _mesh_albedo(mesh: trimesh.Trimesh, colors: bool) -> np.ndarray:
    """Per-corner albedo (F*3, 3) float32 from vertex or face colours, or grey."""
    faces = np.asarray(mesh.faces)
    visual = mesh.visual
    if colors and visual is not None and visual.defined:
        if visual.kind == "texture":
            visual = visual.to_color()
        if visual.kind == "vertex":
            rgb = np.asarray(visual.vertex_colors)[:, :3][faces].reshape(-1, 3)
            return (rgb / 255.0).astype(np.float32)
        if visual.kind == "face":
            rgb = np.repeat(np.asarray(visual.face_colors)[:, :3], 3, axis=0)
            return (rgb / 255.0).astype(np.float32)
    return np.full((3 * len(faces), 3), GREY_ALBEDO, dtype=np.float32)


def _disc_geometry(points: np.ndarray, normals: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``DISC_SIDES``-gons of ``radius`` centred on ``points`` and facing ``normals``: corners and normals."""
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    n = np.divide(normals, length, out=np.tile([0.0, 0.0, 1.0], (len(normals), 1)), where=length > 1e-12)
    helper = np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    t1 = np.cross(n, helper)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(n, t1)
    angles = np.arange(DISC_SIDES + 1) * 2.0 * math.pi / DISC_SIDES
    rim = points[:, None] + radius * (np.cos(angles)[None, :, None] * t1[:, None] + np.sin(angles)[None, :, None]
                                      * t2[:, None])  # (P, sides + 1, 3)
    corners = np.stack([np.repeat(points[:, None], DISC_SIDES, axis=1), rim[:, :-1], rim[:, 1:]], axis=2)
    return corners.reshape(-1, 3, 3), np.repeat(n, DISC_SIDES, axis=0)


class Renderer:
    """Renders shapes from a list of cameras of one image size (``width`` x ``height``).

    ``background`` is an RGB colour in 0..255; ``light_intensity`` and ``ambient`` set the shading
    (module docstring). Deterministic: the same input gives bit-identical images.
    """

    def __init__(self, width: int, height: int, background: Sequence[float] = (0, 0, 0),
                 light_intensity: float = 3.0, ambient: float = 0.3, *, supersample: int = 1) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        if supersample < 1 or supersample % 2 == 0:
            raise ValueError(f"supersample must be an odd positive integer (1, 3, ...), got {supersample}")
        if len(background) != 3:
            raise ValueError(f"background must be an RGB triple in 0..255, got {background}")
        self.width, self.height = int(width), int(height)
        self.background = tuple(float(c) for c in background)
        self.light_intensity, self.ambient = float(light_intensity), float(ambient)
        self.supersample = int(supersample)
        self._gl: Any = None
        self._pid: int | None = None

    # -- public API ------------------------------------------------------------------------------
    def render_mesh(self, mesh: trimesh.Trimesh, cameras: Sequence[Camera], colors: bool = True) -> RenderResult:
        """Shaded RGB and depth of ``mesh`` from every camera (colours: vertex/face colours, else grey)."""
        faces = np.asarray(mesh.faces, dtype=np.int64)
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        corners = vertices[faces]
        geometry = _Geometry(
            positions=corners.reshape(-1, 3).astype(np.float32),
            indices=None,
            normals=_face_normals(corners),
            albedo=_mesh_albedo(mesh, colors),
            poses=None,
            bounds=np.stack([vertices.min(0), vertices.max(0)]) if len(faces) else np.zeros((2, 3)),
        )
        return self._render(geometry, cameras, empty=len(faces) == 0)

    def render_points(self, points: np.ndarray, cameras: Sequence[Camera], radius: float = 0.02,
                      normals: np.ndarray | None = None) -> RenderResult:
        """Point splats: discs of ``radius`` facing ``normals`` when given, else spheres of ``radius``.

        Discs lie in the surface, so their depth at a point's own pixel is the point's depth; spheres
        are up to ``radius`` nearer to the camera than their centre.
        """
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points must be (P, 3), got {points.shape}")
        if radius <= 0:
            raise ValueError(f"splat radius must be positive, got {radius}")
        bounds = (np.stack([points.min(0) - radius, points.max(0) + radius]) if len(points)
                  else np.zeros((2, 3)))
        if normals is not None:
            normals = np.asarray(normals, dtype=np.float64)
            if normals.shape != points.shape:
                raise ValueError(f"normals must have the shape of points {points.shape}, got {normals.shape}")
            corners, face_normals = _disc_geometry(points, normals, radius)
            geometry = _Geometry(corners.reshape(-1, 3).astype(np.float32), None, face_normals,
                                 np.full((len(corners) * 3, 3), GREY_ALBEDO, np.float32), None, bounds)
        else:
            sphere = trimesh.creation.icosphere(subdivisions=SPLAT_SUBDIVISIONS, radius=radius)
            poses = np.tile(np.eye(4), (len(points), 1, 1))
            poses[:, :3, 3] = points
            geometry = _Geometry(np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces),
                                 np.asarray(sphere.vertex_normals, np.float64),
                                 np.full((len(sphere.vertices), 3), GREY_ALBEDO, np.float32), poses, bounds)
        return self._render(geometry, cameras, empty=len(points) == 0)

    def close(self) -> None:
        """Frees the OpenGL context (a later render creates a new one)."""
        if self._gl is not None and self._pid == os.getpid():
            _release(self._gl)
        self._gl, self._pid = None, None

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (e.g. into spawned workers): the OpenGL context stays behind."""
        state = dict(self.__dict__)
        state["_gl"], state["_pid"] = None, None
        return state

    # -- internals -------------------------------------------------------------------------------
    def _context(self) -> Any:
        """This process's pyrender OffscreenRenderer, created on first use."""
        if self._gl is not None and self._pid == os.getpid():
            return self._gl
        global _threaded_llvmpipe_pid
        if self._gl is not None:  # copied from the parent by fork: its context is not ours to use or free
            _inherited_contexts.append(self._gl)
        if _threaded_llvmpipe_pid not in (None, os.getpid()):
            raise RuntimeError(
                f"process {os.getpid()} was forked from process {_threaded_llvmpipe_pid} after that one rendered "
                "with Mesa's llvmpipe, whose threads do not survive fork: rendering here would hang. Render only "
                "in worker processes, use spawn/forkserver workers, or set LP_NUM_THREADS=0 before rendering")
        pyrender = import_pyrender()
        gl = pyrender.OffscreenRenderer(self.width * self.supersample, self.height * self.supersample)
        gl._renderer.__class__ = _single_sample_renderer_class(pyrender)
        from OpenGL import GL

        if b"llvmpipe" in (GL.glGetString(GL.GL_RENDERER) or b"") and os.environ.get("LP_NUM_THREADS") != "0":
            _threaded_llvmpipe_pid = os.getpid()
        self._gl, self._pid = gl, os.getpid()
        return gl

    def _check_cameras(self, cameras: Sequence[Camera]) -> None:
        if len(cameras) == 0:
            raise ValueError("no cameras given")
        for i, cam in enumerate(cameras):
            if (cam.width, cam.height) != (self.width, self.height):
                raise ValueError(f"camera {i} is {cam.width}x{cam.height} but this Renderer renders "
                                 f"{self.width}x{self.height}; create one Renderer per image size")
            if abs(cam.K[0, 1]) > 0 or np.any(cam.K[2] != [0.0, 0.0, 1.0]):
                raise ValueError(f"camera {i}: K must have no skew and last row [0, 0, 1], got\n{cam.K}")

    def _shade(self, normals: np.ndarray, albedo: np.ndarray, view_dir: np.ndarray, per_face: bool) -> np.ndarray:
        """RGBA float32 per corner (faces) or per vertex (instanced base shape)."""
        intensity = self.ambient + self.light_intensity / math.pi * np.abs(normals @ view_dir)
        if per_face:
            intensity = np.repeat(intensity, 3)
        rgba = np.ones((len(albedo), 4), dtype=np.float32)
        rgba[:, :3] = np.clip(albedo * intensity[:, None].astype(np.float32), 0.0, 1.0)
        return rgba

    def _render(self, geometry: _Geometry, cameras: Sequence[Camera], empty: bool) -> RenderResult:
        self._check_cameras(cameras)
        num_views, s = len(cameras), self.supersample
        rgb = np.empty((num_views, self.height, self.width, 3), dtype=np.uint8)
        rgb[:] = np.round(np.clip(self.background, 0, 255)).astype(np.uint8)
        depth = np.zeros((num_views, self.height, self.width), dtype=np.float32)
        Ks = np.stack([c.K for c in cameras])
        extrinsics = np.stack([c.world_to_cam for c in cameras])
        if empty:
            return RenderResult(rgb, depth, Ks, extrinsics)

        pyrender = import_pyrender()
        gl = self._context()
        scene = pyrender.Scene(bg_color=[*(np.asarray(self.background) / 255.0), 1.0], ambient_light=[0, 0, 0])
        material = pyrender.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0], alphaMode="OPAQUE")
        flags = pyrender.RenderFlags.FLAT | pyrender.RenderFlags.SKIP_CULL_FACES
        corners = np.array(np.meshgrid(*geometry.bounds.T, indexing="ij")).reshape(3, -1).T  # (8, 3)
        camera_node = scene.add(pyrender.IntrinsicsCamera(fx=1.0, fy=1.0, cx=0.0, cy=0.0))
        mesh_node = None
        for v, cam in enumerate(cameras):
            rotation, translation = cam.world_to_cam[:3, :3], cam.world_to_cam[:3, 3]
            z = corners @ rotation[2] + translation[2]
            if z.max() <= 0:
                continue  # everything is behind the camera
            z_far = float(z.max()) * 1.01 + 1e-6
            z_near = float(z.min()) * 0.99 if z.min() > 0 else z_far * 1e-3
            K = np.diag([s, s, 1.0]) @ cam.K
            camera_node.camera = pyrender.IntrinsicsCamera(fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2],
                                                           znear=max(z_near, z_far * 1e-6), zfar=z_far)
            scene.set_pose(camera_node, cam.cam_to_world @ CV_TO_GL)
            colors = self._shade(geometry.normals, geometry.albedo, rotation[2], geometry.indices is None)
            primitive = pyrender.Primitive(positions=geometry.positions, color_0=colors, indices=geometry.indices,
                                           material=material, poses=geometry.poses)
            if mesh_node is not None:
                scene.remove_node(mesh_node)
            mesh_node = scene.add(pyrender.Mesh([primitive]))
            color, z_buffer = gl.render(scene, flags=flags)
            if s == 1:
                rgb[v], depth[v] = color, z_buffer
            else:
                blocks = color.reshape(self.height, s, self.width, s, 3).astype(np.float32)
                rgb[v] = np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)
                depth[v] = z_buffer[s // 2::s, s // 2::s]
        return RenderResult(rgb, depth, Ks, extrinsics)


def _release(gl: Any) -> None:
    """Frees one OffscreenRenderer without ending the others.

    pyrender's EGL ``delete`` calls ``eglTerminate`` on the display, which every context of the process
    shares, so closing one Renderer would break all others; here only this context is destroyed.
    """
    platform = getattr(gl, "_platform", None)
    if type(platform).__name__ != "EGLPlatform":
        gl.delete()
        return
    from OpenGL import EGL

    platform.make_current()
    gl._renderer.delete()
    EGL.eglMakeCurrent(platform._egl_display, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, EGL.EGL_NO_CONTEXT)
    EGL.eglDestroyContext(platform._egl_display, platform._egl_context)
    platform._egl_context = platform._egl_display = None
    gl._renderer = gl._platform = None


_renderer_classes: dict[int, type] = {}


def _single_sample_renderer_class(pyrender: Any) -> type:
    """A pyrender Renderer whose "multisampled" framebuffer has one sample (see module docstring)."""
    key = id(pyrender)
    if key in _renderer_classes:
        return _renderer_classes[key]
    from OpenGL import GL

    class SingleSampleRenderer(pyrender.renderer.Renderer):
        def _configure_main_framebuffer(self) -> None:
            super()._configure_main_framebuffer()
            GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, self._main_cb_ms)
            if GL.glGetRenderbufferParameteriv(GL.GL_RENDERBUFFER, GL.GL_RENDERBUFFER_SAMPLES) == 0:
                return
            width, height = self.viewport_width, self.viewport_height
            GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, GL.GL_RGBA, width, height)
            GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, self._main_db_ms)
            GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, GL.GL_DEPTH_COMPONENT24, width, height)

    _renderer_classes[key] = SingleSampleRenderer
    return SingleSampleRenderer


_shared: dict[tuple, Renderer] = {}


def shared_renderer(width: int, height: int, **kwargs: Any) -> Renderer:
    """One Renderer per process and settings, created lazily (use in DataLoader / pool workers)."""
    key = (os.getpid(), width, height, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if key not in _shared:
        _shared[key] = Renderer(width, height, **kwargs)
    return _shared[key]
