"""mOSD datamodule on the real shared Kinect files (skipped where ../shared is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from selfsup_pcd.data.errors import DatasetLayoutError
from selfsup_pcd.data.mosd import DEFAULT_TEST, DEFAULT_TRAIN, MOSDDataModule, mosd_labels, read_mosd_scene
from selfsup_pcd.data.pcd import read_pcd
from selfsup_pcd.data.scene_semseg import IGNORE_INDEX

MOSD = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mosd").resolve()


def provenance_rows() -> dict[str, list[str]]:
    """Cells of the file table of PROVENANCE.md: file -> [category, bytes, WxH, valid, label counts]."""
    rows = {}
    for line in (MOSD / "PROVENANCE.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("learn") and cells[0].endswith(".pcd"):
            rows[cells[0].removesuffix(".pcd")] = cells[1:]
    return rows


def label_counts(cell: str) -> dict[int, int]:
    return {int(k): int(v) for k, v in (item.split(":") for item in cell.split(", "))}


@pytest.fixture(scope="module")
def learn() -> Path:
    if not (MOSD / "learn").is_dir():
        pytest.skip(f"mOSD files not found at {MOSD}/learn (shared real-data pack beside the repository)")
    return MOSD / "learn"


def test_label_mapping():
    raw = np.array([0, 1, 2, 9, 10, 19, 20, 21, 31, 150])
    np.testing.assert_array_equal(mosd_labels(raw), [IGNORE_INDEX, 0, 0, 0, IGNORE_INDEX, IGNORE_INDEX, 1, 1, 1, 1])


@pytest.mark.parametrize("name", ["learn0", "learn25"])  # learn25: invalid pixels with x = y = -0.0
def test_scene_keeps_valid_points_with_table_and_object_labels(learn, name):
    row = provenance_rows()[name]
    valid, counts = int(row[3]), label_counts(row[4])
    scene = read_mosd_scene(learn / f"{name}.pcd")
    assert len(scene.xyz) == valid and np.isfinite(scene.xyz).all()
    table = sum(c for k, c in counts.items() if 1 <= k <= 9)
    objects = sum(c for k, c in counts.items() if k >= 20)
    assert (scene.labels == 0).sum() == table and (scene.labels == 1).sum() == objects
    assert not (scene.labels == IGNORE_INDEX).any()  # label 0 is exactly the invalid points
    # z-up frame: (x, z, -y) of the camera's valid points
    cloud = read_pcd(learn / f"{name}.pcd")
    ok = np.isfinite(cloud["z"])
    np.testing.assert_array_equal(scene.xyz, np.stack([cloud["x"][ok], cloud["z"][ok], -cloud["y"][ok]], 1))
    assert scene.rgb.min() >= 0 and scene.rgb.max() <= 1 and scene.rgb.std() > 0.01


def test_default_split_is_nine_train_three_test_one_per_category(learn):
    rows = provenance_rows()
    assert sorted(DEFAULT_TRAIN + DEFAULT_TEST) == sorted(rows) == sorted(p.stem for p in learn.glob("*.pcd"))
    assert len(DEFAULT_TRAIN) == 9 and not set(DEFAULT_TRAIN) & set(DEFAULT_TEST)
    assert len({rows[n][0] for n in DEFAULT_TEST}) == 3  # three different OSD categories


def test_blocks_cover_every_test_point_and_train_blocks_are_half_metre(learn):
    dm = MOSDDataModule(learn, train_scenes=["learn0"], test_scenes=["learn12"], max_points=20000, num_points=1024,
                        batch_size=4, eval_batch_size=16)
    assert dm.num_classes == 2 and dm.block_size == 0.5
    labels = dm.room_labels("test")[0]
    assert len(labels) == 20000 and set(np.unique(labels).tolist()) == {0, 1}
    seen = np.zeros(len(labels), dtype=bool)
    for batch in dm.test_dataloader():
        idx = batch["point_index"].numpy()
        seen[idx] = True
        np.testing.assert_array_equal(batch["labels"].numpy(), labels[idx])
    assert seen.all()
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape == (4, 1024, 9)
    assert np.abs(batch["points"][:, :, :2].numpy()).max() <= 0.25 + 1e-5


def test_voxels_of_a_scene(learn):
    dm = MOSDDataModule(learn, train_scenes=["learn0"], test_scenes=["learn43"], mode="voxels", batch_size=1)
    assert dm.voxel_size == 0.02
    batch = next(iter(dm.test_dataloader()))
    labels = dm.room_labels("test")[0]
    inverse = batch["inverse"].numpy()
    assert len(inverse) == len(labels) and len(batch["coords"]) < len(labels) / 2  # 2 cm voxels merge points
    assert (batch["labels"].numpy()[inverse] == labels).mean() > 0.95
    assert batch["feats"].shape == (len(batch["coords"]), 3)


def test_missing_file_and_overlapping_splits(learn, tmp_path):
    with pytest.raises(DatasetLayoutError, match="learn99.pcd"):
        MOSDDataModule(learn, train_scenes=["learn99"]).scenes("train")
    with pytest.raises(ValueError, match="both train and test"):
        MOSDDataModule(learn, train_scenes=["learn0"], test_scenes=["learn0"])
