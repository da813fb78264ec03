"""ScanObjectNN: the three variants load from h5 files written here in the release's layout; bad files name the file."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.scanobjectnn import CLASS_NAMES, ScanObjectNNDataModule, variant_file

RELEASE_FILES = {  # the release's own names, written out (not derived from the code under test)
    "obj_bg": ("main_split/training_objectdataset.h5", "main_split/test_objectdataset.h5"),
    "obj_only": ("main_split_nobg/training_objectdataset.h5", "main_split_nobg/test_objectdataset.h5"),
    "pb_t50_rs": ("main_split/training_objectdataset_augmentedrot_scale75.h5",
                  "main_split/test_objectdataset_augmentedrot_scale75.h5"),
}
POINTS = 64


def write_file(path: Path, num: int, seed: int, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """One file as released: data (S, P, 3) float32, label (S,) int, mask (S, P)."""
    rng = np.random.default_rng(seed)
    data = (rng.normal(size=(num, POINTS, 3)) + offset).astype(np.float32)
    label = rng.integers(0, 15, size=num).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h:
        h["data"] = data
        h["label"] = label
        h["mask"] = rng.integers(-1, 2, size=(num, POINTS)).astype(np.int64)
    return data, label


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("scanobjectnn") / "h5_files"
    written = {}
    for v, (variant, (train, test)) in enumerate(RELEASE_FILES.items()):
        written[variant] = {"train": write_file(root / train, 10 + v, seed=v, offset=10.0 * v),
                            "test": write_file(root / test, 5 + v, seed=10 + v, offset=10.0 * v)}
    return root, written


@pytest.mark.parametrize("variant", sorted(RELEASE_FILES))
def test_each_variant_reads_its_own_files(release, variant):
    root, written = release
    assert variant_file(root, variant, "train") == root / RELEASE_FILES[variant][0]
    dm = ScanObjectNNDataModule(root, variant=variant.upper(), num_points=32, batch_size=64, num_workers=0)
    dm.prepare_data()
    assert dm.num_classes == 15 and dm.class_names[0] == "bag" and dm.class_names[-1] == "toilet"
    for split in ("train", "test"):
        data, label = written[variant][split]
        batch = next(iter(dm.eval_dataloader(split)))
        assert batch["points"].shape == (len(label), 32, 3)
        assert batch["label"].tolist() == label.tolist()
        first = data[:, :32] - data[:, :32].mean(1, keepdims=True)
        first /= np.linalg.norm(first, axis=-1).max(1)[:, None, None]
        np.testing.assert_allclose(batch["points"].numpy(), first, atol=1e-5)
    np.testing.assert_array_equal(dm.labels("val"), written[variant]["test"][1])  # no val split: test


def test_unnormalized_random_sampling_keeps_file_points(release):
    root, written = release
    dm = ScanObjectNNDataModule(root, variant="pb_t50_rs", num_points=16, sampling="random", normalize=False,
                                batch_size=4, num_workers=0)
    batch = next(iter(dm.eval_dataloader("train")))
    data = written["pb_t50_rs"]["train"][0]
    for j in range(4):
        rows = {tuple(p) for p in data[j].tolist()}
        assert all(tuple(p) in rows for p in batch["points"][j].tolist())


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("label_range", "shape 2 has label 15, not a class id 0..14"),
        ("label_count", "'label' has shape"),
        ("mask_shape", "'mask' has shape"),
        ("no_label", "has no dataset 'label'"),
        ("truncated", "cannot be read as HDF5"),
        ("nan", "shape 1 has NaN or inf coordinates"),
    ],
)
def test_bad_files_name_the_file(tmp_path, case, message):
    root = tmp_path / "h5_files"
    train = root / RELEASE_FILES["obj_only"][0]
    write_file(train, 4, seed=0, offset=0.0)
    write_file(root / RELEASE_FILES["obj_only"][1], 3, seed=1, offset=0.0)
    if case == "truncated":
        train.write_bytes(train.read_bytes()[:500])
    else:
        with h5py.File(train, "r+") as h:
            if case == "label_range":
                h["label"][2] = 15
            elif case == "label_count":
                del h["label"]
                h["label"] = np.zeros(3, dtype=np.int64)
            elif case == "mask_shape":
                del h["mask"]
                h["mask"] = np.zeros((4, 10))
            elif case == "no_label":
                del h["label"]
            elif case == "nan":
                h["data"][1, 5, 0] = np.nan
    with pytest.raises(DataFormatError, match=message) as err:
        ScanObjectNNDataModule(root, variant="obj_only", num_points=8).prepare_data()
    assert str(train) in str(err.value)


def test_missing_variant_folder_shows_layout(release, tmp_path):
    with pytest.raises(DatasetLayoutError, match="main_split_nobg") as err:
        ScanObjectNNDataModule(tmp_path, variant="obj_only").prepare_data()
    assert "PB_T50_RS" in str(err.value)
    with pytest.raises(ValueError, match="variant must be one of"):
        ScanObjectNNDataModule(tmp_path, variant="pb_t25")
    assert len(CLASS_NAMES) == 15
