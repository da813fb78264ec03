"""S3DIS from the raw release layout (written by writers/s3dis.py): splits, parsing, repairs, cache, batches."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

import selfsup_pcd.data.s3dis as s3dis
from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.s3dis import DataRepairWarning, S3DISDataModule, read_points_txt
from selfsup_pcd.data.scene_semseg import IGNORE_INDEX
from selfsup_pcd.data.synthetic.scenes import make_scene, sample_scene
from selfsup_pcd.data.writers.s3dis import FOLDER, S3DIS_CLASSES, s3dis_labels, write_s3dis_room

# rooms per area of the toy release
ROOMS = {1: ["office_1", "hallway_1"], 2: ["office_1", "WC_1"], 3: ["lounge_1"], 4: ["office_2"],
         5: ["office_19", "storage_1"], 6: ["pantry_1"]}


def small_room(seed: int, n: int = 300) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(0, [3, 2, 2.5], (n, 3)) + rng.uniform(-10, 10, 3)
    rgb = rng.integers(0, 256, (n, 3))
    labels = rng.integers(0, len(S3DIS_CLASSES), n)
    instance = rng.integers(0, 2, n)
    return xyz, rgb, labels, instance


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict[str, tuple[np.ndarray, ...]]]:
    root = tmp_path_factory.mktemp("s3dis")
    written = {}
    for area, rooms in ROOMS.items():
        for k, room in enumerate(rooms):
            arrays = small_room(10 * area + k)
            write_s3dis_room(root, area, room, *arrays)
            written[f"Area_{area}_{room}"] = arrays
    return root, written


def datamodule(root: Path, tmp_path: Path, **kwargs) -> S3DISDataModule:
    kwargs.setdefault("cache_dir", tmp_path / "cache")
    return S3DISDataModule(root, **kwargs)


@pytest.mark.parametrize("test_area", [5, 2])
def test_area_splits(release, tmp_path, test_area):
    root, _ = release
    dm = datamodule(root, tmp_path, test_area=test_area, num_points=64)
    expected_train = [f"Area_{a}_{r}" for a in sorted(ROOMS) if a != test_area for r in sorted(ROOMS[a])]
    assert dm.room_names("train") == expected_train
    assert dm.room_names("test") == [f"Area_{test_area}_{r}" for r in sorted(ROOMS[test_area])]
    assert dm.room_names("val") == dm.room_names("test")  # no val split: validation on the test area
    assert dm.num_classes == 13


def test_val_area_and_train_areas(release, tmp_path):
    root, _ = release
    dm = datamodule(root, tmp_path, test_area=5, val_area=3)
    assert dm.val_split == "val" and dm.room_names("val") == ["Area_3_lounge_1"]
    assert not any(n.startswith(("Area_3", "Area_5")) for n in dm.room_names("train"))
    dm = datamodule(root, tmp_path, test_area=5, train_areas=[1, 6])
    assert dm.room_names("train") == ["Area_1_hallway_1", "Area_1_office_1", "Area_6_pantry_1"]
    with pytest.raises(ValueError, match="train_areas"):
        datamodule(root, tmp_path, test_area=5, train_areas=[5])
    with pytest.raises(ValueError, match="no validation split"):
        datamodule(root, tmp_path, val_split="val")


def test_rooms_hold_the_annotated_points_with_their_labels(release, tmp_path):
    root, written = release
    dm = datamodule(root, tmp_path)
    for scene in dm.scenes("test"):
        xyz, rgb, labels, _ = written[scene.name]
        assert scene.xyz.dtype == np.float32 and scene.rgb.dtype == np.float32 and scene.labels.dtype == np.int64
        assert scene.rgb.min() >= 0 and scene.rgb.max() <= 1
        got = np.concatenate([np.round(scene.xyz, 3), np.round(scene.rgb * 255), scene.labels[:, None]], 1)
        want = np.concatenate([np.round(xyz, 3), rgb, labels[:, None]], 1)
        order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
        np.testing.assert_allclose(order(got), order(want), atol=2e-3)


def test_release_folder_can_be_the_root_and_missing_area_is_a_layout_error(release, tmp_path):
    root, _ = release
    assert datamodule(root / FOLDER, tmp_path).room_names("test")[0].startswith("Area_5")
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(DatasetLayoutError, match="Expected layout"):
        datamodule(empty, tmp_path).room_names("test")


def copy_room(release_root: Path, dest: Path, area: int, room: str) -> Path:
    """A one-area release holding a copy of one room (tests that damage files work on copies)."""
    src = release_root / FOLDER / f"Area_{area}" / room
    out = dest / FOLDER / f"Area_{area}" / room / "Annotations"
    out.mkdir(parents=True)
    for f in (src / "Annotations").iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


def test_control_character_in_a_number_is_repaired_with_a_warning(release, tmp_path):
    root, _ = release
    ann = copy_room(root, tmp_path / "copy", 5, "office_19")
    path = ann / "ceiling_1.txt"
    if not path.exists():  # the toy room may lack a ceiling: make one
        path.write_text("1.000000 2.000000 3.000000 10 20 30\n" * 4)
    lines = path.read_bytes().split(b"\n")
    line = min(3, len(lines) - 2)  # 0-based index of the damaged line
    x, rest = lines[line].split(b" ", 1)
    whole, frac = x.split(b".")
    lines[line] = whole + b"." + frac[:1] + b"\x10" + frac[1:] + b" " + rest  # e.g. "103.0\x100000"
    path.write_bytes(b"\n".join(lines))
    with pytest.warns(DataRepairWarning) as record:
        rows = read_points_txt(path)
    message = str(record[0].message)
    assert f"{path}:{line + 1}:" in message and "\\x10" in message and repr(x.decode()) in message
    assert rows[line, 0] == float(x)
    # through the datamodule: the room is cached with the repaired value
    dm = S3DISDataModule(tmp_path / "copy", test_area=5, cache_dir=tmp_path / "cache")
    with pytest.warns(DataRepairWarning, match="ceiling_1.txt"):
        scene = dm.load_scenes("test")[0]
    assert np.isclose(scene.xyz, np.float32(float(x)), atol=1e-6).any()


@pytest.mark.parametrize("bad_line,message", [
    (b"1.0 2.0 3.0 4 5", "line has 5 values, expected 6"),
    (b"1.0 2.0 3.0 4 5 6 7", "line has 7 values"),
    (b"1.0 abc 3.0 4 5 6", "is not a number"),
    (b"1.0 nan 3.0 4 5 6", "non-finite"),
    (b"1.0 2.0 3.0 4 5 300", "colour outside 0-255"),
])
def test_bad_lines_raise_naming_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "chair_1.txt"
    path.write_bytes(b"0.5 0.5 0.5 1 2 3\n" * 4 + bad_line + b"\n" + b"0.5 0.5 0.5 1 2 3\n")
    with pytest.raises(DataFormatError, match=message) as err:
        read_points_txt(path)
    assert err.value.path == path and err.value.line == 5 and f"{path}:5" in str(err.value)


@pytest.mark.parametrize("mode,expected", [("clutter", S3DIS_CLASSES.index("clutter")), ("ignore", IGNORE_INDEX)])
def test_unknown_classes_become_clutter_or_ignored_and_are_counted(release, tmp_path, caplog, mode, expected):
    root, _ = release
    ann = copy_room(root, tmp_path / "copy", 5, "storage_1")
    (ann / "stairs_1.txt").write_text("0.1 0.2 40.0 1 2 3\n0.2 0.2 40.0 1 2 3\n")  # above the room
    (ann / "stairs_2.txt").write_text("0.3 0.2 40.0 1 2 3\n")
    dm = S3DISDataModule(tmp_path / "copy", test_area=5, unknown_classes=mode, cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="selfsup_pcd.data.s3dis"):
        scene = dm.load_scenes("test")[0]
    stairs = scene.xyz[:, 2] == 40.0
    assert stairs.sum() == 3 and (scene.labels[stairs] == expected).all()
    assert "2 annotation files of classes outside the 13 (stairs: 2)" in caplog.text


def test_cache_is_reused_and_rebuilt_when_a_file_changes(release, tmp_path, monkeypatch):
    root, _ = release
    ann = copy_room(root, tmp_path / "copy", 5, "office_19")
    first = S3DISDataModule(tmp_path / "copy", test_area=5, cache_dir=tmp_path / "cache").load_scenes("test")[0]

    def refuse(*args, **kwargs):
        raise AssertionError("re-parsed a cached room")

    monkeypatch.setattr(s3dis, "parse_room", refuse)
    again = S3DISDataModule(tmp_path / "copy", test_area=5, cache_dir=tmp_path / "cache").load_scenes("test")[0]
    np.testing.assert_array_equal(np.asarray(first.xyz), np.asarray(again.xyz))
    assert isinstance(again.xyz, np.memmap)
    # a changed annotation file invalidates the room
    victim = sorted(ann.iterdir())[0]
    victim.write_text(victim.read_text() + "0.0 0.0 0.0 0 0 0\n")
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="re-parsed"):
        S3DISDataModule(tmp_path / "copy", test_area=5, cache_dir=tmp_path / "cache").load_scenes("test")
    monkeypatch.undo()
    rebuilt = S3DISDataModule(tmp_path / "copy", test_area=5, cache_dir=tmp_path / "cache").load_scenes("test")[0]
    assert len(rebuilt.xyz) == len(first.xyz) + 1


@pytest.fixture(scope="module")
def procedural_release(tmp_path_factory) -> Path:
    """Two procedural rooms (areas 1 and 5) in the S3DIS layout."""
    root = tmp_path_factory.mktemp("s3dis_proc")
    for area, seed in ((1, 0), (5, 1)):
        points = sample_scene(make_scene(seed), 20000, seed)
        write_s3dis_room(root, area, "office_1", points.xyz, points.rgb, s3dis_labels(points.semantic),
                         points.instance)
    return root


def test_block_batches_of_a_procedural_room(procedural_release, tmp_path):
    dm = S3DISDataModule(procedural_release, test_area=5, cache_dir=tmp_path / "cache", batch_size=4,
                         eval_batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape == (4, 4096, 9) and batch["labels"].shape == (4, 4096)
    points = batch["points"].numpy()
    assert np.abs(points[:, :, :2]).max() <= 0.5 + 1e-5  # block-centred 1 m blocks
    assert points[:, :, 2].min() >= 0 and points[:, :, 6:].max() <= 1 + 1e-6
    assert batch["labels"].max() < 13 and batch["labels"].min() >= 0
    # evaluation blocks cover every point of the test room
    labels = dm.room_labels("test")
    seen = np.zeros(len(labels[0]), dtype=bool)
    for batch in dm.test_dataloader():
        seen[batch["point_index"].numpy().ravel()] = True
        np.testing.assert_array_equal(batch["labels"].numpy(), labels[0][batch["point_index"].numpy()])
    assert seen.all()


def test_voxel_batches_of_a_procedural_room(procedural_release, tmp_path):
    dm = S3DISDataModule(procedural_release, test_area=5, cache_dir=tmp_path / "cache", mode="voxels",
                         voxel_size=0.05, batch_size=1)
    batch = next(iter(dm.test_dataloader()))
    labels = dm.room_labels("test")[0]
    np.testing.assert_array_equal(batch["point_labels"].numpy(), labels)
    voxel_of_point = batch["labels"][batch["inverse"]].numpy()
    # majority labels: most points carry their voxel's label; every voxel label is a label of its points
    assert (voxel_of_point == labels).mean() > 0.9
    for v in np.unique(batch["inverse"].numpy())[:200]:
        assert batch["labels"][v].item() in labels[batch["inverse"].numpy() == v]
    train = next(iter(dm.train_dataloader()))
    assert train["coords"].shape[1] == 4 and len(train["inverse"]) == len(dm.room_labels("train")[0])
