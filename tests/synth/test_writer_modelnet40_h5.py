"""ModelNet40 h5 writer: files, chunking and dtypes as released; loads with the project's datamodule."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from selfsup_pcd.data.modelnet40 import ModelNet40DataModule
from selfsup_pcd.data.writers.modelnet40_h5 import write_modelnet40_h5

NAMES = ["alpha", "beta", "gamma"]


def arrays(n: int, points: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.uniform(-1, 1, (n, points, 3)).astype(np.float32)
    return data, rng.integers(0, len(NAMES), n), rng.normal(size=(n, points, 3)).astype(np.float32)


def test_h5_layout_chunks_and_dtypes(tmp_path: Path) -> None:
    train, test = arrays(11, 32, 0), arrays(4, 32, 1)
    folder = write_modelnet40_h5(tmp_path, {"train": train, "test": test}, NAMES, shapes_per_file=5)
    assert folder == tmp_path / "modelnet40_ply_hdf5_2048"
    h5s = sorted(p.name for p in folder.glob("*.h5"))
    assert h5s == ["ply_data_test0.h5", "ply_data_train0.h5", "ply_data_train1.h5", "ply_data_train2.h5"]
    assert (folder / "train_files.txt").read_text().splitlines() == [
        f"data/modelnet40_ply_hdf5_2048/ply_data_train{k}.h5" for k in range(3)]
    assert (folder / "test_files.txt").read_text() == "data/modelnet40_ply_hdf5_2048/ply_data_test0.h5\n"
    assert (folder / "shape_names.txt").read_text().splitlines() == NAMES
    data, label, normal = [], [], []
    for k, size in enumerate((5, 5, 1)):
        with h5py.File(folder / f"ply_data_train{k}.h5") as f:
            assert set(f) == {"data", "label", "normal"}
            assert f["data"].dtype == np.float32 and f["data"].shape == (size, 32, 3)
            assert f["label"].dtype == np.uint8 and f["label"].shape == (size, 1)
            data.append(f["data"][:]), label.append(f["label"][:, 0]), normal.append(f["normal"][:])
        assert len(json.loads((folder / f"ply_data_train_{k}_id2file.json").read_text())) == size
    np.testing.assert_array_equal(np.concatenate(data), train[0])
    np.testing.assert_array_equal(np.concatenate(label), train[1])
    np.testing.assert_array_equal(np.concatenate(normal), train[2])


def test_default_chunk_is_2048_shapes(tmp_path: Path) -> None:
    data = np.zeros((2049, 2, 3), np.float32)
    folder = write_modelnet40_h5(tmp_path, {"train": (data, np.zeros(2049, int), None)}, NAMES)
    with h5py.File(folder / "ply_data_train0.h5") as f0, h5py.File(folder / "ply_data_train1.h5") as f1:
        assert f0["data"].shape[0] == 2048 and f1["data"].shape[0] == 1 and "normal" not in f0
    with pytest.raises(ValueError, match="shapes_per_file"):
        write_modelnet40_h5(tmp_path, {"train": (data, np.zeros(2049, int), None)}, NAMES, shapes_per_file=4096)
    with pytest.raises(ValueError, match="index the 3 shape names"):
        write_modelnet40_h5(tmp_path, {"test": (data[:2], np.array([0, 3]), None)}, NAMES)


def test_output_loads_with_the_modelnet40_datamodule(tmp_path: Path) -> None:
    train, test = arrays(7, 64, 2), arrays(3, 64, 3)
    folder = write_modelnet40_h5(tmp_path, {"train": train, "test": test}, NAMES, shapes_per_file=4)
    dm = ModelNet40DataModule(folder, format="h5", num_points=64, use_normals=True, normalize=False,
                              cache_dir=tmp_path / "cache", batch_size=2)
    dm.prepare_data()
    assert dm.format == "h5" and dm.class_names == NAMES
    ds = dm.dataset("train")
    assert len(ds) == 7 and len(dm.dataset("test")) == 3
    assert ds.labels.tolist() == train[1].tolist()
    item = ds[5]  # second file, row 1
    np.testing.assert_array_equal(item["points"].numpy(), np.concatenate([train[0][5], train[2][5]], axis=1))
    assert int(item["label"]) == train[1][5]
