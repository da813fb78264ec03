"""BYOL (STRL): loss, EMA target and its schedule, optimiser set-up, online probe, views, export."""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from selfsup_pcd.checkpoints import load_backbone
from selfsup_pcd.data.augment import AugmentChain, Jitter, Normalize, RandomCrop, RotatePerturbation
from selfsup_pcd.data.base import PointCloudDataModule
from selfsup_pcd.methods.byol import BYOL, byol_tau, regression_loss
from selfsup_pcd.models.backbones import PointNetEncoder

N_POINTS = 48


class CloudsDataset(Dataset):
    """Blobs whose class sets their shape (labels learnable from the points)."""

    def __init__(self, count: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(count) % 3
        stretch = torch.tensor([[3.0, 1, 1], [1, 3, 1], [1, 1, 3]])[self.labels]
        self.points = torch.randn(count, N_POINTS, 3, generator=g) * stretch.unsqueeze(1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"points": self.points[i], "label": self.labels[i], "index": torch.tensor(i)}


class CloudsDataModule(PointCloudDataModule):
    def __init__(self, train: int = 16, **kwargs) -> None:
        kwargs.setdefault("batch_size", 8)
        super().__init__(**kwargs)
        self.sizes = {"train": train, "test": 8}

    @property
    def class_names(self) -> list[str]:
        return ["x", "y", "z"]

    def build_dataset(self, split: str) -> Dataset:
        return CloudsDataset(self.sizes[split], seed=0 if split == "train" else 1)


def views() -> AugmentChain:
    return AugmentChain([RandomCrop(p=0.5), Normalize(), RotatePerturbation(), Jitter()], num_points=32)


def make_byol(**kwargs) -> BYOL:
    torch.manual_seed(0)
    backbone = PointNetEncoder(mlp1=(16, 16), mlp2=(16, 32), input_transform=False, feature_transform=False,
                               conv_bias=False)
    kwargs.setdefault("optimizer", lambda params: torch.optim.Adam(params, lr=1e-2))
    kwargs.setdefault("lars", None)
    return BYOL(backbone, views=views(), hidden_dim=32, projection_dim=16, **kwargs)


def trainer(**kwargs) -> pl.Trainer:
    kwargs.setdefault("limit_val_batches", 0)
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, deterministic=True, **kwargs)


def snapshot(module: BYOL) -> dict[str, dict[str, torch.Tensor]]:
    return {"online": {k: v.clone() for k, v in [*module.backbone.state_dict().items(),
                                                 *(("p." + k, v) for k, v in module.projector.state_dict().items())]},
            "target": {k: v.clone() for k, v in [*module.target_backbone.state_dict().items(),
                                                 *(("p." + k, v) for k, v in
                                                   module.target_projector.state_dict().items())]}}


class Snapshots(pl.Callback):
    """Online and target weights before every batch and at the end."""

    def __init__(self) -> None:
        self.states: list[dict] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.states.append(snapshot(module))

    def on_train_end(self, trainer, module) -> None:
        self.states.append(snapshot(module))


def ema(target: torch.Tensor, online: torch.Tensor, tau: float) -> torch.Tensor:
    return target * tau + online * (1 - tau)


# -- loss and schedule -----------------------------------------------------------------------------------
def test_regression_loss_is_two_minus_two_cosine() -> None:
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    cos = torch.tensor([float(a @ b / (a.norm() * b.norm())) for a, b in zip(p, z)])
    torch.testing.assert_close(regression_loss(p, z), (2 - 2 * cos).mean())
    assert float(regression_loss(p, 3 * p)) == pytest.approx(0.0, abs=1e-6)
    assert float(regression_loss(p, -p)) == pytest.approx(4.0)


def test_tau_follows_the_cosine_schedule() -> None:
    assert byol_tau(0, 100) == pytest.approx(0.996)
    assert byol_tau(50, 100) == pytest.approx(0.998)
    assert byol_tau(100, 100) == pytest.approx(1.0)
    assert byol_tau(25, 100) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)


class RecordingBYOL(BYOL):
    def update_target(self, tau: float) -> None:
        self.__dict__.setdefault("taus", []).append((self.global_step, tau))
        super().update_target(tau)


def test_tau_at_first_middle_and_last_step() -> None:
    torch.manual_seed(0)
    backbone = PointNetEncoder(mlp1=(8,), mlp2=(16,), input_transform=False, feature_transform=False)
    module = RecordingBYOL(backbone, views=views(), optimizer=lambda p: torch.optim.Adam(p), hidden_dim=16,
                           projection_dim=8)
    trainer(max_epochs=2).fit(module, CloudsDataModule(train=16, batch_size=4))  # K = 2 x 4 steps
    taus = [tau for _, tau in module.taus]
    assert len(taus) == 8 and module.total_steps() == 8
    assert taus[0] == byol_tau(0, 8) == pytest.approx(0.996)
    assert taus[4] == byol_tau(4, 8) == pytest.approx(0.998)
    assert taus[7] == byol_tau(7, 8) and 0.9998 < taus[7] < 1


# -- the EMA update ----------------------------------------------------------------------------------------
def test_ema_after_the_step_is_exact() -> None:
    module = make_byol(target_bn_mode="eval", ema_total_steps=10)
    shots = Snapshots()
    trainer(max_steps=2, callbacks=[shots]).fit(module, CloudsDataModule())
    (o0, t0), (o1, t1), (o2, t2) = [(s["online"], s["target"]) for s in shots.states]
    assert all(torch.equal(t0[k], o0[k]) for k in t0)  # the target starts as a copy
    for step, (t_prev, o_now, t_now) in enumerate(((t0, o1, t1), (t1, o2, t2))):
        tau = byol_tau(step, 10)
        for key, value in t_now.items():
            if value.is_floating_point():  # parameters and BN running statistics
                assert torch.equal(value, ema(t_prev[key], o_now[key], tau)), (step, key)
            else:  # integer BN counters are copied
                assert torch.equal(value, o_now[key]), key
    assert not torch.equal(t1["mlp1.0.weight"], t0["mlp1.0.weight"])


def test_ema_before_the_step_lags_one_step_and_scope_all_averages_counters() -> None:
    module = make_byol(target_bn_mode="eval", ema_total_steps=10, ema_timing="before_step", ema_scope="all")
    shots = Snapshots()
    trainer(max_steps=2, callbacks=[shots]).fit(module, CloudsDataModule())
    (o0, t0), (o1, t1), (o2, t2) = [(s["online"], s["target"]) for s in shots.states]
    parameters = {n for n, _ in module.backbone.named_parameters()}
    parameters |= {f"p.{n}" for n, _ in module.projector.named_parameters()}
    for step, (t_prev, o_before, t_now) in enumerate(((t0, o0, t1), (t1, o1, t2))):
        tau = byol_tau(step, 10)
        for key in parameters:  # towards the online weights of before the optimiser step
            assert torch.equal(t_now[key], ema(t_prev[key], o_before[key], tau)), (step, key)
    assert not torch.equal(t2["mlp1.0.weight"], ema(t1["mlp1.0.weight"], o2["mlp1.0.weight"], byol_tau(1, 10)))
    counters = [k for k, v in t2.items() if not v.is_floating_point()]
    assert counters and all(int(o2[k]) == 4 for k in counters)  # online BN: two views per step, two steps
    assert all(int(t2[k]) == 0 for k in counters)  # trunc(tau * 0 + (1 - tau) * 2 or 4) = 0


def test_target_bn_in_train_mode_uses_batch_statistics() -> None:
    module = make_byol(target_bn_mode="train").train()
    pts = CloudsDataset(8, 0).points
    before = module.target_backbone.mlp1[1].running_mean.clone()
    module.byol_loss(pts[:, :32], pts[:, 16:])
    assert module.target_backbone.training
    assert not torch.equal(module.target_backbone.mlp1[1].running_mean, before)
    frozen = make_byol(target_bn_mode="eval").train()
    frozen.byol_loss(pts[:, :32], pts[:, 16:])
    assert not frozen.target_backbone.training and not frozen.target_projector.training


def test_target_parameters_are_not_optimised() -> None:
    module = make_byol(lars={"eta": 0.02})
    optimizer = module.configure_optimizers()  # no scheduler: the optimiser itself
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    targets = [*module.target_backbone.parameters(), *module.target_projector.parameters()]
    assert not any(p.requires_grad for p in targets)
    assert not optimised & {id(p) for p in targets}
    online = [*module.backbone.parameters(), *module.projector.parameters(), *module.predictor.parameters()]
    assert {id(p) for p in online} <= optimised
    assert type(optimizer).__name__ == "LARS"


# -- probe, views, export ----------------------------------------------------------------------------------
def test_online_probe_is_logged_and_does_not_touch_the_backbone() -> None:
    with_probe = make_byol()
    fit = trainer(max_epochs=2, limit_val_batches=None)
    fit.fit(with_probe, CloudsDataModule())
    assert {"train/probe_acc", "val/probe_acc", "train/loss", "val/loss"} <= set(fit.callback_metrics)
    assert with_probe.probe is not None and with_probe.probe.out_features == 3
    without = make_byol(probe_classes=None)
    trainer(max_epochs=2, limit_val_batches=None).fit(without, CloudsDataModule())
    assert without.probe is None
    # the probe sees detached features: the BYOL weights are bit-identical with and without it
    for (key, a), b in zip(with_probe.backbone.state_dict().items(), without.backbone.state_dict().values()):
        assert torch.equal(a, b), key
    for a, b in zip(with_probe.target_projector.parameters(), without.target_projector.parameters()):
        assert torch.equal(a, b)


def test_views_use_the_partner_cloud_when_there_is_one() -> None:
    module = make_byol()
    first = torch.zeros(2, 8, 3)
    partner = torch.ones(2, 8, 3)
    masks = torch.ones(2, 8, dtype=torch.bool)

    def identity(points, generator, mask=None):
        return points if mask is None else points * mask.unsqueeze(-1)

    v1, v2 = module.make_views({"points": first, "partner": partner}, identity, torch.Generator())
    assert torch.equal(v1, first) and torch.equal(v2, partner)
    masks[1, 4:] = False
    _, v2 = module.make_views({"points": first, "partner": partner, "partner_mask": masks}, identity,
                              torch.Generator())
    assert torch.equal(v2[1, 4:], torch.zeros(4, 3))
    v1, v2 = module.make_views({"points": first}, identity, torch.Generator())
    assert torch.equal(v1, v2)


def test_export_writes_the_online_backbone(tmp_path) -> None:
    module = make_byol()
    with torch.no_grad():
        for p in module.target_backbone.parameters():
            p.add_(1.0)  # target differs from online
    paths = module.export(tmp_path, {"note": "test"})
    assert paths == [tmp_path / "backbone.pt"]
    fresh = copy.deepcopy(module.backbone)
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    report = load_backbone(fresh, paths[0])
    assert report.complete
    for key, value in module.backbone.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_invalid_switches_are_refused() -> None:
    with pytest.raises(ValueError, match="ema_timing"):
        make_byol(ema_timing="sometimes")
    with pytest.raises(ValueError, match="target_bn_mode"):
        make_byol(target_bn_mode="frozen")
