"""Rendered views as SimCLR pairs: indexing, augmentation determinism, resume, and building the cache."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from selfsup_pcd.data.render_views import RenderedViewsDataModule, RenderedViewsDataset, build_transform
from selfsup_pcd.render.cache import RenderCacheError, RenderSettings
from selfsup_pcd.render.cli import source_description
from selfsup_pcd.utils.hydra import CONFIG_DIR

SOURCE = {"_target_": "selfsup_pcd.data.synthetic.ProceduralShapesDataModule", "num_points": 64,
          "train_per_class": 1, "test_per_class": 1, "seed": 0}
RENDER = {"num_views": 3, "resolution": 16, "workers": 0}
CROP = [{"_target_": "torchvision.transforms.v2.RandomResizedCrop", "size": 16, "scale": [0.2, 1.0]},
        {"_target_": "torchvision.transforms.v2.RandomHorizontalFlip"}]


def datamodule(out_dir: Path, **kwargs) -> RenderedViewsDataModule:
    options = {"source": SOURCE, "source_name": "procedural", "render": RENDER, "augmentations": CROP,
               "batch_size": 6, "seed": 0, **kwargs}
    return RenderedViewsDataModule(out_dir, **options)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """12 procedural shapes x 3 views of 16 x 16, rendered through prepare_data (train and test)."""
    out = tmp_path_factory.mktemp("renders")
    datamodule(out, val_split="test").prepare_data()
    return out


def test_prepare_data_builds_then_reuses_and_checks_settings(cache_dir) -> None:
    path = cache_dir / "train.h5"
    with h5py.File(path, "r") as f:
        assert f["views"].shape == (12, 3, 16, 16, 3) and bool(f.attrs["complete"])
    stamp = path.stat().st_mtime_ns
    datamodule(cache_dir).prepare_data()  # same settings: nothing rendered again
    assert path.stat().st_mtime_ns == stamp
    with pytest.raises(RenderCacheError, match="train.h5 was rendered with other settings"):
        datamodule(cache_dir, render={**RENDER, "light_intensity": 2.0}).prepare_data()
    with pytest.raises(FileNotFoundError, match="no `source`"):
        datamodule(cache_dir / "empty", source=None).prepare_data()


def test_items_index_shape_and_view(cache_dir) -> None:
    dataset = RenderedViewsDataset(cache_dir / "train.h5")  # no augmentation: both copies are the view
    assert len(dataset) == 36
    with h5py.File(cache_dir / "train.h5", "r") as f:
        views, labels = f["views"][:], f["label"][:]
    for index in (0, 7, 35):
        item = dataset[index]
        shape, view = divmod(index, 3)
        expected = torch.from_numpy(views[shape, view]).permute(2, 0, 1).float() / 255
        assert item["view1"].dtype == torch.float32 and item["view1"].shape == (3, 16, 16)
        torch.testing.assert_close(item["view1"], expected, rtol=0, atol=1e-6)
        assert torch.equal(item["view1"], item["view2"])
        assert item["label"] == labels[shape] and item["shape_index"] == shape and item["index"] == index
    lazy = RenderedViewsDataset(cache_dir / "train.h5", in_memory=False)
    assert torch.equal(lazy[7]["view1"], dataset[7]["view1"])


def test_augmentation_is_deterministic_per_seed_and_independent_of_workers(cache_dir) -> None:
    dm = datamodule(cache_dir)
    dm.setup("fit")
    dataset = dm.dataset("train")
    a, b, c = dataset[(5, 123)], dataset[(5, 123)], dataset[(5, 124)]
    assert torch.equal(a["view1"], b["view1"]) and torch.equal(a["view2"], b["view2"])
    assert not torch.equal(a["view1"], a["view2"])  # two different crops of one view
    assert not torch.equal(a["view1"], c["view1"])
    batches = {}
    for workers in (0, 2):
        dm = datamodule(cache_dir, num_workers=workers)
        dm.setup("fit")
        batches[workers] = list(dm.train_dataloader())
    assert len(batches[0]) == 6
    for x, y in zip(batches[0], batches[2]):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["view1"], y["view1"])


def test_generator_state_replays_the_next_epoch(cache_dir) -> None:
    first = datamodule(cache_dir)
    first.setup("fit")
    list(first.train_dataloader())
    state = first.state_dict()
    expected = list(first.train_dataloader())
    resumed = datamodule(cache_dir)
    resumed.setup("fit")
    resumed.load_state_dict(state)
    replay = list(resumed.train_dataloader())
    for x, y in zip(expected, replay):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["view2"], y["view2"])
    fresh = datamodule(cache_dir)
    fresh.setup("fit")
    assert not torch.equal(next(iter(fresh.train_dataloader()))["index"], expected[0]["index"])


def test_multi_view_items_and_validation_split(cache_dir) -> None:
    dm = datamodule(cache_dir, views_per_sample=2, val_split="test")
    dm.setup("fit")
    item = dm.dataset("train")[(4, 9)]
    assert item["view1"].shape == (2, 3, 16, 16) and item["shape_index"] == 4
    assert len(dm.dataset("train")) == 12 and len(dm.dataset("val")) == 12
    assert next(iter(dm.val_dataloader()))["view1"].shape == (6, 2, 3, 16, 16)
    assert datamodule(cache_dir).val_dataloader() == []


def test_config_composes_with_the_render_cli_fingerprint(tmp_path) -> None:
    overrides = [f"paths.cache_dir={tmp_path}", "data.render.resolution=24"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        train = compose("train", overrides=["method=simclr_teacher", "data=render_views", *overrides])
        render = compose("render", overrides=["data=procedural", f"paths.cache_dir={tmp_path}",
                                              "render.resolution=24"])
    # instantiate resolves interpolations relative to the root; the datamodule instantiates the rest itself
    dm = instantiate(train.data)
    assert dm.out_dir == tmp_path / "renders" / "procedural"
    names = [type(t).__name__ for t in build_transform(dm.augmentations).transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply", "RandomGrayscale", "ToDtype"]
    assert tuple(build_transform(dm.augmentations).transforms[0].size) == (24, 24)
    ours = dm.source_description("train")
    theirs = source_description(render.data, "procedural", "train")
    assert ours == theirs
    fields = [k for k in RenderSettings.__dataclass_fields__ if k in render.render]  # out_dir needs a Hydra run
    settings = OmegaConf.to_container(OmegaConf.create({k: render.render[k] for k in fields}))
    assert dm.render_settings() == RenderSettings.from_mapping(settings)
    assert dm.batch_size == 512
