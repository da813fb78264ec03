"""STRL's ShapeNet npz: loading, validation split, errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.shapenet_npz import FILE_NAME, ShapeNetNPZDataModule


@pytest.fixture()
def npz(tmp_path):
    data = np.random.default_rng(0).normal(size=(20, 64, 3)).astype(np.float32) * 5 + 2
    path = tmp_path / FILE_NAME
    np.savez(path, data=data)
    return path, data


def test_batches_hold_the_file_points(npz) -> None:
    path, data = npz
    dm = ShapeNetNPZDataModule(path.parent, batch_size=4, num_workers=0, val_fraction=0.25, seed=1)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 0
    train, val = dm.dataset("train"), dm.dataset("val")
    assert len(train) == 15 and len(val) == 5
    seen = sorted(int(train[i]["index"]) for i in range(len(train))) + sorted(int(val[i]["index"]) for i in range(5))
    assert sorted(seen) == list(range(20))  # disjoint and complete
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape == (4, 64, 3) and batch["points"].dtype == torch.float32
    for row, index in zip(batch["points"], batch["index"]):
        np.testing.assert_array_equal(row.numpy(), data[int(index)])  # not normalised, as in the file


def test_num_points_keeps_the_first_points_and_no_val_means_no_val_loader(npz) -> None:
    path, data = npz
    dm = ShapeNetNPZDataModule(path, num_points=16, batch_size=4, num_workers=0)
    item = dm.dataset("train")[3]
    np.testing.assert_array_equal(item["points"].numpy(), data[int(item["index"]), :16])
    assert len(dm.dataset("train")) == 20 and dm.val_dataloader() == []


def test_validation_on_another_datamodule(npz) -> None:
    from selfsup_pcd.data.synthetic import ProceduralShapesDataModule

    path, _ = npz
    val = ProceduralShapesDataModule(num_points=32, train_per_class=1, test_per_class=1, batch_size=4)
    dm = ShapeNetNPZDataModule(path, val_data=val, batch_size=4, num_workers=0)
    assert len(dm.dataset("train")) == 20
    batch = next(iter(dm.val_dataloader()))
    assert batch["points"].shape == (4, 32, 3) and "label" in batch


def test_errors_name_the_file(tmp_path, npz) -> None:
    with pytest.raises(DatasetLayoutError, match=FILE_NAME):
        ShapeNetNPZDataModule(tmp_path / "missing").prepare_data()
    bad = tmp_path / "bad.npz"
    np.savez(bad, points=np.zeros((2, 8, 3)))
    with pytest.raises(DataFormatError, match="bad.npz.*no array 'data'"):
        ShapeNetNPZDataModule(bad).points()
    np.savez(bad, data=np.zeros((2, 8)))
    with pytest.raises(DataFormatError, match="bad.npz.*must be"):
        ShapeNetNPZDataModule(bad).points()
    nan = np.zeros((3, 8, 3))
    nan[2, 5, 1] = np.nan
    np.savez(bad, data=nan)
    with pytest.raises(DataFormatError, match="bad.npz.*shape 2 has non-finite"):
        ShapeNetNPZDataModule(bad).points()
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataFormatError, match="text.npz"):
        ShapeNetNPZDataModule(tmp_path / "text.npz").points()
