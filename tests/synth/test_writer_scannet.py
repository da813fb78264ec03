"""ScanNet writers: frames (25k layout) and scans (PLY meshes + segmentation + aggregation) read back exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from selfsup_pcd.data.synthetic.scenes import SCENE_CLASSES, Scene, make_scene
from selfsup_pcd.data.synthetic.sequences import camera_trajectory
from selfsup_pcd.data.writers import scannet_frames
from selfsup_pcd.data.writers.ply import read_ply, write_ply
from selfsup_pcd.data.writers.scannet_frames import frame_name, read_depth_png, write_scannet_frames
from selfsup_pcd.data.writers.scannet_scenes import (
    NYU40_NAMES,
    SCANNET_CLASS_MAP,
    nyu40_ids,
    scene_to_scannet,
    write_scannet_scene,
)

FRAMES, H, W = 3, 48, 64


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene(2)


def frame_arrays(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    color = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=-1).astype(np.uint8)
    color = np.repeat(color[None], FRAMES, axis=0)
    depth = rng.integers(0, 65536, size=(FRAMES, H, W)).astype(np.uint16)
    depth[:, 0, 0], depth[:, 0, 1] = 0, 65535
    K = np.array([[57.123456, 0, 31.5], [0, 57.654321, 23.5], [0, 0, 1]])
    return color, depth, camera_trajectory(scene, FRAMES, seed=0), K


def test_scannet_frames_layout_and_values(tmp_path: Path, scene: Scene) -> None:
    color, depth, poses, K = frame_arrays(scene)
    folder = write_scannet_frames(tmp_path, "scene0002_00", color, depth, poses, K)
    assert folder == tmp_path / "scannet_frames_25k" / "scene0002_00"
    names = ["000000", "000100", "000200"]
    assert [frame_name(i) for i in range(FRAMES)] == names
    assert sorted(p.name for p in folder.iterdir()) == ["color", "depth", "intrinsics_color.txt",
                                                        "intrinsics_depth.txt", "pose"]
    assert sorted(p.name for p in (folder / "depth").iterdir()) == [f"{n}.png" for n in names]
    assert sorted(p.name for p in (folder / "color").iterdir()) == [f"{n}.jpg" for n in names]
    assert sorted(p.name for p in (folder / "pose").iterdir()) == [f"{n}.txt" for n in names]
    for i, name in enumerate(names):
        with Image.open(folder / "depth" / f"{name}.png") as png:
            assert png.format == "PNG" and png.mode == "I;16"
            np.testing.assert_array_equal(np.array(png), depth[i])  # 16-bit round trip is exact
        np.testing.assert_array_equal(read_depth_png(folder / "depth" / f"{name}.png"), depth[i])
        with Image.open(folder / "color" / f"{name}.jpg") as jpg:
            assert jpg.format == "JPEG" and jpg.size == (W, H)
            assert np.abs(np.array(jpg).astype(int) - color[i]).mean() < 3
        pose_rows = (folder / "pose" / f"{name}.txt").read_text().strip().split("\n")
        assert len(pose_rows) == 4 and all(len(r.split(" ")) == 4 for r in pose_rows)
        np.testing.assert_allclose(np.loadtxt(folder / "pose" / f"{name}.txt"), poses[i], atol=1e-6)
    for which in ("depth", "color"):
        intr = np.loadtxt(folder / f"intrinsics_{which}.txt")
        assert intr.shape == (4, 4)
        np.testing.assert_allclose([intr[0, 0], intr[1, 1], intr[0, 2], intr[1, 2]], [K[0, 0], K[1, 1], 31.5, 23.5],
                                   atol=1e-6)
        np.testing.assert_array_equal(intr[2:], [[0, 0, 1, 0], [0, 0, 0, 1]])


def test_scannet_frames_rejects_bad_input_and_is_atomic(tmp_path: Path, scene: Scene, monkeypatch) -> None:
    color, depth, poses, K = frame_arrays(scene)
    with pytest.raises(ValueError, match="uint16"):
        write_scannet_frames(tmp_path, "s", color, depth.astype(np.int32), poses, K)
    with pytest.raises(ValueError, match="F frames"):
        write_scannet_frames(tmp_path, "s", color, depth, poses[:2], K)
    write_scannet_frames(tmp_path, "s", color, depth, poses, K)  # a complete earlier version

    calls = []

    def failing(path, frame):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        original(path, frame)

    original = scannet_frames.write_depth_png
    monkeypatch.setattr(scannet_frames, "write_depth_png", failing)
    with pytest.raises(OSError, match="disk full"):
        write_scannet_frames(tmp_path, "s", color, 65535 - depth, poses, K)
    root = tmp_path / "scannet_frames_25k"
    assert sorted(p.name for p in root.iterdir()) == ["s"]  # no temporary folder left behind
    np.testing.assert_array_equal(read_depth_png(root / "s" / "depth" / "000100.png"), depth[1])  # old one intact


def test_ply_round_trip_and_header(tmp_path: Path) -> None:
    records = np.zeros(4, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("label", "<u2")])
    records["x"], records["label"] = [0.5, 1, 2, 3], [1, 40, 7, 65535]
    faces = np.array([[0, 1, 2], [1, 2, 3]])
    write_ply(tmp_path / "a.ply", records, faces)
    back, back_faces = read_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(back, records)
    np.testing.assert_array_equal(back_faces, faces)
    with pytest.raises(ValueError, match="out of range"):
        write_ply(tmp_path / "b.ply", records, faces + 2)


HEADER = re.compile(rb"^ply\nformat binary_little_endian 1.0\n(?:comment [^\n]*\n)*element vertex (\d+)\n"
                    rb"property float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
                    rb"property uchar blue\nproperty uchar alpha\n(property ushort label\n)?element face (\d+)\n"
                    rb"property list uchar int vertex_indices\nend_header\n")


def test_scannet_scene_files(tmp_path: Path, scene: Scene) -> None:
    mesh = scene_to_scannet(scene)
    folder = write_scannet_scene(tmp_path, "scene0002_00", mesh)
    assert folder == tmp_path / "scans" / "scene0002_00"
    assert sorted(p.name for p in folder.iterdir()) == sorted([
        "scene0002_00_vh_clean_2.ply", "scene0002_00_vh_clean_2.labels.ply", "scene0002_00.aggregation.json",
        "scene0002_00_vh_clean_2.0.010000.segs.json", "scene0002_00.txt"])
    V, F = len(scene.mesh.vertices), len(scene.mesh.faces)

    for name, labelled in (("scene0002_00_vh_clean_2.ply", False), ("scene0002_00_vh_clean_2.labels.ply", True)):
        raw = (folder / name).read_bytes()
        match = HEADER.match(raw)
        assert match is not None, raw[:400]
        assert (int(match[1]), bool(match[2]), int(match[3])) == (V, labelled, F)
        assert len(raw) == match.end() + V * (16 + 2 * labelled) + F * 13
        vertices, faces = read_ply(folder / name)
        xyz = np.stack([vertices["x"], vertices["y"], vertices["z"]], axis=1)
        np.testing.assert_array_equal(xyz, scene.mesh.vertices.astype(np.float32))
        np.testing.assert_array_equal(faces, scene.mesh.faces)
        if labelled:
            np.testing.assert_array_equal(vertices["label"], nyu40_ids(scene.vertex_semantic))
        else:
            rgba = np.stack([vertices[c] for c in ("red", "green", "blue", "alpha")], axis=1)
            np.testing.assert_array_equal(rgba, scene.mesh.visual.vertex_colors)
        # an independent reader agrees
        loaded = trimesh.load(folder / name, process=False)
        np.testing.assert_allclose(loaded.vertices, xyz, atol=0)
        np.testing.assert_array_equal(loaded.faces, scene.mesh.faces)

    segs = json.loads((folder / "scene0002_00_vh_clean_2.0.010000.segs.json").read_text())
    assert set(segs) == {"params", "sceneId", "segIndices"} and segs["sceneId"] == "scene0002_00"
    seg_indices = np.array(segs["segIndices"])
    assert seg_indices.shape == (V,)
    agg = json.loads((folder / "scene0002_00.aggregation.json").read_text())
    assert set(agg) == {"sceneId", "appId", "segGroups", "segmentsFile"}
    assert agg["segmentsFile"].endswith("scene0002_00_vh_clean_2.0.010000.segs.json")

    # VoteNet's reading: vertices of a group's segments get its label (raw -> NYU40) and instance objectId + 1
    raw_to_nyu = {raw: nyu for nyu, raw in SCANNET_CLASS_MAP.values()}
    labels, instances = np.zeros(V, np.int64), np.zeros(V, np.int64)
    owner: dict[int, int] = {}
    for group in agg["segGroups"]:
        assert set(group) == {"id", "objectId", "segments", "label"}
        for seg in group["segments"]:
            assert seg not in owner  # each segment in one group
            owner[seg] = group["objectId"]
            mask = seg_indices == seg
            labels[mask], instances[mask] = raw_to_nyu[group["label"]], group["objectId"] + 1
    assert set(owner) == set(seg_indices.tolist())
    np.testing.assert_array_equal(labels, nyu40_ids(scene.vertex_semantic))
    # instances reproduce our parts (walls separately) and each object is one instance
    for obj in scene.objects:
        ids = np.unique(instances[scene.vertex_instance == obj.instance_id])
        assert len(ids) == 1 and np.all(scene.vertex_instance[instances == ids[0]] == obj.instance_id)
    assert len(agg["segGroups"]) == 6 + len(scene.objects)

    meta = (folder / "scene0002_00.txt").read_text()
    line = next(x for x in meta.splitlines() if x.startswith("axisAlignment"))
    np.testing.assert_array_equal(np.array(line.split("=")[1].split(), float).reshape(4, 4), np.eye(4))


def test_class_map_covers_all_classes_with_nyu40_names() -> None:
    assert set(SCANNET_CLASS_MAP) == set(SCENE_CLASSES)
    for ours, (nyu, _) in SCANNET_CLASS_MAP.items():
        assert 1 <= nyu <= 40
        assert NYU40_NAMES[nyu - 1].replace(" ", "_") == ours
