"""Fixtures of the synthetic-dataset tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def renderer() -> None:
    """Skips the test, saying why, when the offscreen renderer (``selfsup_pcd.render``) cannot be used here."""
    try:
        import selfsup_pcd.render.renderer  # noqa: F401
        from selfsup_pcd.render.backend import import_pyrender

        import_pyrender()
    except Exception as err:  # ImportError (module or pyrender missing) or no OpenGL back end
        pytest.skip(f"selfsup_pcd.render.renderer is not usable here: {type(err).__name__}: {err}")
