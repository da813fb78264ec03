"""MVR method: the loss by hand, the pixel head against the original's order, gradient flow, the teacher's
BatchNorm modes and the cached teacher against the online one."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup_pcd.data.mvr import MVRDataModule, collate_shapes, to_float_images
from selfsup_pcd.methods.losses import nt_xent
from selfsup_pcd.methods.mvr import MVR
from selfsup_pcd.methods.mvr_teacher_cache import build_teacher_features, cache_key, feature_cache_path
from selfsup_pcd.models.backbones import PointNetEncoder
from selfsup_pcd.models.heads import PixelHead

TEACHER = {"arch": "resnet18", "view_dim": 32, "hidden_dim": 32, "out_dim": 16}
SOURCE = {"_target_": "selfsup_pcd.data.synthetic.ProceduralShapesDataModule", "num_points": 128,
          "train_per_class": 1, "test_per_class": 1, "seed": 0}


def tiny_mvr(**teacher) -> MVR:
    torch.manual_seed(0)
    backbone = PointNetEncoder(mlp2=(32, 64, 128))
    return MVR(backbone, functools.partial(torch.optim.Adam, lr=1e-3), teacher={**TEACHER, **teacher},
               proj_dim=16, hidden_dim=32)


def synthetic_batch(batch: int = 3, views: int = 4, res: int = 16, points: int = 64, pairs: int = 20) -> dict:
    g = torch.Generator().manual_seed(0)
    table = torch.stack([torch.randint(0, views, (batch, pairs), generator=g),
                         torch.randint(0, res, (batch, pairs), generator=g),
                         torch.randint(0, res, (batch, pairs), generator=g),
                         torch.randint(0, points, (batch, pairs), generator=g)], dim=-1)
    return {"points": torch.randn(batch, points, 3, generator=g), "pairs": table,
            "views": torch.rand(batch, views, 3, res, res, generator=g), "image_size": torch.tensor([res, res])}


# -- the loss ------------------------------------------------------------------------------------
def test_nt_xent_equals_the_hand_computed_value_on_three_pairs() -> None:
    # points p = (e1, e2, -e1), pixels q = (e1, e2, -e2), tau = 0.5: every similarity is exp(2 cos) with
    # cos in {1, 0, -1}. The four anchors e1, e2 (in p and in q) see their positive at cos 1, one other row
    # at cos -1 and three at cos 0: each costs -log(e^2 / (e^2 + e^-2 + 3)). The anchors -e1 and -e2 (each
    # other's partner, at cos 0) see two rows at cos -1 and three at cos 0, the positive among them: each
    # costs -log(1 / (3 + 2 e^-2)).
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    a, b = math.exp(2.0), math.exp(-2.0)
    expected = (4 * (math.log(a + b + 3) - 2.0) + 2 * math.log(3 + 2 * b)) / 6  # = 0.63084...
    assert nt_xent(p.unsqueeze(0), q.unsqueeze(0), 0.5).item() == pytest.approx(expected, rel=1e-6)
    # scaling the rows changes nothing (the loss normalises), swapping the two sides neither
    assert nt_xent(3 * p.unsqueeze(0), q.unsqueeze(0) / 2, 0.5).item() == pytest.approx(expected, rel=1e-6)
    assert nt_xent(q.unsqueeze(0), p.unsqueeze(0), 0.5).item() == pytest.approx(expected, rel=1e-6)
    # two objects: the mean of the per-object losses, no negatives across objects
    other = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(1))
    both = nt_xent(torch.stack([p, other[0]]), torch.stack([q, other[1]]), 0.5)
    assert both.item() == pytest.approx((expected + nt_xent(other[:1], other[1:], 0.5).item()) / 2, rel=1e-6)


@pytest.mark.parametrize("order", ["project_first", "sample_first"])
@pytest.mark.parametrize(("maps", "grid"), [((4, 4), (32, 32)), ((28, 28), (224, 224)), ((2, 3), (16, 24))])
def test_pixel_head_equals_conv_then_upsample_then_index(order, maps, grid) -> None:
    torch.manual_seed(0)
    feats = torch.randn(5, 24, *maps, dtype=torch.float64)
    head = PixelHead(24, 8, order=order).double()
    n = 300
    view, row, col = torch.randint(0, 5, (n,)), torch.randint(0, grid[0], (n,)), torch.randint(0, grid[1], (n,))
    original = F.interpolate(head.conv(feats), size=grid, mode="bilinear", align_corners=True)[view, :, row, col]
    assert torch.allclose(head(feats, view, row, col, grid), original, atol=1e-12, rtol=0)


# -- gradients and the teacher's modes -------------------------------------------------------------
def test_gradients_reach_student_and_pixel_head_never_the_teacher() -> None:
    method = tiny_mvr(online=True)
    method.train()
    terms = method.losses(synthetic_batch())
    assert set(terms) == {"loss", "loss_point", "loss_global", "loss_reg"}
    terms["loss"].backward()
    for name in ("backbone", "pixel_head", "point_project", "global_project"):
        grads = [p.grad for p in getattr(method, name).parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())
    trainable = {id(p) for p in method.optimizer_parameters()}
    assert not trainable & {id(p) for p in method.teacher.parameters()}
    assert {id(p) for p in method.pixel_head.parameters()} <= trainable


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_teacher_batchnorm_mode(bn_mode) -> None:
    method = tiny_mvr(online=True, bn_mode=bn_mode)
    method.train()
    assert method.teacher.training == (bn_mode == "train") and method.backbone.training
    before = method.teacher.f[1].running_mean.clone()
    method.losses(synthetic_batch())
    moved = not torch.equal(before, method.teacher.f[1].running_mean)
    assert moved == (bn_mode == "train")  # quirk 1 reproduced only when asked for


def test_train_mode_teacher_cannot_be_cached() -> None:
    with pytest.raises(ValueError, match="online=true"):
        tiny_mvr(bn_mode="train", online=False)


# -- cached teacher == online teacher ------------------------------------------------------------------
@pytest.fixture(scope="module")
def datamodule(tmp_path_factory) -> MVRDataModule:
    dm = MVRDataModule(tmp_path_factory.mktemp("mvr_renders"), source=SOURCE, source_name="procedural",
                       render={"num_views": 6, "resolution": 16, "workers": 0}, num_points=128, batch_size=4,
                       pairs={"num_pairs": 32, "num_views": 4, "min_view_pairs": 0}, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def sampled(dm: MVRDataModule, dtype: torch.dtype) -> dict:
    """The first 4 shapes with freshly seeded pairs (same draws for views and cached maps)."""
    dm._augment_generator.manual_seed(123)
    dataset = dm.build_dataset("train")
    batch = to_float_images(dm.sample_batch(collate_shapes([dataset[i] for i in range(4)])))
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_and_online_teacher_give_the_same_loss(datamodule, dtype) -> None:
    method = tiny_mvr(online=True).to(dtype)
    method.train()
    datamodule.use_teacher_features(None)
    online_batch = sampled(datamodule, dtype)
    online = method.losses(online_batch)

    name = {torch.float32: "float32", torch.float64: "float64"}[dtype]
    path = build_teacher_features(method.teacher, datamodule.render_cache_path("train"), name, progress=False)
    datamodule.use_teacher_features(path)
    cached_batch = sampled(datamodule, dtype)
    assert "views" not in cached_batch and cached_batch["teacher_feats"].dtype == dtype
    assert torch.equal(cached_batch["pairs"], online_batch["pairs"])
    cached = method.losses(cached_batch)
    for key in ("loss", "loss_point", "loss_global"):
        assert abs(cached[key].item() - online[key].item()) < 1e-5, key
    datamodule.use_teacher_features(None)


def test_float16_cache_is_close_and_keyed_by_the_teacher(datamodule) -> None:
    method = tiny_mvr(online=True)
    method.train()
    render_cache = datamodule.render_cache_path("train")
    online = method.losses(sampled(datamodule, torch.float32))["loss"].item()
    path = build_teacher_features(method.teacher, render_cache, "float16", progress=False)
    assert path == build_teacher_features(method.teacher, render_cache, "float16", progress=False)  # reused
    datamodule.use_teacher_features(path)
    cached = method.losses(sampled(datamodule, torch.float32))["loss"].item()
    datamodule.use_teacher_features(None)
    assert cached == pytest.approx(online, rel=1e-2)
    other = tiny_mvr(online=True)
    with torch.no_grad():
        other.teacher.f[0].weight.add_(1e-3)
    assert feature_cache_path(render_cache, cache_key(other.teacher, render_cache, "float16")) != path
    assert cache_key(method.teacher, render_cache, "float32") != cache_key(method.teacher, render_cache, "float16")
