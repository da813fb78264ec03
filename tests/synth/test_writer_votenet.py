"""VoteNet writers: ScanNet detection arrays and SUN RGB-D point clouds, boxes and votes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from selfsup_pcd.data.synthetic.scenes import make_scene, sample_scene
from selfsup_pcd.data.writers.scannet_scenes import nyu40_ids
from selfsup_pcd.data.writers.votenet import (
    SCANNET_OBJ_CLASS_IDS,
    in_sunrgbd_box,
    sunrgbd_box,
    sunrgbd_votes,
    write_votenet_scannet,
    write_votenet_sunrgbd,
)


def test_votenet_scannet_files(tmp_path: Path) -> None:
    scene = make_scene(1)
    points = sample_scene(scene, 8000, seed=0)
    vert = np.concatenate([points.xyz, points.rgb.astype(np.float32)], axis=1)
    sem = nyu40_ids(points.semantic)
    folder = write_votenet_scannet(tmp_path, "scene0001_00", vert, sem, points.instance)
    assert folder == tmp_path / "scannet_train_detection_data"
    assert sorted(p.name for p in folder.iterdir()) == [f"scene0001_00_{k}.npy" for k in
                                                        ("bbox", "ins_label", "sem_label", "vert")]
    v = np.load(folder / "scene0001_00_vert.npy")
    assert v.dtype == np.float32 and v.shape == (8000, 6)
    np.testing.assert_array_equal(v, vert)
    assert v[:, 3:].max() > 1  # colours 0-255
    s, i = np.load(folder / "scene0001_00_sem_label.npy"), np.load(folder / "scene0001_00_ins_label.npy")
    assert s.dtype == np.uint32 and i.dtype == np.uint32
    np.testing.assert_array_equal(s, sem)
    np.testing.assert_array_equal(i, points.instance)
    boxes = np.load(folder / "scene0001_00_bbox.npy")
    assert boxes.dtype == np.float64 and boxes.shape[1] == 7
    expected = [o for o in scene.objects if nyu40_ids(o.class_id) in SCANNET_OBJ_CLASS_IDS
                and np.any(points.instance == o.instance_id)]
    assert len(boxes) == len(expected) > 0
    for box, obj in zip(boxes, expected):
        mine = points.xyz[points.instance == obj.instance_id]
        lo, hi = mine.min(0), mine.max(0)
        np.testing.assert_allclose(box[:3], (lo + hi) / 2, atol=1e-6)
        np.testing.assert_allclose(box[3:6], hi - lo, atol=1e-6)
        assert box[6] == nyu40_ids(obj.class_id)
    assert set(boxes[:, 6]) <= set(SCANNET_OBJ_CLASS_IDS)


def votenet_corners(box8: np.ndarray) -> np.ndarray:
    """VoteNet's corner formula: rotz(-heading) @ (+-l, +-w, +-h) + centre."""
    c, s = math.cos(-box8[6]), math.sin(-box8[6])
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    return (signs * box8[3:6]) @ R.T + box8[:3]


def test_sunrgbd_box_convention_matches_votenet_corners() -> None:
    yaw = 0.6
    box7 = np.array([1.0, 2.0, 0.5, 2.0, 1.0, 1.0, yaw])
    box8 = sunrgbd_box(box7, 3)
    assert box8[6] == -yaw and box8[7] == 3
    np.testing.assert_allclose(box8[3:6], [1.0, 0.5, 0.5])  # half sizes
    # our box: local x (length 2) along (cos yaw, sin yaw) counter-clockwise
    axis_x = np.array([math.cos(yaw), math.sin(yaw), 0])
    axis_y = np.array([-math.sin(yaw), math.cos(yaw), 0])
    ours = np.array([box7[:3] + sx * axis_x + sy * 0.5 * axis_y + sz * 0.5 * np.array([0, 0, 1])
                     for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    np.testing.assert_allclose(votenet_corners(box8), ours, atol=1e-12)
    assert in_sunrgbd_box(ours * 0.999 + box7[:3] * 0.001, box8).all()
    assert not in_sunrgbd_box(box7[None, :3] + 1.2 * axis_x, box8).any()


def test_sunrgbd_votes_fill_three_slots_like_votenet() -> None:
    boxes = np.array([[0, 0, 0, 1, 1, 1, 0, 0], [0.5, 0, 0, 1, 1, 1, 0, 1], [0, 0.5, 0, 1, 1, 1, 0, 2],
                      [0, 0, 0.5, 1, 1, 1, 0, 3]], dtype=float)
    point = np.array([[0.2, 0.2, 0.2]])
    far = np.array([[5.0, 5.0, 5.0]])
    d = boxes[:, :3] - point
    for k, slots in ((1, [0, 0, 0]), (2, [0, 1, 0]), (3, [0, 1, 2]), (4, [0, 1, 3])):
        votes = sunrgbd_votes(np.concatenate([point, far]), boxes[:k])
        assert votes[0, 0] == 1 and not votes[1].any()
        np.testing.assert_allclose(votes[0, 1:].reshape(3, 3), d[slots])


def test_votenet_sunrgbd_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pc = np.concatenate([rng.uniform(-2, 2, (3000, 3)), rng.uniform(0, 1, (3000, 3))], axis=1)
    boxes = np.stack([sunrgbd_box(np.array([0.3, 1.0, -0.5, 1.2, 0.8, 1.0, 0.4]), 0),
                      sunrgbd_box(np.array([-1.0, 0.0, 0.0, 0.6, 0.6, 0.9, -1.2]), 3)])
    folder = write_votenet_sunrgbd(tmp_path, "val", 12, pc, boxes)
    assert folder == tmp_path / "sunrgbd_pc_bbox_votes_50k_v1_val"
    assert sorted(p.name for p in folder.iterdir()) == ["000012_bbox.npy", "000012_pc.npz", "000012_votes.npz"]
    with np.load(folder / "000012_pc.npz") as f:
        assert list(f) == ["pc"]
        np.testing.assert_array_equal(f["pc"], pc)
    np.testing.assert_array_equal(np.load(folder / "000012_bbox.npy"), boxes)
    with np.load(folder / "000012_votes.npz") as f:
        assert list(f) == ["point_votes"]
        votes = f["point_votes"]
    assert votes.shape == (3000, 10)
    in_a, in_b = in_sunrgbd_box(pc, boxes[0]), in_sunrgbd_box(pc, boxes[1])
    assert in_a.sum() > 10 and in_b.sum() > 10
    np.testing.assert_array_equal(votes[:, 0], (in_a | in_b).astype(float))
    only_a = in_a & ~in_b
    for slot in range(3):
        np.testing.assert_allclose(votes[only_a, 1 + 3 * slot: 4 + 3 * slot], boxes[0, :3] - pc[only_a, :3])
    assert not votes[~(in_a | in_b)].any()
