"""MVR's 2D teacher: the original's layout and shapes, and load_teacher on all three checkpoint formats."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from selfsup_pcd.checkpoints import CheckpointError
from selfsup_pcd.models.image import MultiViewTeacher, load_teacher, save_teacher, teacher_from_file

SMALL = {"view_dim": 32, "hidden_dim": 24, "out_dim": 16}


def randomized(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and BN statistics everywhere, so a load that misses a tensor cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=gen) * 0.5 + 0.5 if "running_var" in name else \
                    torch.randn(tensor.shape, generator=gen) * 0.1
                tensor.copy_(values)
    return module


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_original_layout_and_small_stem_shapes() -> None:
    teacher = MultiViewTeacher("resnet50")
    state = teacher.state_dict()
    # Model2D_MV of the original: f.0 conv1 (3x3), f.1 bn1, f.2 relu, f.3..f.6 layer1..layer4; t; g.0, g.1, g.3
    assert sorted({int(k.split(".")[1]) for k in state if k.startswith("f.")}) == [0, 1, 3, 4, 5, 6]
    assert state["f.0.weight"].shape == (64, 3, 3, 3)
    assert state["f.6.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert state["t.weight"].shape == (1024, 2048)
    assert state["g.0.weight"].shape == (512, 1024) and "g.0.bias" not in state
    assert state["g.1.running_mean"].shape == (512,)
    assert state["g.3.weight"].shape == (128, 512) and state["g.3.bias"].shape == (128,)
    teacher.eval()
    feats, global_feat = teacher(torch.rand(1, 2, 3, 32, 32))
    assert feats.shape == (2, 2048, 4, 4) and global_feat.shape == (1, 128)

    small = MultiViewTeacher("resnet18", **SMALL).eval()
    assert small.trunk_dim == 512
    assert small.trunk_features(torch.rand(3, 3, 32, 32)).shape == (3, 512, 4, 4)
    standard = MultiViewTeacher("resnet18", small_stem=False, **SMALL).eval()
    assert standard.trunk_features(torch.rand(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_global_embedding_is_max_over_views_then_g() -> None:
    torch.manual_seed(0)
    teacher = MultiViewTeacher("resnet18", **SMALL).eval()
    views = torch.rand(2, 3, 3, 16, 16)
    feats, global_feat = teacher(views)
    per_view = teacher.t(feats.mean(dim=(2, 3))).view(2, 3, -1)
    expected = teacher.g(per_view.max(dim=1).values)
    torch.testing.assert_close(global_feat, expected)
    # the max makes the embedding independent of the order of the views
    torch.testing.assert_close(teacher(views[:, [2, 0, 1]])[1], global_feat)


def test_torchvision_state_dict_maps_onto_f(tmp_path) -> None:
    resnet = randomized(torchvision.models.resnet18(), seed=1).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    teacher = MultiViewTeacher("resnet18", small_stem=False, **SMALL)
    report = load_teacher(teacher, path)
    assert not [k for k in report.missing if k.startswith("f.")]
    assert {k for k in report.unexpected} == {"<unmapped>.fc.weight", "<unmapped>.fc.bias"}
    torch.testing.assert_close(teacher.f[4][0].conv1.weight, resnet.layer1[0].conv1.weight, rtol=0, atol=0)
    teacher.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = x
        for layer in (resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2,
                      resnet.layer3, resnet.layer4):
            expected = layer(expected)
        torch.testing.assert_close(teacher.trunk_features(x), expected, rtol=0, atol=0)
    # the same file into a small-stem teacher: a 7x7 conv1 cannot become 3x3
    with pytest.raises(CheckpointError, match="resnet18.pth.*conv1 is \\(64, 3, 7, 7\\)"):
        load_teacher(MultiViewTeacher("resnet18", **SMALL), path)
    # another architecture's trunk leaves tensors unloaded
    with pytest.raises(CheckpointError, match="resnet18.pth.*trunk tensors missing"):
        load_teacher(MultiViewTeacher("resnet50", small_stem=False), path)


def test_original_mvr_checkpoint_round_trip(tmp_path) -> None:
    source = randomized(MultiViewTeacher("resnet18", **SMALL), seed=2)
    # as saved from the original's DataParallel Model2D_pixel: "module." prefix and the pixel head
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.convup.weight"] = torch.zeros(16, 512, 1, 1)
    path = tmp_path / "128_0.5_512_1000_model_epoch_1000.pth"
    torch.save(state, path)
    target = MultiViewTeacher("resnet18", **SMALL)
    report = load_teacher(target, path)
    assert report.prefix == "module." and report.complete and report.unexpected == ["convup.weight"]
    assert_same_state(target, source)


def test_own_export_round_trip_and_checks(tmp_path) -> None:
    source = randomized(MultiViewTeacher("resnet18", **SMALL), seed=3).eval()
    path = tmp_path / "teacher.pt"
    save_teacher(path, source, meta={"epochs": 3})
    rebuilt = teacher_from_file(path).eval()
    assert rebuilt.config() == source.config()
    assert_same_state(rebuilt, source)
    views = torch.rand(2, 2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(views)[1], source(views)[1])
    with pytest.raises(CheckpointError, match="teacher.pt: teacher file was saved for"):
        load_teacher(MultiViewTeacher("resnet18", view_dim=64, hidden_dim=24, out_dim=16), path)


def test_unreadable_and_foreign_files_name_the_file(tmp_path) -> None:
    teacher = MultiViewTeacher("resnet18", **SMALL)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.txt: not a readable torch checkpoint"):
        load_teacher(teacher, text)
    foreign = tmp_path / "pointnet.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 1)}, foreign)
    with pytest.raises(CheckpointError, match="pointnet.pt: not a teacher checkpoint"):
        load_teacher(teacher, foreign)
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_teacher(teacher, tmp_path / "missing.pt")


def test_imagenet_input_norm_normalises() -> None:
    torch.manual_seed(0)
    plain = MultiViewTeacher("resnet18", **SMALL).eval()
    normed = MultiViewTeacher("resnet18", input_norm="imagenet", **SMALL).eval()
    normed.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 16, 16)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(normed.trunk_features(x), plain.trunk_features((x - mean) / std))
