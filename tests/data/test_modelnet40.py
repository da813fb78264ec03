"""ModelNet40 readers: both native layouts, the txt cache, validation errors, sampling and normalisation."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.modelnet40 import (
    SHAPE_NAMES_40,
    ModelNet40DataModule,
    detect_format,
    read_txt_points,
)

# -- tiny datasets in the exact native layouts --------------------------------------------------------
TXT_SPLITS = {
    "train": [
        "airplane_0001",
        "airplane_0002",
        "airplane_0003",
        "bench_0001",
        "bench_0002",
        "night_stand_0001",
    ],
    "test": ["airplane_0004", "bench_0003"],
}


def write_points(path: Path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, rows, fmt="%f", delimiter=",")


def random_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    xyz = rng.uniform(-1, 1, size=(count, 3))
    normals = rng.normal(size=(count, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return np.concatenate([xyz, normals], axis=1).astype(np.float32)


def make_txt_tree(root: Path, rows: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(SHAPE_NAMES_40) + "\n")
    for split, ids in TXT_SPLITS.items():
        (root / f"modelnet40_{split}.txt").write_text("\n".join(ids) + "\n")
        for shape_id in ids:
            write_points(root / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt", random_rows(rng, rows))
    return root


def txt_file(root: Path, shape_id: str) -> Path:
    return root / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt"


def file_rows(root: Path, shape_id: str) -> np.ndarray:
    return np.loadtxt(txt_file(root, shape_id), delimiter=",", dtype=np.float32)


H5_FILES = {
    "train": [("ply_data_train0.h5", 5), ("ply_data_train1.h5", 3)],
    "test": [("ply_data_test0.h5", 4)],
}


def make_h5_tree(root: Path, points: int = 64, normals: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for split, files in H5_FILES.items():
        listed = [f"data/modelnet40_ply_hdf5_2048/{name}" for name, _ in files]  # as in the zip
        (root / f"{split}_files.txt").write_text("\n".join(listed) + "\n")
        for name, count in files:
            with h5py.File(root / name, "w") as f:
                f["data"] = rng.uniform(-1, 1, size=(count, points, 3)).astype(np.float32)
                f["label"] = rng.integers(0, 40, size=(count, 1)).astype(np.uint8)
                if normals:
                    f["normal"] = rng.normal(size=(count, points, 3)).astype(np.float32)
    return root


def cache_files(cache_dir: Path) -> list[str]:
    return sorted(os.listdir(cache_dir)) if cache_dir.exists() else []


def datamodule(root: Path, cache_dir: Path, **kwargs) -> ModelNet40DataModule:
    kwargs.setdefault("num_points", 16)
    return ModelNet40DataModule(root, cache_dir=cache_dir, batch_size=2, **kwargs)


# -- both formats load ----------------------------------------------------------------------------
def test_txt_format_loads_rows_labels_and_normals(tmp_path: Path) -> None:
    root = make_txt_tree(tmp_path / "modelnet40_normal_resampled")
    dm = datamodule(root, tmp_path / "cache", use_normals=True, normalize=False)
    dm.prepare_data()
    assert dm.format == "txt"
    train, test = dm.dataset("train"), dm.dataset("test")
    assert (len(train), len(test)) == (6, 2)
    assert train.labels.tolist() == [0, 0, 0, 3, 3, SHAPE_NAMES_40.index("night_stand")]
    item = train[4]
    assert item["points"].shape == (16, 6) and item["points"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and int(item["label"]) == 3 and int(item["index"]) == 4
    np.testing.assert_allclose(item["points"].numpy(), file_rows(root, "bench_0002")[:16])
    assert dm.labels("train").tolist() == train.labels.tolist()
    assert dm.labels("val").tolist() == [0, 3]  # val_split defaults to test


def test_h5_format_loads_in_list_order(tmp_path: Path) -> None:
    root = make_h5_tree(tmp_path / "modelnet40_ply_hdf5_2048", normals=True)
    dm = datamodule(root, tmp_path / "cache", use_normals=True, normalize=False)
    dm.prepare_data()
    assert dm.format == "h5"
    assert dm.class_names == SHAPE_NAMES_40  # no shape_names.txt: the built-in official order
    train = dm.dataset("train")
    with h5py.File(root / "ply_data_train0.h5") as f0, h5py.File(root / "ply_data_train1.h5") as f1:
        labels = np.concatenate([f0["label"][:, 0], f1["label"][:, 0]])
        expected = np.concatenate([f1["data"][1, :16], f1["normal"][1, :16]], axis=1)
    assert len(train) == 8 and len(dm.dataset("test")) == 4
    assert train.labels.tolist() == labels.tolist() == dm.labels("train").tolist()
    np.testing.assert_array_equal(train[6]["points"].numpy(), expected)  # second file, row 1
    assert cache_files(tmp_path / "cache") == []  # the h5 format is read in place


def test_h5_shape_names_file_overrides_builtin_names(tmp_path: Path) -> None:
    root = make_h5_tree(tmp_path / "h5")
    names = [f"class{i}" for i in range(40)]
    (root / "shape_names.txt").write_text("\n".join(names) + "\n")
    assert datamodule(root, tmp_path / "cache").class_names == names


def test_h5_use_normals_without_normal_key_raises(tmp_path: Path) -> None:
    root = make_h5_tree(tmp_path / "h5", normals=False)
    dm = datamodule(root, tmp_path / "cache", use_normals=True)
    with pytest.raises(DataFormatError, match="normal") as err:
        dm.dataset("train")
    assert err.value.path == root / "ply_data_train0.h5"


def test_format_detection_and_missing_root(tmp_path: Path) -> None:
    assert detect_format(make_txt_tree(tmp_path / "t")) == "txt"
    assert detect_format(make_h5_tree(tmp_path / "h")) == "h5"
    with pytest.raises(DatasetLayoutError) as err:
        detect_format(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(err.value)
    assert "modelnet40_normal_resampled.zip" in str(err.value) and "historic" in str(err.value)


# -- the shared real subset -------------------------------------------------------------------------
def test_real_subset_counts_and_official_ids(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "modelnet40_normal_resampled"
    if not root.is_dir():
        pytest.skip(f"{root} is absent from the shared data packs")
    dm = ModelNet40DataModule(root, num_points=1024, cache_dir=tmp_path / "cache", batch_size=4)
    assert dm.class_names == SHAPE_NAMES_40
    dm.prepare_data()
    train, test = dm.dataset("train"), dm.dataset("test")
    assert (len(train), len(test)) == (905, 170)
    for dataset in (train, test):
        ids = {shape_id.rsplit("_", 1)[0]: int(label) for shape_id, label in zip(dataset.ids, dataset.labels)}
        assert ids == {"airplane": 0, "bathtub": 1, "bench": 3}
    assert np.bincount(dm.labels("train"), minlength=4).tolist() == [626, 106, 0, 173]
    points = test[0]["points"].numpy()
    assert points.shape == (1024, 3)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1).max(), 1.0, rtol=1e-5)


# -- bad input: one error naming the file (and line), no cache left behind ------------------------------
@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ("0.1,0.2,0.3,0.0,1.0", "5 columns"),
        ("0.1,0.2,abc,0.0,1.0,0.0", "non-numeric"),
        ("0.1,nan,0.3,0.0,1.0,0.0", "non-finite"),
        ("inf,0.2,0.3,0.0,1.0,0.0", "non-finite"),
    ],
)
def test_bad_txt_row_names_file_and_line(tmp_path: Path, bad_row: str, message: str) -> None:
    root = make_txt_tree(tmp_path / "mn40")
    bad = txt_file(root, "bench_0002")
    lines = bad.read_text().splitlines()
    lines[6] = bad_row
    bad.write_text("\n".join(lines) + "\n")
    dm = datamodule(root, tmp_path / "cache")
    with pytest.raises(DataFormatError, match=message) as err:
        dm.prepare_data()
    assert (err.value.path, err.value.line) == (bad, 7)
    assert f"{bad}:7:" in str(err.value)
    assert cache_files(tmp_path / "cache") == []  # neither the final cache nor a temp file


def test_read_txt_points_rejects_three_columns_and_empty_files(tmp_path: Path) -> None:
    xyz_only = tmp_path / "xyz.txt"
    np.savetxt(xyz_only, np.zeros((4, 3)), fmt="%f", delimiter=",")
    with pytest.raises(DataFormatError, match="3 columns") as err:
        read_txt_points(xyz_only)
    assert err.value.line == 1
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataFormatError, match="no points"):
        read_txt_points(tmp_path / "empty.txt")


def test_listed_but_missing_file_names_it(tmp_path: Path) -> None:
    root = make_txt_tree(tmp_path / "mn40")
    missing = txt_file(root, "airplane_0002")
    missing.unlink()
    with pytest.raises(DatasetLayoutError) as err:
        datamodule(root, tmp_path / "cache").prepare_data()
    assert err.value.missing == missing
    assert "modelnet40_train.txt, line 2" in str(err.value) and "Expected layout" in str(err.value)
    assert cache_files(tmp_path / "cache") == []


def test_missing_split_list_shows_layout_and_source(tmp_path: Path) -> None:
    root = make_txt_tree(tmp_path / "mn40")
    (root / "modelnet40_test.txt").unlink()
    with pytest.raises(DatasetLayoutError) as err:
        datamodule(root, tmp_path / "cache").prepare_data()
    text = str(err.value)
    assert err.value.missing == root / "modelnet40_test.txt"
    assert "modelnet40_shape_names.txt" in text  # the layout tree
    assert "https://shapenet.cs.stanford.edu/media/modelnet40_normal_resampled.zip" in text


def test_truncated_h5_names_the_file(tmp_path: Path) -> None:
    root = make_h5_tree(tmp_path / "h5")
    bad = root / "ply_data_train1.h5"
    size = bad.stat().st_size
    with open(bad, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(DataFormatError) as err:
        datamodule(root, tmp_path / "cache").prepare_data()
    assert err.value.path == bad
    assert cache_files(tmp_path / "cache") == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.__delitem__("label"), "'label'"),
        (
            lambda f: (
                f.__delitem__("data"),
                f.create_dataset("data", data=np.zeros((3, 64, 2), np.float32)),
            ),
            "shape",
        ),
        (
            lambda f: (f.__delitem__("label"), f.create_dataset("label", data=np.zeros((2, 1), np.uint8))),
            "'label'",
        ),
    ],
)
def test_h5_missing_keys_and_wrong_shapes(tmp_path: Path, edit, message: str) -> None:
    root = make_h5_tree(tmp_path / "h5")
    with h5py.File(root / "ply_data_train1.h5", "a") as f:
        edit(f)
    with pytest.raises(DataFormatError, match=message) as err:
        datamodule(root, tmp_path / "cache").dataset("train")
    assert err.value.path == root / "ply_data_train1.h5"


def test_h5_nan_coordinates_are_rejected(tmp_path: Path) -> None:
    root = make_h5_tree(tmp_path / "h5")
    with h5py.File(root / "ply_data_test0.h5", "a") as f:
        f["data"][2, 10, 1] = np.nan
    dm = datamodule(root, tmp_path / "cache")
    with pytest.raises(DataFormatError, match="shape 2") as err:
        dm.prepare_data()
    assert err.value.path == root / "ply_data_test0.h5"
    with pytest.raises(DataFormatError, match="NaN"):  # also when prepare_data was skipped
        dm.dataset("test")[2]


def test_fewer_rows_than_num_points_names_the_file(tmp_path: Path) -> None:
    root = make_txt_tree(tmp_path / "mn40", rows=40)
    write_points(txt_file(root, "bench_0001"), random_rows(np.random.default_rng(1), 20))
    dm = datamodule(root, tmp_path / "cache", num_points=32)
    with pytest.raises(DataFormatError, match="20 points, fewer than num_points=32") as err:
        dm.dataset("train")
    assert err.value.path == txt_file(root, "bench_0001")
    assert len(datamodule(root, tmp_path / "cache", num_points=20).dataset("train")) == 6


# -- cache ----------------------------------------------------------------------------------------
def test_cache_is_reused_then_rebuilt_when_a_source_changes(tmp_path: Path) -> None:
    root = make_txt_tree(tmp_path / "mn40")
    cache = tmp_path / "cache"
    datamodule(root, cache).prepare_data()
    names = cache_files(cache)
    assert len(names) == 2 and all(name.endswith(".h5") for name in names)
    built = {name: (cache / name).stat().st_mtime_ns for name in names}
    datamodule(root, cache).prepare_data()
    assert {name: (cache / name).stat().st_mtime_ns for name in names} == built  # not rebuilt

    changed = txt_file(root, "airplane_0002")
    new_rows = random_rows(np.random.default_rng(99), 40)
    write_points(changed, new_rows)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # even on coarse-mtime filesystems
    dm = datamodule(root, cache, normalize=False)
    np.testing.assert_allclose(dm.dataset("train")[1]["points"].numpy(), new_rows[:16, :3], atol=1e-6)
    assert cache_files(cache) == names  # rebuilt in place: no temp or extra files


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    root = make_txt_tree(tmp_path / "mn40")
    cache = tmp_path / "cache"
    datamodule(root, cache).prepare_data()
    train_cache = next(path for path in cache.iterdir() if path.name.endswith("-train.h5"))
    train_cache.write_bytes(train_cache.read_bytes()[:100])
    dm = datamodule(root, cache, normalize=False)
    np.testing.assert_allclose(dm.dataset("train")[0]["points"].numpy(), file_rows(root, "airplane_0001")[:16, :3])


def test_two_roots_get_separate_caches(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for name, seed in (("a", 0), ("b", 1)):
        root = make_txt_tree(tmp_path / name / "modelnet40_normal_resampled", seed=seed)
        datamodule(root, cache).prepare_data()
    assert len(cache_files(cache)) == 4


def test_read_only_root_is_fine(tmp_path: Path) -> None:
    root = make_txt_tree(tmp_path / "mn40")
    before = sorted(root.rglob("*"))
    for path in [root, *before]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        dm = datamodule(root, tmp_path / "cache")
        dm.prepare_data()
        assert len(dm.dataset("test")) == 2
        assert sorted(root.rglob("*")) == before  # nothing written beside the data (even as root)
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


# -- items: sampling, normalisation, class subsets, workers ------------------------------------------
def test_sampling_modes(tmp_path: Path) -> None:
    root = make_txt_tree(tmp_path / "mn40", rows=200)
    cache = tmp_path / "cache"
    out = {}
    for sampling in ("first", "random", "fps"):
        dm = datamodule(root, cache, num_points=32, sampling=sampling, normalize=False, use_normals=True)
        out[sampling] = dm.dataset("train")[0]["points"].numpy()
        assert out[sampling].shape == (32, 6)
    rows = file_rows(root, "airplane_0001")
    np.testing.assert_allclose(out["first"], rows[:32])
    for sampling in ("random", "fps"):  # every point is a distinct row of the file
        assert len(np.unique(out[sampling], axis=0)) == 32
        assert np.isin(out[sampling][:, 0], rows[:, 0]).all()
    np.testing.assert_allclose(out["fps"][0], rows[0])  # fps starts at row 0

    def min_gap(points: np.ndarray) -> float:
        d = np.linalg.norm(points[:, None, :3] - points[None, :, :3], axis=-1)
        return float(d[np.triu_indices(len(points), 1)].min())

    assert min_gap(out["fps"]) > 2 * min_gap(out["first"])

    again = datamodule(root, cache, num_points=32, sampling="random", normalize=False, use_normals=True)
    np.testing.assert_array_equal(again.dataset("train")[0]["points"].numpy(), out["random"])  # fixed per shape
    other = datamodule(root, cache, num_points=32, sampling="random", normalize=False, seed=5)
    assert not np.allclose(other.dataset("train")[0]["points"].numpy(), out["random"][:, :3])


def test_unit_sphere_normalisation_keeps_normals(tmp_path: Path) -> None:
    root = make_txt_tree(tmp_path / "mn40")
    dm = datamodule(root, tmp_path / "cache", num_points=32, use_normals=True)
    points = dm.dataset("train")[2]["points"].numpy()
    np.testing.assert_allclose(np.linalg.norm(points[:, :3], axis=1).max(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(points[:, :3].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(points[:, 3:], file_rows(root, "airplane_0003")[:32, 3:])


def test_class_subset_keeps_forty_class_ids(tmp_path: Path) -> None:
    root = make_txt_tree(tmp_path / "mn40")
    dm = datamodule(root, tmp_path / "cache", classes=["bench", "night_stand"])
    train = dm.dataset("train")
    assert train.labels.tolist() == [3, 3, 23] == dm.labels("train").tolist()
    assert dm.num_classes == 40 and train.ids == ["bench_0001", "bench_0002", "night_stand_0001"]
    assert [int(train[i]["index"]) for i in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown"):
        datamodule(root, tmp_path / "cache", classes=["benches"]).dataset("train")


def test_lazy_h5_handles_work_in_workers_and_after_pickling(tmp_path: Path) -> None:
    root = make_txt_tree(tmp_path / "mn40")
    dataset = datamodule(root, tmp_path / "cache").dataset("train")
    first = dataset[0]["points"]  # opens the cache in this process before forking
    clone = pickle.loads(pickle.dumps(dataset))
    torch.testing.assert_close(clone[0]["points"], first)
    serial = torch.cat([b["points"] for b in DataLoader(dataset, batch_size=2)])
    parallel = torch.cat([b["points"] for b in DataLoader(dataset, batch_size=2, num_workers=2)])
    torch.testing.assert_close(parallel, serial)
