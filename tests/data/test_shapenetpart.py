"""ShapeNetPart: both native releases load from files written here in their exact layouts; bad files name the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.shapenetpart import CATEGORIES, ShapeNetPartDataModule
from selfsup_pcd.data.transforms import RandomScaleShift, ShufflePoints

STARTS = np.concatenate([[0], np.cumsum([c.num_parts for c in CATEGORIES])[:-1]])


def make_shapes(seed: int, cats: list[int], per_cat: int, points: int | tuple[int, int]) -> list[dict]:
    """Random shapes; each point's part is one of its category's global part ids."""
    rng = np.random.default_rng(seed)
    shapes = []
    for c in cats:
        for i in range(per_cat):
            n = points if isinstance(points, int) else int(rng.integers(*points))
            xyz = rng.normal(size=(n, 3)).astype(np.float32) * rng.uniform(0.5, 3) + rng.normal(size=3)
            normals = rng.normal(size=(n, 3)).astype(np.float32)
            part = STARTS[c] + rng.integers(0, CATEGORIES[c].num_parts, size=n)
            shapes.append({"cat": c, "id": f"{c:02d}shape{i:03d}{seed}", "xyz": xyz, "normals": normals,
                           "part": part})
    return shapes


def write_txt_release(root: Path, splits: dict[str, list[dict]]) -> Path:
    """shapenetcore_partanno_segmentation_benchmark_v0_normal/ as released (rows 'x y z nx ny nz part')."""
    root.mkdir(parents=True)
    (root / "synsetoffset2category.txt").write_text("".join(f"{c.name}\t{c.synset}\n" for c in CATEGORIES))
    (root / "train_test_split").mkdir()
    for split, shapes in splits.items():
        listed = []
        for s in shapes:
            synset = CATEGORIES[s["cat"]].synset
            (root / synset).mkdir(exist_ok=True)
            rows = np.concatenate([s["xyz"], s["normals"], s["part"][:, None]], axis=1)
            np.savetxt(root / synset / f"{s['id']}.txt", rows, fmt="%.6f")
            listed.append(f"shape_data/{synset}/{s['id']}")
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(listed))
    return root


def write_h5_release(root: Path, splits: dict[str, list[dict]], per_file: int = 4) -> Path:
    """shapenet_part_seg_hdf5_data/hdf5_data/ as released (data, label (S,1), pid (S,P) per file + lists)."""
    d = root / "hdf5_data"
    d.mkdir(parents=True)
    (d / "all_object_categories.txt").write_text("".join(f"{c.name} {c.synset}\n" for c in CATEGORIES))
    overall = [[c.synset, p + 1] for c in CATEGORIES for p in range(c.num_parts)]
    (d / "overallid_to_catid_partid.json").write_text(json.dumps(overall))
    for split, shapes in splits.items():
        names = []
        for f, start in enumerate(range(0, len(shapes), per_file)):
            chunk = shapes[start : start + per_file]
            name = f"ply_data_{split}{f}.h5"
            with h5py.File(d / name, "w") as h:
                h["data"] = np.stack([s["xyz"] for s in chunk])
                h["label"] = np.array([[s["cat"]] for s in chunk], dtype=np.uint8)
                h["pid"] = np.stack([s["part"] for s in chunk]).astype(np.uint8)
            names.append(name)
        (d / f"{split}_hdf5_file_list.txt").write_text("".join(f"{n}\n" for n in names))
    return root


def normalized(xyz: np.ndarray) -> np.ndarray:
    c = xyz - xyz.mean(0)
    return c / np.linalg.norm(c, axis=1).max()


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {"train": make_shapes(0, [0, 4, 15], 3, 40), "val": make_shapes(1, [0, 10], 1, 40),
            "test": make_shapes(2, [4, 10], 2, 40)}


def test_h5_release_loads_points_parts_and_categories(tmp_path, splits):
    root = write_h5_release(tmp_path / "shapenet_part_seg_hdf5_data", splits, per_file=4)
    for given in (root, root / "hdf5_data"):  # the zip's folder or hdf5_data/ itself
        dm = ShapeNetPartDataModule(given, num_points=40, sampling="first", batch_size=5, num_workers=0)
        dm.prepare_data()
        assert dm.format == "h5" and dm.num_classes == 16 and dm.num_parts == 50
        assert dm.class_names[0] == "Airplane" and dm.parts_per_category[10] == 6
        batch = next(iter(dm.eval_dataloader("train")))
        assert batch["points"].shape == (5, 40, 3) and batch["seg"].shape == (5, 40)
        assert batch["seg"].dtype == torch.int64 and torch.equal(batch["category"], batch["label"])
        for j in range(5):
            s = splits["train"][j]
            np.testing.assert_allclose(batch["points"][j].numpy(), normalized(s["xyz"]), atol=1e-5)
            assert batch["seg"][j].tolist() == s["part"].tolist() and batch["category"][j] == s["cat"]
    assert len(dm.dataset("test")) == 4 and len(dm.dataset("val")) == 2


def test_txt_release_loads_the_same_data_and_caches_once(tmp_path, splits):
    root = write_txt_release(tmp_path / "shapenetcore_partanno_segmentation_benchmark_v0_normal", splits)
    cache = tmp_path / "cache"
    dm = ShapeNetPartDataModule(root, num_points=40, sampling="first", use_normals=True, batch_size=9,
                                cache_dir=cache, num_workers=0)
    dm.prepare_data()
    assert dm.format == "txt"
    batch = next(iter(dm.eval_dataloader("train")))
    assert batch["points"].shape == (9, 40, 6)
    for j, s in enumerate(splits["train"]):
        np.testing.assert_allclose(batch["points"][j, :, :3].numpy(), normalized(s["xyz"]), atol=1e-4)
        np.testing.assert_allclose(batch["points"][j, :, 3:].numpy(), s["normals"], atol=1e-5)
        assert batch["seg"][j].tolist() == s["part"].tolist() and batch["category"][j] == s["cat"]
    # same data as the h5 release, batch for batch
    h5 = ShapeNetPartDataModule(write_h5_release(tmp_path / "h5", splits), num_points=40, sampling="first",
                                batch_size=9, num_workers=0)
    other = next(iter(h5.eval_dataloader("train")))
    torch.testing.assert_close(other["points"], batch["points"][..., :3], atol=1e-4, rtol=0)
    assert torch.equal(other["seg"], batch["seg"])
    # one cache file per split, reused, rebuilt when a source file changes
    files = sorted(cache.glob("*.h5"))
    assert len(files) == 3
    stamp = {f: f.stat().st_mtime_ns for f in files}
    ShapeNetPartDataModule(root, cache_dir=cache).prepare_data()
    assert {f: f.stat().st_mtime_ns for f in files} == stamp
    shape = root / CATEGORIES[4].synset / f"{splits['test'][0]['id']}.txt"
    shape.write_text(shape.read_text().replace("\n", "\n", 1))
    os.utime(shape, ns=(1, 1))
    ShapeNetPartDataModule(root, cache_dir=cache).prepare_data()
    changed = [f for f in files if f.stat().st_mtime_ns != stamp[f]]
    assert [f.name.rsplit("-", 1)[1] for f in changed] == ["test.h5"]


def test_random_sampling_keeps_points_with_their_labels(tmp_path):
    shapes = make_shapes(3, [3, 8], 2, (20, 60))  # 20..59 points: some shorter than num_points
    root = write_txt_release(tmp_path / "txt", {"train": shapes, "val": shapes[:1], "test": shapes[:1]})
    dm = ShapeNetPartDataModule(root, num_points=48, sampling="random", normalize=False, cache_dir=tmp_path / "c",
                                batch_size=4, num_workers=0)
    batch = next(iter(dm.eval_dataloader("train")))
    assert batch["points"].shape == (4, 48, 3)
    for j, s in enumerate(shapes):
        dist = np.linalg.norm(batch["points"][j].numpy()[:, None] - s["xyz"][None], axis=-1)
        assert dist.min(1).max() < 1e-4  # every point is a row of the file ...
        assert s["part"][dist.argmin(1)].tolist() == batch["seg"][j].tolist()  # ... with that row's label
        if len(s["xyz"]) >= 48:  # no repeats unless the shape is too short
            assert len({tuple(p) for p in batch["points"][j].tolist()}) == 48
    again = next(iter(dm.eval_dataloader("train")))
    assert torch.equal(again["points"], batch["points"])  # fixed per shape


def test_trainval_and_transform_rules(tmp_path, splits):
    root = write_h5_release(tmp_path / "h5", splits)
    dm = ShapeNetPartDataModule(root, num_points=40, sampling="first", train_splits=["train", "val"],
                                val_split="test", num_workers=0)
    train = dm.dataset("train")
    assert len(train) == 11 and train[10]["category"] == splits["val"][1]["cat"]
    assert train[10]["seg"].tolist() == splits["val"][1]["part"].tolist()
    assert len(dm.dataset("val")) == 4  # the test split
    ShapeNetPartDataModule(root, train_transforms=[RandomScaleShift()])
    with pytest.raises(ValueError, match="ShufflePoints"):
        ShapeNetPartDataModule(root, train_transforms=[ShufflePoints()])


# -- bad files -------------------------------------------------------------------------------------------
def test_txt_errors_name_file_and_line(tmp_path):
    shapes = make_shapes(4, [0], 2, 10)
    root = write_txt_release(tmp_path / "txt", {"train": shapes, "val": shapes[:1], "test": shapes[:1]})
    bad = root / CATEGORIES[0].synset / f"{shapes[1]['id']}.txt"
    lines = bad.read_text().splitlines()

    def load():
        ShapeNetPartDataModule(root, num_points=8, cache_dir=tmp_path / f"cache{len(list(tmp_path.iterdir()))}",
                               num_workers=0).prepare_data()

    lines_short = list(lines)
    lines_short[6] = " ".join(lines[6].split()[:6])  # a point without its part label
    bad.write_text("\n".join(lines_short) + "\n")
    with pytest.raises(DataFormatError, match=rf"{bad.name}:7: row has 6 columns"):
        load()
    lines_part = list(lines)
    lines_part[3] = " ".join(lines[3].split()[:6] + ["5.000000"])  # part 5 belongs to Bag, not Airplane
    bad.write_text("\n".join(lines_part) + "\n")
    with pytest.raises(DataFormatError, match=rf"{bad.name}:4: part id 5.000000 is not a part of this shape's"):
        load()
    lines_nan = list(lines)
    lines_nan[2] = lines[2].replace(lines[2].split()[0], "nan", 1)
    bad.write_text("\n".join(lines_nan) + "\n")
    with pytest.raises(DataFormatError, match=rf"{bad.name}:3: non-finite"):
        load()
    bad.unlink()
    with pytest.raises(DatasetLayoutError, match=bad.name):
        load()


def _h5_root(tmp_path: Path, mutate) -> tuple[Path, Path]:
    shapes = make_shapes(5, [0, 4], 2, 16)
    root = write_h5_release(tmp_path / "h5", {"train": shapes, "val": shapes[:1], "test": shapes[:1]}, per_file=2)
    target = root / "hdf5_data" / "ply_data_train1.h5"
    mutate(target)
    return root, target


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("pid_length", "points and part labels differ in length"),
        ("foreign_part", r"shape 1 \(category Chair\), point 3: part id 0 is not a part of its category"),
        ("label_range", "category label 16 is not in 0..15"),
        ("truncated", "cannot be read as HDF5"),
        ("no_pid", "has no dataset 'pid'"),
    ],
)
def test_h5_errors_name_the_file(tmp_path, case, message):
    def mutate(path: Path) -> None:
        if case == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3])
            return
        with h5py.File(path, "r+") as h:
            if case == "pid_length":
                pid = h["pid"][:, :12]
                del h["pid"]
                h["pid"] = pid
            elif case == "foreign_part":
                pid = h["pid"][:]
                pid[1, 3] = 0  # shape 1 is a Chair (parts 12..15); 0 is an Airplane part
                h["pid"][:] = pid
            elif case == "label_range":
                h["label"][0, 0] = 16
            elif case == "no_pid":
                del h["pid"]

    root, target = _h5_root(tmp_path, mutate)
    with pytest.raises(DataFormatError, match=message) as err:
        ShapeNetPartDataModule(root, num_points=16, sampling="first", num_workers=0).prepare_data()
    assert str(target) in str(err.value)


def test_missing_layout_and_category_file_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="synsetoffset2category.txt"):
        ShapeNetPartDataModule(tmp_path).prepare_data()
    root = write_h5_release(tmp_path / "h5", {"train": make_shapes(6, [0], 1, 8)})
    with pytest.raises(DatasetLayoutError, match="val_hdf5_file_list.txt"):
        ShapeNetPartDataModule(root, num_points=8).prepare_data()
    cats = root / "hdf5_data" / "all_object_categories.txt"
    cats.write_text(cats.read_text().replace("02691156", "99999999"))
    with pytest.raises(DataFormatError, match=r"all_object_categories.txt:1: synset 99999999"):
        ShapeNetPartDataModule(root, num_points=8).prepare_data()
