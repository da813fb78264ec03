"""The backbone checkpoint format and its one loader: prefixes, shape filter, reports, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup_pcd.checkpoints import (
    CheckpointError,
    load_backbone,
    read_state_dict,
    save_backbone,
    transfer_state,
)


def small_net(width: int = 8) -> nn.Module:
    torch.manual_seed(width)
    return nn.Sequential(nn.Conv1d(3, width, 1), nn.BatchNorm1d(width), nn.Conv1d(width, 4, 1))


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=0, atol=0)


def test_backbone_file_round_trip(tmp_path):
    src, dst = small_net(), small_net()
    dst.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Conv1d) else None)
    save_backbone(tmp_path / "b.pt", src, meta={"epochs": 3})
    report = load_backbone(dst, tmp_path / "b.pt")
    assert report.complete and len(report.loaded) == len(src.state_dict())
    assert_same_weights(src, dst)
    _, meta = read_state_dict(tmp_path / "b.pt")
    assert meta["kind"] == "backbone" and meta["epochs"] == 3
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


@pytest.mark.parametrize("prefix", ["backbone.", "online_network.", "module.encoder."])
def test_prefixed_state_dicts_are_mapped(tmp_path, prefix):
    src, dst = small_net(), small_net(width=8)
    with torch.no_grad():
        for p in dst.parameters():
            p.zero_()
    wrapped = {f"{prefix}{k}": v for k, v in src.state_dict().items()}
    wrapped["online_network.projector.0.weight"] = torch.zeros(2, 2)  # pretraining head: never transferred
    torch.save({"state_dict": wrapped}, tmp_path / "ckpt.pt")
    report = load_backbone(dst, tmp_path / "ckpt.pt")
    assert report.prefix == prefix
    assert report.complete
    assert_same_weights(src, dst)


def test_partial_load_is_refused_then_reported(tmp_path):
    src, dst = small_net(width=8), small_net(width=16)  # every tensor but the first conv's bias... differs
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="partial load refused"):
        load_backbone(dst, tmp_path / "plain.pt")
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_backbone(dst, tmp_path / "plain.pt")
    # a refused load changes nothing
    for k, v in dst.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_shape_mismatch_is_reported_and_skipped():
    src, dst = small_net(width=8), small_net(width=16)
    report = transfer_state(dst, src.state_dict(), prefix="")
    mismatched = {k for k, _, _ in report.shape_mismatch}
    assert "0.weight" in mismatched and "1.running_mean" in mismatched
    assert "transferred" in report.summary() and "shape mismatch" in report.summary()
    assert set(report.loaded).isdisjoint(mismatched)


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        read_state_dict(bad)
    with pytest.raises(CheckpointError, match="missing.pt"):
        read_state_dict(tmp_path / "missing.pt")
