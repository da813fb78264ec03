"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """``shared/data`` beside the repository root: small real-data packs (not part of the repo)."""
    return (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; tests that need it are skipped where it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared real-data packs not found at {path} (expected beside the repository root)")
    return path


@pytest.fixture()
def mosd_root(shared_data: Path) -> Path:
    """The 12 real mOSD scans of the shared data packs (skipped where absent)."""
    root = shared_data / "mosd" / "learn"
    if not root.is_dir():
        pytest.skip(f"mOSD scans not found at {root} (shared/data/mosd/learn)")
    return root


@pytest.fixture()
def one_thread():
    """One torch thread for tests of tiny clouds and FPS's many small ops: on a shared CPU, extra intra-op threads
    only wait. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
