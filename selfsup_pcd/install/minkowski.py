"""Builds and installs MinkowskiEngine 0.5.4 for the torch in this environment; ``make install`` runs it.

MinkowskiEngine's last release (2021) ships only a source distribution, whose setup.py imports torch and
numpy at metadata time and fails under today's Python and torch. This script downloads that sdist (sha256
pinned), applies ``minkowskiengine-0.5.4.patch`` (``collections.abc`` imports, the removed ``torch._six``
import, and no ``pip uninstall``/``rm -rf build`` side effects in setup.py), builds a wheel CPU-only against
OpenBLAS (``--cuda``: a CUDA build, untested here), checks that a sparse convolution runs forward and backward,
and caches the wheel keyed by the MinkowskiEngine, torch and Python versions and the patch, so later installs
take seconds. It runs as a plain script (``python selfsup_pcd/install/minkowski.py``): it needs torch, not the
package. Any failure ends in one ``MinkowskiEngine build failed: ...`` line naming the cause and the log file,
and a non-zero exit status, so ``make install`` (and CI) fail rather than skip.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VERSION = "0.5.4"
SDIST = f"MinkowskiEngine-{VERSION}.tar.gz"
SDIST_SHA256 = "b1879c00d0b0b1d30ba622cce239886a7e3c78ee9da1064cdfe2f64c2ab15f94"
SDIST_URL = ("https://files.pythonhosted.org/packages/21/5c/c543c4bc5fbe73ac3e38465b3da4f24a61f7a4ac5baec867e582e94"
             f"aa551/{SDIST}")
PATCH = Path(__file__).with_name(f"minkowskiengine-{VERSION}.patch")
BLAS_HINT = "install Debian's libopenblas-dev (build) / libopenblas0 (run): sudo apt-get install libopenblas-dev"

SMOKE_TEST = """
import torch, MinkowskiEngine as ME
coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [1, 2, 2, 2]], dtype=torch.int32)
x = ME.SparseTensor(torch.randn(4, 3, requires_grad=True), coordinates=coords)
conv = ME.MinkowskiConvolution(3, 5, kernel_size=3, dimension=3)
out = conv(x)
out.F.sum().backward()
assert out.F.shape == (4, 5) and conv.kernel.grad is not None and torch.isfinite(conv.kernel.grad).all()
print("MinkowskiEngine", ME.__version__, "ok")
"""


class BuildError(RuntimeError):
    """A step of the build failed; the message is the one line shown to the user."""


def cache_dir() -> Path:
    root = os.environ.get("SELFSUP_PCD_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME")
                                                                 or Path.home() / ".cache", "selfsup_pcd")
    return Path(root) / "minkowskiengine"


def build_key(cuda: bool) -> str:
    """Wheel cache key: a wheel is only reused with the same torch, Python, patch and build kind."""
    import torch

    patch_hash = hashlib.sha256(PATCH.read_bytes()).hexdigest()[:10]
    kind = "cuda" if cuda else "cpu"
    torch_tag = torch.__version__.replace("+", "_")
    return f"{VERSION}-{kind}-torch{torch_tag}-py{sys.version_info.major}{sys.version_info.minor}-{patch_hash}"


def installed_matches(key: str) -> bool:
    """True when the installed MinkowskiEngine came from the wheel with this key and imports."""
    marker = _marker_path()
    if marker is None or not marker.exists() or marker.read_text().strip() != key:
        return False
    return _run([sys.executable, "-c", "import MinkowskiEngine"], check=False).returncode == 0


def _marker_path() -> Path | None:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"]) / "MinkowskiEngine.selfsup_pcd_build"


def _run(cmd: list[str], check: bool = True, log: Path | None = None, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    if log is None:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    else:
        with log.open("a") as fh:
            fh.write(f"\n$ {' '.join(cmd)}\n")
            fh.flush()
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        raise BuildError(f"`{' '.join(cmd[:4])} ...` exited with status {proc.returncode}")
    return proc


def check_prerequisites() -> None:
    """The compiler and OpenBLAS development files, before minutes of compiling."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        raise BuildError("no C++ compiler (g++) found; install Debian's g++")
    if shutil.which("patch") is None:
        raise BuildError("the `patch` program is missing; install Debian's patch")
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    libs = _run([ldconfig, "-p"], check=False).stdout if os.path.exists(ldconfig) else ""
    if "libopenblas.so " not in libs and not any(Path(d).glob("libopenblas.so")
                                                 for d in ("/usr/lib", "/usr/lib/x86_64-linux-gnu",
                                                           "/usr/lib/aarch64-linux-gnu", "/usr/local/lib")):
        raise BuildError(f"OpenBLAS development library (libopenblas.so) not found: {BLAS_HINT}")


def fetch_sdist(dest: Path) -> Path:
    """The sdist from the cache, else from the registry; its sha256 must match the pinned one."""
    path = dest / SDIST
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == SDIST_SHA256:
        return path
    tmp = path.with_name(f"{SDIST}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(os.environ.get("MINKOWSKIENGINE_SDIST_URL", SDIST_URL), timeout=120) as r:
            tmp.write_bytes(r.read())
    except OSError as err:
        raise BuildError(f"could not download {SDIST} ({err}); put the file in {dest} by hand") from err
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        tmp.unlink()
        raise BuildError(f"{SDIST} has sha256 {digest}, expected {SDIST_SHA256}")
    tmp.replace(path)
    return path


def build_wheel(sdist: Path, work: Path, cuda: bool, log: Path) -> Path:
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    src = work / f"MinkowskiEngine-{VERSION}"
    _run(["patch", "-p1", "--forward", "-i", str(PATCH)], log=log, cwd=src)
    env = dict(os.environ)
    env.setdefault("CFLAGS", "-g0")  # 0.5 MB wheel instead of 27 MB, and a faster link
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    flags = ["--force_cuda"] if cuda else ["--cpu_only"]
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(work / "dist"),
           *[f"-C--global-option={f}" for f in (*flags, "--blas=openblas")], str(src)]
    try:
        _run(cmd, log=log, env=env)
    except BuildError as err:
        raise BuildError(f"compiling MinkowskiEngine failed ({err})") from err
    wheels = list((work / "dist").glob("*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one wheel in {work / 'dist'}, found {len(wheels)}")
    return wheels[0]


def install(wheel: Path, key: str, log: Path) -> None:
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--quiet", str(wheel)], log=log)
    proc = _run([sys.executable, "-c", SMOKE_TEST], check=False, log=log)
    if proc.returncode != 0:
        raise BuildError("the installed MinkowskiEngine failed its sparse-convolution check"
                         f" (missing runtime library? {BLAS_HINT})")
    marker = _marker_path()
    if marker is not None:
        marker.write_text(key + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuda", action="store_true", help="build with CUDA (needs nvcc matching torch's CUDA)")
    parser.add_argument("--rebuild", action="store_true", help="ignore the cached wheel")
    args = parser.parse_args(argv)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "build.log"
    try:
        key = build_key(args.cuda)
        if not args.rebuild and installed_matches(key):
            print(f"MinkowskiEngine {VERSION}: installed ({key})")
            return 0
        log.write_text(f"MinkowskiEngine build {key}\n")
        cached = sorted((cache / key).glob("*.whl"))
        if cached and not args.rebuild:
            print(f"MinkowskiEngine {VERSION}: installing the cached wheel {cached[0]}")
            install(cached[0], key, log)
            return 0
        check_prerequisites()
        print(f"MinkowskiEngine {VERSION}: building a {'CUDA' if args.cuda else 'CPU-only'} wheel against torch"
              f" (several minutes; log: {log})", flush=True)
        sdist = fetch_sdist(cache)
        with tempfile.TemporaryDirectory(prefix="minkowski-build-") as tmp:
            wheel = build_wheel(sdist, Path(tmp), args.cuda, log)
            install(wheel, key, log)
            (cache / key).mkdir(exist_ok=True)
            part = cache / key / f".{wheel.name}.{os.getpid()}.part"
            shutil.copy(wheel, part)
            part.replace(cache / key / wheel.name)
        print(f"MinkowskiEngine {VERSION}: built, checked and cached in {cache / key}")
        return 0
    except BuildError as err:
        print(f"MinkowskiEngine build failed: {err}. Log: {log}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
