"""ScanNet v2 semantic segmentation: NYU40 -> 20 classes, PLY reading, split lists, errors, per-scene cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup_pcd.data import scannet_semseg
from selfsup_pcd.data.errors import DatasetLayoutError
from selfsup_pcd.data.scannet_semseg import (
    CLASS_NAMES,
    ScanNetScenes,
    ScanNetSemSegDataModule,
    nyu40_to_benchmark,
    read_scan,
    scene_files,
)
from selfsup_pcd.data.synthetic.scenes import make_scene
from selfsup_pcd.data.voxelize import IGNORE_INDEX
from selfsup_pcd.data.writers.ply import read_ply, write_ply
from selfsup_pcd.data.writers.scannet_scenes import NYU40_NAMES, scene_to_scannet, write_scannet_scene

TRAIN, VAL, UNLISTED = ["scene0000_00", "scene0001_00"], ["scene0002_00"], "scene0003_00"


def write_lists(root, train=TRAIN, val=VAL) -> None:
    (root / "scannetv2_train.txt").write_text("\n".join(train) + "\n")
    (root / "scannetv2_val.txt").write_text("\n".join(val) + "\n")


@pytest.fixture(scope="module")
def scannet(tmp_path_factory):
    """Four procedural scenes in the released layout (three listed) and their written NYU40 labels."""
    root = tmp_path_factory.mktemp("scannet")
    written = {}
    for seed, name in enumerate([*TRAIN, *VAL, UNLISTED]):
        mesh = scene_to_scannet(make_scene(seed, num_objects=(2, 3)))
        write_scannet_scene(root, name, mesh)
        written[name] = mesh
    write_lists(root)
    return root, written


def scenes(root, tmp_path, **kwargs) -> ScanNetScenes:
    return ScanNetScenes(root, tmp_path / "cache", **kwargs)


# -- mapping ------------------------------------------------------------------------------------------------
def test_nyu40_mapping_keeps_the_20_benchmark_classes_and_ignores_the_rest():
    nyu = np.array([1, 2, 14, 16, 39, 0, 13, 22, 40, 50, 149, 65535])
    expected = [CLASS_NAMES.index(n) for n in ("wall", "floor", "desk", "curtain", "otherfurniture")]
    np.testing.assert_array_equal(nyu40_to_benchmark(nyu), expected + [IGNORE_INDEX] * 7)
    # every benchmark class is named as NYU40 names it, in NYU40 id order
    mapped = [i for i in range(41) if nyu40_to_benchmark(np.array([i]))[0] != IGNORE_INDEX]
    assert len(CLASS_NAMES) == 20 and nyu40_to_benchmark(np.array(mapped)).tolist() == list(range(20))
    assert [NYU40_NAMES[i - 1] for i in mapped] == CLASS_NAMES


# -- reading ------------------------------------------------------------------------------------------------
def test_scan_reads_back_the_written_vertices_colours_and_labels(scannet):
    root, written = scannet
    name = TRAIN[1]
    scan, mesh = read_scan(root / "scans" / name), written[name]
    np.testing.assert_array_equal(scan.nyu40, mesh.labels)
    np.testing.assert_allclose(scan.xyz, mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(scan.rgb, np.asarray(mesh.colors)[:, :3])
    labels = nyu40_to_benchmark(scan.nyu40)
    # the procedural scene has ceiling (NYU40 22, ignored) and floor/wall (mapped) vertices
    assert (labels[mesh.labels == 22] == IGNORE_INDEX).all() and (mesh.labels == 22).any()
    np.testing.assert_array_equal(labels[mesh.labels == 2], CLASS_NAMES.index("floor"))
    # normals from the faces: unit length, the floor's point up into the room
    np.testing.assert_allclose(np.linalg.norm(scan.normals, axis=1), 1.0, atol=1e-5)
    floor = (mesh.labels == 2) & (scan.xyz[:, 2] == 0)
    assert floor.any() and (scan.normals[floor, 2] > 0.99).all()


def test_out_of_range_label_ids_are_ignored(scannet, tmp_path):
    """scene0270_00-style stray ids (50, 149) in the labels PLY must not crash nor become a class."""
    root, _ = scannet
    folder = tmp_path / "scans" / "scene0270_00"
    folder.mkdir(parents=True)
    for src, dst in zip(scene_files(root / "scans" / VAL[0]), scene_files(folder)):
        vertices, faces = read_ply(src)
        vertices = vertices.copy()
        if "label" in vertices.dtype.names:
            vertices["label"][:10] = 50
            vertices["label"][10:20] = 149
        write_ply(dst, vertices, faces)
    labels = nyu40_to_benchmark(read_scan(folder).nyu40)
    assert (labels[:20] == IGNORE_INDEX).all() and labels.max() < 20


# -- splits and errors ------------------------------------------------------------------------------------
def test_splits_follow_the_list_files_and_test_is_val(scannet, tmp_path):
    root, _ = scannet
    layout = scenes(root, tmp_path)
    assert layout.scene_names("train") == TRAIN
    assert layout.scene_names("val") == layout.scene_names("test") == VAL
    # configurable paths override the files in the root
    other = tmp_path / "lists"
    other.mkdir()
    (other / "train.txt").write_text(f"{UNLISTED}\n\n{TRAIN[0]}\n")
    layout = scenes(root, tmp_path, split_files={"train": other / "train.txt", "val": None})
    assert layout.scene_names("train") == [UNLISTED, TRAIN[0]] and layout.scene_names("val") == VAL


def test_missing_split_list_names_the_expected_path_and_its_source(scannet, tmp_path):
    root, _ = scannet
    layout = scenes(root, tmp_path, split_files={"val": tmp_path / "nowhere" / "scannetv2_val.txt"})
    with pytest.raises(DatasetLayoutError) as err:
        layout.scene_names("test")
    assert str(tmp_path / "nowhere" / "scannetv2_val.txt") in str(err.value)
    assert "Tasks/Benchmark" in str(err.value)


def test_missing_listed_scene_names_its_folder(scannet, tmp_path):
    root, _ = scannet
    (tmp_path / "train.txt").write_text(f"{TRAIN[0]}\nscene0999_00\n")
    layout = scenes(root, tmp_path, split_files={"train": tmp_path / "train.txt"})
    with pytest.raises(DatasetLayoutError, match="scene0999_00") as err:
        layout.scene_names("train")
    assert str(root / "scans" / "scene0999_00") in str(err.value)


# -- cache --------------------------------------------------------------------------------------------------
def test_cache_is_reused_and_rebuilt_when_a_ply_changes(scannet, tmp_path, monkeypatch):
    root, written = scannet
    layout = scenes(root, tmp_path)
    assert layout.ensure_cached(TRAIN) == 2
    assert layout.ensure_cached(TRAIN) == 0

    def no_parsing(folder):
        raise AssertionError(f"{folder} parsed again")

    monkeypatch.setattr(scannet_semseg, "read_scan", no_parsing)
    cached = layout.load(TRAIN[0])  # from the npz only
    np.testing.assert_array_equal(cached.nyu40, written[TRAIN[0]].labels)
    np.testing.assert_allclose(cached.xyz, written[TRAIN[0]].vertices, atol=1e-6)
    monkeypatch.undo()

    # a rewritten PLY (new mtime) invalidates that scene's cache only
    changed = tmp_path / "copy"
    for name in TRAIN:
        write_scannet_scene(changed, name, written[name])
    write_lists(changed)
    layout = scenes(changed, tmp_path)
    layout.ensure_cached(TRAIN)
    mesh = written[TRAIN[1]]
    labels = mesh.labels.copy()
    labels[:5] = 33
    write_scannet_scene(changed, TRAIN[1], type(mesh)(**{**vars(mesh), "labels": labels}))
    assert layout.ensure_cached(TRAIN) == 1
    np.testing.assert_array_equal(layout.load(TRAIN[1]).nyu40[:5], 33)


# -- datamodule ---------------------------------------------------------------------------------------------
def datamodule(root, tmp_path, **kwargs) -> ScanNetSemSegDataModule:
    kwargs.setdefault("batch_size", 2)
    return ScanNetSemSegDataModule(root, cache_dir=tmp_path / "cache", **kwargs)


def test_datamodule_scenes_follow_the_splits_with_mapped_labels(scannet, tmp_path):
    root, written = scannet
    dm = datamodule(root, tmp_path)
    assert dm.mode == "voxels" and dm.voxel_size == 0.02 and dm.num_classes == 20
    dm.prepare_data()
    assert sorted(p.stem for p in dm.layout.cache_dir.glob("*.npz")) == sorted(TRAIN + VAL)
    assert dm.room_names("train") == TRAIN and dm.room_names("val") == dm.room_names("test") == VAL
    for name, labels in zip(TRAIN, dm.room_labels("train")):
        np.testing.assert_array_equal(labels, nyu40_to_benchmark(written[name].labels))
    scene = dm.scenes("val")[0]
    assert scene.rgb.dtype == np.float32 and scene.rgb.min() >= 0 and scene.rgb.max() <= 1
    np.testing.assert_allclose(scene.rgb * 255, np.asarray(written[VAL[0]].colors)[:, :3], atol=1e-3)
    assert scene.normals is None  # only loaded for features="normals"
    assert datamodule(root, tmp_path, features="normals").scenes("val")[0].normals.shape == scene.xyz.shape


def test_voxel_batch_has_the_contract_shapes(scannet, tmp_path):
    root, written = scannet
    dm = datamodule(root, tmp_path, features="normals")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    m = len(batch["coords"])
    assert batch["coords"].shape == (m, 4) and batch["coords"].dtype == torch.int32
    assert set(batch["coords"][:, 0].tolist()) == {0, 1}
    assert batch["feats"].shape == (m, 3) and batch["labels"].shape == (m,)
    n = sum(len(written[name].labels) for name in TRAIN)
    assert batch["inverse"].shape == (n,) and int(batch["num_points"].sum()) == n
    assert int(batch["inverse"].max()) < m
    valid = batch["labels"] != IGNORE_INDEX
    assert valid.any() and int(batch["labels"][valid].max()) < 20
    # eval batches carry every original point's label in scene order
    val = next(iter(dm.val_dataloader()))
    np.testing.assert_array_equal(val["point_labels"].numpy(), nyu40_to_benchmark(written[VAL[0]].labels))


def test_block_batch_has_the_contract_shapes(scannet, tmp_path):
    root, _ = scannet
    dm = datamodule(root, tmp_path, mode="blocks", num_points=256, min_block_points=10, block_size=1.5,
                    block_stride=1.5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape == (2, 256, 9) and batch["points"].dtype == torch.float32
    assert batch["labels"].shape == batch["point_index"].shape == (2, 256) and batch["room"].shape == (2,)
    rooms = dm.room_labels("train")
    for b in range(2):
        expected = rooms[int(batch["room"][b])][batch["point_index"][b].numpy()]
        np.testing.assert_array_equal(batch["labels"][b].numpy(), expected)
    rgb = batch["points"][..., 3:6]
    assert float(rgb.min()) >= 0 and float(rgb.max()) <= 1
