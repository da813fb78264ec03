"""SimCLR teacher: it learns on rendered views, trains every teacher key, and exports what load_teacher reads."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from _cli import run_cli

from selfsup_pcd.data.render_views import RenderedViewsDataModule
from selfsup_pcd.methods.simclr_teacher import SimCLRTeacher
from selfsup_pcd.models.image import MultiViewTeacher, teacher_from_file

SOURCE = {"_target_": "selfsup_pcd.data.synthetic.ProceduralShapesDataModule", "num_points": 64,
          "train_per_class": 1, "test_per_class": 1, "seed": 0}
AUGMENT = [{"_target_": "torchvision.transforms.v2.RandomResizedCrop", "size": 16, "scale": [0.5, 1.0]},
           {"_target_": "torchvision.transforms.v2.RandomHorizontalFlip"}]


def tiny_method() -> SimCLRTeacher:
    torch.manual_seed(0)
    teacher = MultiViewTeacher("resnet18", view_dim=32, hidden_dim=32, out_dim=16)
    return SimCLRTeacher(teacher, optimizer=functools.partial(torch.optim.Adam, lr=1e-3))


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory) -> RenderedViewsDataModule:
    dm = RenderedViewsDataModule(tmp_path_factory.mktemp("renders"), source=SOURCE, source_name="procedural",
                                 render={"num_views": 2, "resolution": 16, "workers": 0}, augmentations=AUGMENT,
                                 batch_size=8, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_training_lowers_the_loss_on_a_fixed_batch_and_trains_every_key(datamodule) -> None:
    method = tiny_method()
    batch = next(iter(datamodule.train_dataloader()))
    initial = {k: v.clone() for k, v in method.teacher.state_dict().items() if v.is_floating_point()}
    with torch.no_grad():
        before = method.loss(batch).item()
    trainer = pl.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(method, datamodule=datamodule)
    with torch.no_grad():
        after = method.loss(batch).item()
    print(f"NT-Xent on a fixed batch: {before:.4f} -> {after:.4f}")
    assert after < before - 0.05, (before, after)
    # f, t and g all moved: the checkpoint carries every key MVR's global target needs
    changed = {k.split(".")[0] for k, v in method.teacher.state_dict().items()
               if k in initial and "running" not in k and not torch.equal(v, initial[k])}
    assert changed == {"f", "t", "g"}


def test_export_then_load_gives_identical_outputs(tmp_path, datamodule) -> None:
    method = tiny_method()
    batch = next(iter(datamodule.train_dataloader()))
    method.training_step(batch, 0).backward()  # one step of BN statistics and gradients, as after training
    (path,) = method.export(tmp_path, {"epochs": 1})
    assert path == tmp_path / "teacher.pt"
    loaded = teacher_from_file(path).eval()
    method.teacher.eval()
    views = batch["view1"].view(2, 4, 3, 16, 16)
    with torch.no_grad():
        ours, theirs = method.teacher(views), loaded(views)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_cli_trains_from_nothing_and_writes_teacher(tmp_path) -> None:
    run_cli("train", tmp_path / "logs", [
        "method=simclr_teacher", "data=render_views", "method.teacher.arch=resnet18", "method.teacher.view_dim=64",
        "method.teacher.hidden_dim=32", "method.teacher.out_dim=16", "data.source.train_per_class=1",
        "data.source.num_points=64", "data.render.num_views=2", "data.render.resolution=16", "data.render.workers=1",
        "data.batch_size=8", "data.num_workers=0", f"paths.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1",
        "logger=csv", "run_name=teacher"])
    run_dir = tmp_path / "logs" / "train" / "runs" / "teacher"
    assert (tmp_path / "cache" / "renders" / "procedural" / "train.h5").is_file()
    teacher = teacher_from_file(run_dir / "teacher.pt")
    assert teacher.config()["arch"] == "resnet18" and teacher.config()["view_dim"] == 64
    metrics = json.loads(Path(run_dir / "metrics.json").read_text())
    assert metrics["train/loss_epoch"] > 0
    assert not (run_dir / "backbone.pt").exists()  # the product is the 2D teacher, not a point backbone
