"""SR-UNet on MinkowskiEngine (issue #6). `make install` builds the engine, so these tests do not skip."""

from __future__ import annotations

import MinkowskiEngine as ME  # noqa: N817
import numpy as np
import pytest
import torch

from selfsup_pcd.data.synthetic.scenes import make_scene, sample_scene
from selfsup_pcd.data.voxelize import IGNORE_INDEX, collate_voxels, voxelize
from selfsup_pcd.models.backbones.srunet import ARCHITECTURES, SRUNet


def _scene_batch(voxel_size: float = 0.1, num_points: int = 6000) -> dict[str, torch.Tensor]:
    samples = []
    for seed in (0, 1):
        pts = sample_scene(make_scene(seed), num_points, seed)
        v = voxelize(pts.xyz, pts.rgb.astype(np.float32) / 255 - 0.5, voxel_size, pts.semantic)
        samples.append({"coords": v.coords, "feats": v.feats, "labels": v.labels, "inverse": v.inverse,
                        "point_labels": pts.semantic})
    return collate_voxels(samples)


def test_forward_backward_on_a_voxelised_scene_reaches_every_layer() -> None:
    torch.manual_seed(0)
    batch = _scene_batch()
    net = SRUNet(in_channels=3, out_channels=15, arch="Res16UNet34C")
    logits = net(batch["coords"], batch["feats"])
    assert logits.shape == (len(batch["coords"]), 15)
    loss = torch.nn.functional.cross_entropy(logits, batch["labels"], ignore_index=IGNORE_INDEX)
    loss.backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"
    # the 34C layout: 2,3,4,6 encoder and 2,2,2,2 decoder blocks
    blocks = [len(getattr(net.net, f"block{i}")) for i in range(1, 9)]
    assert tuple(blocks) == ARCHITECTURES["Res16UNet34C"].layers
    # de-voxelised: every original point gets the logits of its voxel
    point_logits = logits[batch["inverse"]]
    assert point_logits.shape == (int(batch["num_points"].sum()), 15)


def test_output_rows_follow_input_rows() -> None:
    torch.manual_seed(0)
    batch = _scene_batch(voxel_size=0.2, num_points=3000)
    net = SRUNet(in_channels=3, out_channels=4, arch="Res16UNet14").eval()
    perm = torch.randperm(len(batch["coords"]))
    with torch.no_grad():
        out = net(batch["coords"], batch["feats"])
        out_perm = net(batch["coords"][perm], batch["feats"][perm])
    torch.testing.assert_close(out_perm, out[perm], rtol=1e-4, atol=1e-5)


def test_numpy_voxelisation_gives_minkowski_sparse_quantize_voxels() -> None:
    rng = np.random.default_rng(3)
    xyz = rng.uniform(-1, 2, (3000, 3)).astype(np.float32)
    ours = voxelize(xyz, np.ones((3000, 1), np.float32), 0.2)
    coords, index, inverse = ME.utils.sparse_quantize(xyz, quantization_size=0.2, return_index=True,
                                                      return_inverse=True)
    assert sorted(map(tuple, ours.coords.tolist())) == sorted(map(tuple, np.asarray(coords).tolist()))
    # both send each point to the voxel of the same cell
    np.testing.assert_array_equal(ours.coords[ours.inverse], np.asarray(coords)[np.asarray(inverse)])


def test_unknown_architecture_is_named() -> None:
    with pytest.raises(ValueError, match="Res16UNet34C"):
        SRUNet(arch="Res16UNet99")


def test_installed_engine_is_the_patched_cached_build() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "selfsup_pcd" / "install" / "minkowski.py"
    spec = importlib.util.spec_from_file_location("minkowski_build", path)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    key = builder.build_key(cuda=False)
    assert torch.__version__.replace("+", "_") in key
    assert builder.installed_matches(key), "MinkowskiEngine was not installed by `make install` (minkowski.py)"
    assert ME.__version__ == builder.VERSION
