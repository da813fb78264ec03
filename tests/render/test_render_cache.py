"""Render cache: the CLI builds, survives SIGKILL and resumes to the same bytes; settings are checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from _cli import ROOT, cli_env

from selfsup_pcd.data.synthetic import ProceduralShapesDataset
from selfsup_pcd.render.cache import RenderCacheError, RenderSettings, build, open_cache, read_shape
from selfsup_pcd.render.correspondences import correspondences


def render_command(tmp: Path, out: Path, per_class: int) -> list[str]:
    return [sys.executable, "-m", "selfsup_pcd.render", f"paths.log_dir={tmp / 'logs'}", f"render.out_dir={out}",
            f"data.train_per_class={per_class}", "data.test_per_class=1", "render.splits=[train]",
            "render.workers=2", "render.resolution=32", "render.num_views=12"]


def run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, cwd=ROOT, env=cli_env(), stdout=handle, stderr=subprocess.STDOUT, timeout=900)
    assert proc.returncode == 0, log.read_text()[-4000:]


def done_count(path: Path) -> int | None:
    """Finished shapes in a file being written by another process (None while unreadable)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f["done"][:].sum())
    except (OSError, KeyError, ValueError, RuntimeError):
        return None


def assert_same_content(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa) == sorted(fb)
        for name in fa:
            assert np.array_equal(fa[name][()], fb[name][()]), f"dataset {name} differs"
        for key in ("fingerprint", "config", "complete", "format_version"):
            assert fa.attrs[key] == fb.attrs[key], key


def kill_resume_and_compare(tmp_path: Path, per_class: int) -> None:
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run(render_command(tmp_path, straight, per_class), tmp_path / "straight.log")
    total = 12 * per_class

    partial = interrupted / "train.partial.h5"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(render_command(tmp_path, interrupted, per_class), cwd=ROOT, env=cli_env(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            seen = None
            while time.monotonic() < deadline and proc.poll() is None:
                seen = done_count(partial) if partial.exists() else None
                if seen is not None and 3 <= seen < total:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, f"the build ended before it could be killed (done: {seen})"
            os.killpg(proc.pid, signal.SIGKILL)  # the entry point and its render workers
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert partial.exists() and not (interrupted / "train.h5").exists()
    left = done_count(partial)
    assert left is not None and 0 < left < total, left

    run(render_command(tmp_path, interrupted, per_class), tmp_path / "resumed.log")
    assert not partial.exists()
    assert "resuming" in (tmp_path / "resumed.log").read_text()
    assert_same_content(straight / "train.h5", interrupted / "train.h5")
    assert (interrupted / "contact_sheet_train.png").stat().st_size > 1000


def test_killed_build_resumes_to_identical_file(tmp_path):
    """The fast variant: 36 shapes (about 20 s on 2 cores)."""
    kill_resume_and_compare(tmp_path, per_class=3)


@pytest.mark.slow
def test_killed_build_of_200_shapes_resumes_to_identical_file(tmp_path):
    """204 shapes x 12 views of 32x32: 45-75 s on 2 cores (three CLI runs)."""
    kill_resume_and_compare(tmp_path, per_class=17)


# -- API-level checks (in-process rendering, tiny data) ------------------------------------------------
SETTINGS = RenderSettings(num_views=4, resolution=24)


@pytest.fixture(scope="module")
def shapes():
    return ProceduralShapesDataset("train", shapes_per_class=1, num_points=256, seed=3)


class PointsOnly:
    """A dataset without meshes (like the ModelNet40 point-cloud releases)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]


class FailsAt:
    """Raises on one shape: a build that stops part-way."""

    def __init__(self, dataset, index):
        self.dataset, self.index = dataset, index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        if i == self.index:
            raise RuntimeError("simulated failure")
        return self.dataset[i]

    def mesh(self, i):
        return self.dataset.mesh(i)


def test_file_layout_and_pairs_are_reproducible_from_the_file(tmp_path, shapes):
    path = build(shapes, tmp_path, "train", SETTINGS, source={"name": "procedural"}, progress=False)
    with open_cache(path) as f:
        assert f["views"].shape == (12, 4, 24, 24, 3) and f["views"].dtype == np.uint8
        assert f["depth"].shape == (12, 4, 24, 24) and f["depth"].dtype == np.float16
        assert f["K"].shape == (12, 4, 3, 3) and f["world_to_cam"].shape == (12, 4, 4, 4)
        assert f["points"].shape == (12, 256, 3) and f["label"][:].tolist() == list(range(12))
        assert f["done"][:].all() and f["pairs_offset"][-1] == len(f["pairs"])
        config = json.loads(f.attrs["config"])
        assert config["render"]["resolution"] == 24 and config["source"]["name"] == "procedural"
        shape = read_shape(f, 5)
    np.testing.assert_array_equal(shape["points"], shapes[5]["points"].numpy())
    tolerance = SETTINGS.vis_tolerance * 2 * np.linalg.norm(shape["points"] - shape["points"].mean(0), axis=1).max()
    again = correspondences(shape["points"], shape["depth"].astype(np.float32), shape["K"], shape["world_to_cam"],
                            tolerance)
    np.testing.assert_array_equal(again, shape["pairs"])
    assert len(shape["pairs"]) > 100


def test_stopped_build_resumes_and_truncates_stale_pairs(tmp_path, shapes):
    reference = build(shapes, tmp_path / "a", "train", SETTINGS, progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        build(FailsAt(shapes, 7), tmp_path / "b", "train", SETTINGS, progress=False)
    partial = tmp_path / "b" / "train.partial.h5"
    with h5py.File(partial, "r+") as f:
        assert f["done"][:].sum() == 7
        # as if killed after shape 7's pairs were appended but before it was marked done
        end = len(f["pairs"])
        f["pairs"].resize(end + 50, axis=0)
        f["pairs"][end:] = 99
    resumed = build(shapes, tmp_path / "b", "train", SETTINGS, progress=False)
    assert_same_content(reference, resumed)


def test_finished_cache_is_reused_and_other_settings_are_refused(tmp_path, shapes, caplog):
    path = build(shapes, tmp_path, "train", SETTINGS, progress=False)
    stamp = path.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="selfsup_pcd.render.cache"):
        assert build(shapes, tmp_path, "train", SETTINGS, progress=False) == path
    assert path.stat().st_mtime_ns == stamp and "up to date" in caplog.text
    other = RenderSettings(num_views=4, resolution=24, elevation_deg=10.0)
    with pytest.raises(RenderCacheError, match="render.overwrite=true"):
        build(shapes, tmp_path, "train", other, progress=False)
    build(shapes, tmp_path, "train", other, overwrite=True, progress=False)
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["config"])["render"]["elevation_deg"] == 10.0


def test_point_cloud_datasets_render_splats(tmp_path, shapes):
    path = build(PointsOnly(shapes), tmp_path, "train", SETTINGS, progress=False)
    with open_cache(path) as f:
        depth, pairs = f["depth"][0], read_shape(f, 0)["pairs"]
    assert (depth > 0).mean() > 0.05 and len(pairs) > 100


def test_unreadable_partial_file_is_started_over(tmp_path, shapes, caplog):
    (tmp_path / "train.partial.h5").write_bytes(b"not hdf5")
    with caplog.at_level("WARNING", logger="selfsup_pcd.render.cache"):
        path = build(shapes, tmp_path, "train", SETTINGS, progress=False)
    assert "starting it over" in caplog.text and path.is_file()
