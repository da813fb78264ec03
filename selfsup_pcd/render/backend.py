"""Chooses the offscreen OpenGL back end (``PYOPENGL_PLATFORM``) before pyrender is imported.

PyOpenGL fixes its platform when ``OpenGL`` is first imported, and without ``PYOPENGL_PLATFORM`` pyrender
falls back to pyglet, which needs an X display. So the variable is set here, once per process, before the
first ``import pyrender`` (worker processes inherit it). Order of preference:

1. a ``PYOPENGL_PLATFORM`` set by the user (``egl`` or ``osmesa``) is always honoured;
2. ``egl`` when an NVIDIA EGL driver is installed (GPU rendering);
3. ``osmesa`` when ``libOSMesa`` can be loaded (Debian: ``libosmesa6``; software rendering, no device needed);
4. ``egl`` otherwise: Mesa's EGL renders on the CPU through llvmpipe (Debian: ``libegl1 libegl-mesa0
   libgl1-mesa-dri``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

ENV_VAR = "PYOPENGL_PLATFORM"
PLATFORMS = ("egl", "osmesa")
# glvnd vendor files and driver libraries that mean "the NVIDIA EGL driver is installed".
NVIDIA_EGL_VENDOR_FILES = (
    "/usr/share/glvnd/egl_vendor.d/10_nvidia.json",
    "/etc/glvnd/egl_vendor.d/10_nvidia.json",
)
NVIDIA_EGL_LIBRARIES = ("libEGL_nvidia.so.0", "libEGL_nvidia.so")
OSMESA_LIBRARIES = ("libOSMesa.so.8", "libOSMesa.so.6", "libOSMesa.so")
DEBIAN_PACKAGES = {"osmesa": "libosmesa6", "egl": "libegl1 libegl-mesa0 libgl1-mesa-dri"}

_chosen: tuple[str, str] | None = None


def can_load(names: Iterable[str], loader: Callable[[str], object] = ctypes.CDLL) -> bool:
    """True when one of the shared libraries ``names`` can be dlopen-ed (what PyOpenGL will do)."""
    for name in names:
        try:
            loader(name)
        except OSError:
            continue
        return True
    return False


def nvidia_egl_present(vendor_files: Iterable[str] = NVIDIA_EGL_VENDOR_FILES,
                       libraries: Iterable[str] = NVIDIA_EGL_LIBRARIES,
                       loader: Callable[[str], object] = ctypes.CDLL) -> bool:
    """True when the NVIDIA EGL driver is installed (glvnd vendor file or loadable ``libEGL_nvidia``)."""
    return any(Path(f).is_file() for f in vendor_files) or can_load(libraries, loader)


def osmesa_present(libraries: Iterable[str] = OSMESA_LIBRARIES,
                   loader: Callable[[str], object] = ctypes.CDLL) -> bool:
    """True when libOSMesa can be loaded."""
    return can_load(libraries, loader)


def choose_platform(environ: Mapping[str, str] | None = None, nvidia: Callable[[], bool] | None = None,
                    osmesa: Callable[[], bool] | None = None) -> tuple[str, str]:
    """``(platform, reason)`` following the module's order of preference; does not change anything."""
    environ = os.environ if environ is None else environ
    nvidia, osmesa = nvidia or nvidia_egl_present, osmesa or osmesa_present
    user = environ.get(ENV_VAR, "").strip().lower()
    if user:
        if user not in PLATFORMS:
            raise ValueError(f"{ENV_VAR}={environ[ENV_VAR]!r} is not an offscreen back end pyrender supports; "
                             f"use one of {PLATFORMS} (or unset it to choose automatically)")
        return user, f"{ENV_VAR} set by the user"
    if nvidia():
        return "egl", "NVIDIA EGL driver found"
    if osmesa():
        return "osmesa", "libOSMesa found, no NVIDIA EGL driver"
    return "egl", ("no NVIDIA EGL driver and no libOSMesa: Mesa EGL (llvmpipe, CPU); "
                   f"install Debian's {DEBIAN_PACKAGES['osmesa']} for OSMesa")


def configure() -> str:
    """Sets ``PYOPENGL_PLATFORM`` for this process (once) and returns it; call before importing pyrender."""
    global _chosen
    if _chosen is not None and os.environ.get(ENV_VAR) == _chosen[0]:
        return _chosen[0]
    platform, reason = choose_platform()
    if "OpenGL" in sys.modules and os.environ.get(ENV_VAR, "").lower() != platform:
        raise RuntimeError(f"PyOpenGL was imported before the rendering back end was chosen, so it is fixed to "
                           f"{os.environ.get(ENV_VAR) or 'its default (pyglet/X)'}; import selfsup_pcd.render "
                           f"before OpenGL/pyrender, or set {ENV_VAR}={platform} in the environment")
    os.environ[ENV_VAR] = platform
    logging.getLogger("OpenGL.acceleratesupport").setLevel(logging.WARNING)  # "no OpenGL_accelerate" noise
    _chosen = (platform, reason)
    log.info("offscreen rendering back end: %s (%s)", platform, reason)
    return platform


def stable_context_ids() -> None:
    """Keys PyOpenGL's per-context data by the context's address under OSMesa (idempotent).

    PyOpenGL's OSMesa ``GetCurrentContext`` returns a new ``OSMesaContext`` pointer object on every call;
    those hash alike but never compare equal. Everything keyed on ``OpenGL.contextdata.getContext()`` thus
    gains an entry per call: pyrender's shader-program cache compiles and keeps a new program on every
    render (~1 MB each, never freed) and PyOpenGL's stored vertex-attribute pointers pile up in one hash
    bucket, so each render is slower than the last (rendering 905 shapes: 8 -> 2 shapes/s, RSS +10 MB per
    shape). EGL, GLX and CGL return plain integers and are left alone.
    """
    from OpenGL import contextdata

    if getattr(contextdata.getContext, "_by_address", False):
        return
    original = contextdata.getContext

    def get_context(context: Any = None) -> Any:
        context = original(context)
        if isinstance(context, int):
            return context
        address = ctypes.cast(context, ctypes.c_void_p).value
        return context if address is None else address

    get_context._by_address = True  # type: ignore[attr-defined]
    contextdata.getContext = get_context


def import_pyrender() -> ModuleType:
    """``pyrender``, imported after the back end is configured."""
    platform = configure()
    try:
        import pyrender
    except ImportError as err:
        raise ImportError("rendering needs pyrender-maintained==1.0.1 and PyOpenGL==3.1.10 "
                          "(`make install`, or pip install them; never the `pyrender` package)") from err
    if platform == "osmesa":
        stable_context_ids()
    return pyrender


def current() -> str | None:
    """The back end this process chose, or None before ``configure``."""
    return _chosen[0] if _chosen else None
