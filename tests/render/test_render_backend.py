"""Back-end choice: user setting first, then NVIDIA EGL, then OSMesa, then Mesa EGL."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from selfsup_pcd.render import backend


def choose(env=None, nvidia=False, osmesa=False):
    return backend.choose_platform(env or {}, nvidia=lambda: nvidia, osmesa=lambda: osmesa)[0]


def test_user_setting_wins():
    assert choose({"PYOPENGL_PLATFORM": "osmesa"}, nvidia=True) == "osmesa"
    assert choose({"PYOPENGL_PLATFORM": "EGL"}, osmesa=True) == "egl"
    with pytest.raises(ValueError, match="glx"):
        choose({"PYOPENGL_PLATFORM": "glx"})


def test_order_of_preference():
    assert choose(nvidia=True, osmesa=True) == "egl"
    assert choose(nvidia=False, osmesa=True) == "osmesa"
    assert choose(nvidia=False, osmesa=False) == "egl"
    assert "libosmesa6" in backend.choose_platform({}, nvidia=lambda: False, osmesa=lambda: False)[1]


def test_nvidia_detection_from_vendor_file_or_library(tmp_path):
    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    vendor = tmp_path / "10_nvidia.json"
    assert not backend.nvidia_egl_present([str(vendor)], ["libEGL_nvidia.so.0"], loader=no_library)
    vendor.write_text("{}")
    assert backend.nvidia_egl_present([str(vendor)], ["libEGL_nvidia.so.0"], loader=no_library)
    loaded = []
    assert backend.nvidia_egl_present([], ["libEGL_nvidia.so.0"], loader=loaded.append)
    assert loaded == ["libEGL_nvidia.so.0"]


def test_osmesa_detection_tries_every_name():
    tried = []

    def loader(name):
        tried.append(name)
        if name != "libOSMesa.so.6":
            raise OSError(name)

    assert backend.osmesa_present(["libOSMesa.so.8", "libOSMesa.so.6"], loader=loader)
    assert tried == ["libOSMesa.so.8", "libOSMesa.so.6"]
    assert not backend.osmesa_present(["libOSMesa.so.8"], loader=lambda name: (_ for _ in ()).throw(OSError()))


def test_configure_sets_environment_and_logs(monkeypatch, caplog):
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.setattr(backend, "_chosen", None)
    monkeypatch.setattr(backend, "nvidia_egl_present", lambda: False)
    monkeypatch.setattr(backend, "osmesa_present", lambda: False)
    monkeypatch.delitem(__import__("sys").modules, "OpenGL", raising=False)
    with caplog.at_level("INFO", logger="selfsup_pcd.render.backend"):
        assert backend.configure() == "egl"
    assert __import__("os").environ["PYOPENGL_PLATFORM"] == "egl"
    assert "egl" in caplog.text and "llvmpipe" in caplog.text


def test_configure_refuses_after_opengl_was_imported_with_another_platform(monkeypatch):
    monkeypatch.setenv("PYOPENGL_PLATFORM", "osmesa")
    monkeypatch.setattr(backend, "_chosen", None)
    monkeypatch.setattr(backend, "choose_platform", lambda: ("egl", "test"))
    monkeypatch.setitem(__import__("sys").modules, "OpenGL", object())
    with pytest.raises(RuntimeError, match="imported before"):
        backend.configure()


OSMESA_RENDER_LOOP = """
import os, sys
os.environ["PYOPENGL_PLATFORM"] = "osmesa"
import trimesh
from selfsup_pcd.render import Renderer, make_rig
import selfsup_pcd.render.backend as backend
if sys.argv[1] == "unpatched":
    backend.stable_context_ids = lambda: None
cameras = make_rig("ring", num_views=2, resolution=16)
counts = []
with Renderer(16, 16) as renderer:
    for _ in range(4):
        renderer.render_mesh(trimesh.creation.icosphere(subdivisions=1), cameras)
        counts.append(len(renderer._context()._renderer._program_cache._program_cache))
print(counts)
"""


@pytest.mark.skipif(not backend.osmesa_present(), reason="libOSMesa is not installed (Debian: libosmesa6)")
def test_osmesa_renders_reuse_their_shader_programs():
    # PyOpenGL's OSMesa context handle differs on every call; unpatched, pyrender compiles and keeps a new shader
    # program per render (memory grows, renders slow down). stable_context_ids keys the context by address.
    def program_counts(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", OSMESA_RENDER_LOOP, mode], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYOPENGL_PLATFORM": "osmesa"})
        return ast.literal_eval(out.stdout.strip().splitlines()[-1])

    patched = program_counts("patched")
    assert patched[0] >= 1 and patched == [patched[0]] * 4
    unpatched = program_counts("unpatched")
    assert unpatched[-1] > unpatched[0]  # the bug the patch fixes is still there to fix
