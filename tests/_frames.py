"""Rendered RGB-D sequences of procedural rooms written in ScanNet's frames layout, for the frame tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfsup_pcd.data.synthetic.sequences import Sequence


def write_rendered_frames(root: Path, frames: int, width: int, height: int, scene_seed: int = 3,
                          name: str = "scene0000_00") -> Sequence:
    """Renders ``frames`` frames of procedural room ``scene_seed`` into ``root`` (skips the test without an
    OpenGL back end) and returns the sequence."""
    from selfsup_pcd.data.synthetic.scenes import make_scene
    from selfsup_pcd.data.synthetic.sequences import make_sequence
    from selfsup_pcd.data.writers.scannet_frames import write_scannet_frames
    from selfsup_pcd.render.backend import import_pyrender

    try:
        import_pyrender()
    except Exception as err:  # no OpenGL back end here
        pytest.skip(f"renderer not usable: {type(err).__name__}: {err}")
    seq = make_sequence(make_scene(scene_seed), frames, width=width, height=height, fov_deg=60, seed=0)
    write_scannet_frames(root, name, seq.color, seq.depth_mm, seq.poses, seq.K)
    return seq
