"""ScanNet frames as spatio-temporal pairs: back-projection, pairing, split by scene, bad frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _frames import write_rendered_frames
from scipy.spatial import cKDTree

from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.scannet_frames import FOLDER, ScanNetFramesDataModule, backproject_depth
from selfsup_pcd.data.writers.scannet_frames import read_depth_png, write_scannet_frames


def look_at_pose(eye, target) -> np.ndarray:
    """Camera-to-world (OpenCV axes: x right, y down, z forward), z-up world."""
    forward = np.asarray(target, float) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, np.cross(forward, right), forward], axis=1)
    pose[:3, 3] = eye
    return pose


def write_flat_scene(root, name: str, frames: int, size=(24, 32), depth_mm: int = 2000) -> np.ndarray:
    """A scene whose frames all see a constant depth (cheap, no renderer); returns the poses."""
    h, w = size
    poses = np.stack([look_at_pose(np.array([0.1 * i, 0.0, 1.5]), [0.1 * i, 3.0, 1.0]) for i in range(frames)])
    depth = np.full((frames, h, w), depth_mm, dtype=np.uint16)
    depth[:, :2, :3] = 0  # a few invalid pixels
    K = np.array([[20.0, 0, w / 2], [0, 20.0, h / 2], [0, 0, 1]])
    write_scannet_frames(root, name, np.zeros((frames, h, w, 3), np.uint8), depth, poses, K)
    return poses


@pytest.fixture()
def flat_root(tmp_path):
    for i, frames in enumerate((5, 4, 3, 6)):
        write_flat_scene(tmp_path, f"scene{i:04d}_00", frames)
    return tmp_path


def module(root, **kwargs) -> ScanNetFramesDataModule:
    kwargs.setdefault("points_per_frame", 128)
    kwargs.setdefault("batch_size", 2)
    kwargs.setdefault("num_workers", 0)
    return ScanNetFramesDataModule(root, **kwargs)


# -- temporal views of a rendered static scene -----------------------------------------------------
@pytest.fixture(scope="module")
def rendered_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    seq = write_rendered_frames(root, 24, 320, 240)
    return root, seq


def visible_distance(a: np.ndarray, b: np.ndarray, pose_b: np.ndarray, origin: np.ndarray, K: np.ndarray,
                     size=(240, 320)) -> tuple[float, float]:
    """Mean distance from the points of ``a`` that lie in frame b's view to the nearest point of ``b``."""
    w2c = np.linalg.inv(pose_b)
    cam = (a + origin) @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam[:, :2] / cam[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
    seen = (cam[:, 2] > 0.1) & np.all((uv >= 2) & (uv < [size[1] - 2, size[0] - 2]), axis=1)
    distance, _ = cKDTree(b).query(a[seen])
    return float(distance.mean()), float(seen.mean())


def test_temporal_pair_of_a_static_scene_overlaps(rendered_root) -> None:
    root, seq = rendered_root
    dm = module(root, points_per_frame=40000, mode="temporal", val_fraction=0.0, pixel_offset=0.5)
    data = dm.dataset("train")
    assert len(data) == 24
    checked = 0
    for index in (0, 7, 15, 23):
        item = data[index]
        j = index + int(item["partner_offset"])
        assert abs(j - index) == 1 and 0 <= j < 24
        anchor, partner = item["points"].numpy(), item["partner"].numpy()
        assert item["points_mask"].all() and item["partner_mask"].all()
        origin = seq.poses[index, :3, 3]
        # both clouds are in the anchor's world frame, shifted to the anchor camera: the anchor camera is at 0
        distance, shared = visible_distance(partner, anchor, seq.poses[index], origin, seq.K)
        assert distance < 0.02 and shared > 0.3, (index, distance, shared)
        checked += 1
        # control: the partner back-projected with the anchor's pose instead of its own does not match
        depth = read_depth_png(root / FOLDER / "scene0000_00" / "depth" / f"{j * 100:06d}.png")
        wrong = backproject_depth(depth, (seq.K[0, 0], seq.K[1, 1], seq.K[0, 2], seq.K[1, 2]), seq.poses[index],
                                  origin, pixel_offset=0.5)
        assert visible_distance(wrong, anchor, seq.poses[index], origin, seq.K)[0] > 0.05
    assert checked == 4


def test_backprojection_matches_the_sequence_reference(rendered_root) -> None:
    from selfsup_pcd.data.synthetic.sequences import backproject

    _, seq = rendered_root
    intr = (seq.K[0, 0], seq.K[1, 1], seq.K[0, 2], seq.K[1, 2])
    origin = seq.poses[3, :3, 3]
    ours = backproject_depth(seq.depth_mm[5], intr, seq.poses[5], origin, pixel_offset=0.5)
    np.testing.assert_allclose(ours, backproject(seq.depth_mm[5], seq.K, seq.poses[5]) - origin, atol=1e-5)


# -- pairing, masks, invalid depth ----------------------------------------------------------------------
def test_partner_choice_by_mode_and_window(flat_root) -> None:
    both = module(flat_root, val_fraction=0.0).dataset("train")
    temporal = module(flat_root, mode="temporal", window=2, val_fraction=0.0).dataset("train")
    spatial = module(flat_root, mode="spatial", val_fraction=0.0).dataset("train")
    assert len(both) == 5 + 4 + 3 + 6
    assert both.partners(0) == [0, 1] and both.partners(2) == [1, 2, 3] and both.partners(4) == [3, 4]
    assert temporal.partners(2) == [0, 1, 3, 4] and temporal.partners(0) == [1, 2]
    assert spatial.partners(3) == [3]
    offsets = {int(both[2]["partner_offset"]) for _ in range(40)}
    assert offsets == {-1, 0, 1}  # uniform over previous / same / next
    item = spatial[3]
    assert int(item["partner_offset"]) == 0


def test_zero_depth_dropped_by_default_kept_by_switch(flat_root) -> None:
    scene = module(flat_root).scenes()[0]
    depth = np.full((24, 32), 2000, dtype=np.uint16)
    depth[:2, :3] = 0
    pose = scene.poses[2]
    origin = scene.poses[1, :3, 3]
    dropped = backproject_depth(depth, scene.intrinsics, pose, origin)
    kept = backproject_depth(depth, scene.intrinsics, pose, origin, keep_invalid_depth=True)
    assert len(dropped) == 24 * 32 - 6 and len(kept) == 24 * 32
    at_camera = np.linalg.norm(kept - (pose[:3, 3] - origin), axis=1) < 1e-6
    assert at_camera.sum() == 6  # the original's pile of points at the camera centre
    # the pixel at the principal point (row 12, col 16; 6 dropped pixels precede it) lands 2 m ahead of the camera
    np.testing.assert_allclose(dropped[12 * 32 + 16 - 6], pose[:3, 3] - origin + 2.0 * pose[:3, 2], atol=1e-5)


def test_frames_with_few_points_are_padded_and_masked(tmp_path) -> None:
    write_flat_scene(tmp_path, "scene0000_00", 2, size=(4, 5))
    dm = module(tmp_path, points_per_frame=30, val_fraction=0.0)
    item = dm.dataset("train")[0]
    assert item["points"].shape == (30, 3) and int(item["points_mask"].sum()) == 20 - 6
    batch = next(iter(dm.train_dataloader()))
    assert batch["points_mask"].shape == (2, 30) and batch["partner"].shape == (2, 30, 3)


# -- split by scene --------------------------------------------------------------------------------------
def test_split_by_scene(flat_root, tmp_path) -> None:
    dm = module(flat_root, val_fraction=0.25, seed=3)
    split = dm.split_scenes()
    assert len(split["val"]) == 1 and not set(split["train"]) & set(split["val"])
    train_scenes = {s.name for s in dm.dataset("train").scenes}
    val_scenes = {s.name for s in dm.dataset("val").scenes}
    assert train_scenes == set(split["train"]) and val_scenes == set(split["val"])
    everything = module(flat_root, val_fraction=0.25, seed=3, pretrain_scenes="all").dataset("train")
    assert {s.name for s in everything.scenes} == train_scenes | val_scenes  # quirk 8 switch
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("scene0000_00\nscene0002_00\n")
    (lists / "val.txt").write_text("scene0001_00\n")
    listed = module(flat_root, split_files={"train": lists / "train.txt", "val": lists / "val.txt"})
    assert listed.split_scenes() == {"train": ["scene0000_00", "scene0002_00"], "val": ["scene0001_00"]}


def test_validation_pairs_are_fixed(flat_root) -> None:
    val = module(flat_root, val_fraction=0.5).dataset("val")
    first = [val[i] for i in range(len(val))]
    again = [val[i] for i in range(len(val))]
    for a, b in zip(first, again):
        assert torch.equal(a["points"], b["points"]) and torch.equal(a["partner"], b["partner"])


# -- bad frames ------------------------------------------------------------------------------------------
def test_invalid_pose_and_missing_depth_are_counted_skips_or_errors(flat_root) -> None:
    scene = flat_root / FOLDER / "scene0000_00"
    pose_file = scene / "pose" / "000200.txt"
    pose_file.write_text("-inf -inf -inf -inf\n" * 4)
    (scene / "depth" / "000400.png").unlink()
    (scene / "pose" / "000300.txt").write_text("1 0 0\n0 1 0\n")

    dm = module(flat_root, val_fraction=0.0, mode="temporal")
    data = dm.dataset("train")
    assert dict(dm.skipped) == {"invalid_pose": 1, "missing_depth": 1, "corrupt_pose": 1}
    first = dm.scenes()[0]
    assert first.frames == ["000000", "000100"]  # the skipped frames are never anchors nor partners
    assert len(data) == 2 + 4 + 3 + 6
    assert data.partners(0) == [1] and data.partners(1) == [0]

    with pytest.raises(DataFormatError, match="000200.txt.*not finite"):
        module(flat_root, invalid_frames="error").scenes()
    pose_file.write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(DataFormatError, match="000300.txt.*4x4"):
        module(flat_root, invalid_frames="error").scenes()
    (scene / "pose" / "000300.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(DataFormatError, match="depth/000400.png.*missing"):
        module(flat_root, invalid_frames="error").scenes()


def test_missing_layout_names_the_path(tmp_path) -> None:
    with pytest.raises(DatasetLayoutError, match="scene0000_00"):
        module(tmp_path / "nothing").prepare_data()
    write_flat_scene(tmp_path, "scene0000_00", 2)
    (tmp_path / FOLDER / "scene0000_00" / "intrinsics_depth.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="intrinsics_depth.txt"):
        module(tmp_path).scenes()
