"""Back-end choice: user setting first, then NVIDIA EGL, then OSMesa, then Mesa EGL."""

from __future__ import annotations

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
