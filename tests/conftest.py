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
