"""S3DIS writer: room file and per-object annotation files read back to the source points."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from selfsup_pcd.data.synthetic.scenes import SCENE_CLASSES, make_scene, sample_scene
from selfsup_pcd.data.writers.s3dis import S3DIS_CLASSES, s3dis_labels, write_s3dis_room


def rows(path: Path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2)


def test_s3dis_room_layout_and_values(tmp_path: Path) -> None:
    scene = make_scene(5)
    points = sample_scene(scene, 6000, seed=0)
    labels = s3dis_labels(points.semantic)
    folder = write_s3dis_room(tmp_path, 3, "conferenceRoom_2", points.xyz, points.rgb, labels, points.part)
    assert folder == tmp_path / "Stanford3dDataset_v1.2_Aligned_Version" / "Area_3" / "conferenceRoom_2"
    assert sorted(p.name for p in folder.iterdir()) == ["Annotations", "conferenceRoom_2.txt"]

    text = (folder / "conferenceRoom_2.txt").read_text().splitlines()
    assert re.fullmatch(r"-?\d+\.\d{6} -?\d+\.\d{6} -?\d+\.\d{6} \d{1,3} \d{1,3} \d{1,3}", text[0])
    room = rows(folder / "conferenceRoom_2.txt")
    assert room.shape == (6000, 6)
    np.testing.assert_allclose(room[:, :3], points.xyz, atol=5e-7)
    np.testing.assert_array_equal(room[:, 3:], points.rgb)

    annotations = sorted((folder / "Annotations").iterdir())
    pattern = re.compile(rf"^({'|'.join(S3DIS_CLASSES)})_(\d+)\.txt$")
    per_class: dict[str, list[int]] = {}
    gathered = []
    index_of = {tuple(np.round(r[:3], 6)): k for k, r in enumerate(room)}
    for path in annotations:
        match = pattern.match(path.name)
        assert match, path.name
        per_class.setdefault(match[1], []).append(int(match[2]))
        obj = rows(path)
        gathered.append(obj)
        # every point of the file comes from one part, with the class of the file name
        idx = np.array([index_of[tuple(np.round(r[:3], 6))] for r in obj])
        np.testing.assert_array_equal(room[idx], obj)
        assert {S3DIS_CLASSES[k] for k in labels[idx]} == {match[1]}
        assert len(np.unique(points.part[idx])) == 1
    for numbers in per_class.values():
        assert sorted(numbers) == list(range(1, len(numbers) + 1))
    assert len(per_class["wall"]) == 4 and per_class["floor"] == [1] and per_class["ceiling"] == [1]
    assert len(annotations) == len(np.unique(points.part))
    union = np.concatenate(gathered)  # the annotations partition the room
    assert len(union) == len(room)
    np.testing.assert_array_equal(np.unique(union, axis=0), np.unique(room, axis=0))


def test_s3dis_class_mapping() -> None:
    labels = s3dis_labels(np.arange(len(SCENE_CLASSES)))
    named = {ours: S3DIS_CLASSES[k] for ours, k in zip(SCENE_CLASSES, labels)}
    assert named["floor"] == "floor" and named["wall"] == "wall" and named["ceiling"] == "ceiling"
    assert named["desk"] == "table" and named["bookshelf"] == "bookcase" and named["bed"] == "clutter"


def test_s3dis_rejects_bad_labels(tmp_path: Path) -> None:
    xyz, rgb = np.zeros((2, 3)), np.zeros((2, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="13 S3DIS classes"):
        write_s3dis_room(tmp_path, 1, "office_1", xyz, rgb, np.array([0, 13]), np.zeros(2))
    assert not (tmp_path / "Stanford3dDataset_v1.2_Aligned_Version" / "Area_1" / "office_1").exists()
