"""VoteNet detection data on the writers' output (both layouts): targets, votes, augmentation, height, errors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from selfsup_pcd.data.boxes import (
    box_corners,
    class_to_heading,
    decode_boxes,
    encode_boxes,
    flip_boxes,
    heading_to_class,
    points_in_boxes,
    rotate_aligned_boxes,
    rotate_boxes,
    rotz,
)
from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.synthetic.scenes import box_corners_2d, make_scene, sample_scene
from selfsup_pcd.data.votenet import (
    MAX_NUM_OBJ,
    NYU40_TO_CLASS,
    SCANNET_MEAN_COLOR_RGB,
    DetectionAugment,
    VoteNetScanNetDataModule,
    VoteNetSUNRGBDDataModule,
)
from selfsup_pcd.data.writers.scannet_scenes import nyu40_ids
from selfsup_pcd.data.writers.votenet import (
    SCANNET_FOLDER,
    SUNRGBD_CLASS_MAP,
    SUNRGBD_CLASSES,
    scannet_instance_boxes,
    sunrgbd_box,
    sunrgbd_folder,
    write_votenet_scannet,
    write_votenet_sunrgbd,
)
from selfsup_pcd.utils.hydra import CONFIG_DIR

POINTS = 4000
TRAIN, VAL, UNLISTED = ["scene0000_00", "scene0001_00"], ["scene0002_00"], "scene0003_00"
SHIFT = np.array([1.0, -2.0, 0.5], dtype=np.float32)  # rooms off the origin: the floor is not at z = 0


# -- fixtures: procedural rooms written by writers/votenet.py ----------------------------------------------
@pytest.fixture(scope="module")
def scannet_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("votenet_scannet")
    for seed, name in enumerate([*TRAIN, *VAL, UNLISTED]):
        points = sample_scene(make_scene(seed, num_objects=(4, 6)), POINTS, seed=seed)
        vert = np.concatenate([points.xyz + SHIFT, points.rgb.astype(np.float32)], axis=1)
        write_votenet_scannet(root, name, vert, nyu40_ids(points.semantic), points.instance)
    (root / "scannetv2_train.txt").write_text("\n".join(TRAIN) + "\n\n")
    (root / "scannetv2_val.txt").write_text("\n".join(VAL) + "\n")
    return root


def write_sunrgbd_sample(root: Path, split: str, sample_id: int, seed: int, version: str = "v1") -> None:
    """A room seen from a 'camera': turned by a seed-dependent angle, camera 1.2 m above the floor at the origin."""
    scene = make_scene(seed, num_objects=(4, 6))
    points = sample_scene(scene, POINTS, seed=seed)
    turn = 0.4 + seed
    rot = rotz(turn)
    origin = np.array([scene.room_size[0] / 2, 0.2, 1.2])
    xyz = (points.xyz - origin) @ rot.T
    boxes = []
    for obj in scene.objects:
        name = SUNRGBD_CLASS_MAP.get(obj.class_name)
        if name is None or not np.any(points.instance == obj.instance_id):
            continue
        box = obj.box.copy()
        box[:3] = rot @ (box[:3] - origin)
        box[6] = math.remainder(box[6] + turn, 2 * math.pi)
        boxes.append(sunrgbd_box(box, SUNRGBD_CLASSES.index(name)))
    write_votenet_sunrgbd(root, split, sample_id, np.concatenate([xyz, points.rgb / 255.0], axis=1),
                          np.array(boxes).reshape(-1, 8), version=version)


@pytest.fixture(scope="module")
def sunrgbd_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("votenet_sunrgbd")
    for sample_id, split in enumerate(["train", "train", "train", "val"], 1):
        write_sunrgbd_sample(root, split, sample_id, seed=10 + sample_id)
    for sample_id, split in ((7, "train"), (8, "val")):
        write_sunrgbd_sample(root, split, sample_id, seed=sample_id, version="v2")
    return root


def scannet_dm(root: Path, **kwargs) -> VoteNetScanNetDataModule:
    kwargs.setdefault("num_points", POINTS)
    return VoteNetScanNetDataModule(root, **kwargs)


def sunrgbd_dm(root: Path, **kwargs) -> VoteNetSUNRGBDDataModule:
    kwargs.setdefault("num_points", POINTS)
    return VoteNetSUNRGBDDataModule(root, **kwargs)


def scannet_files(root: Path, name: str) -> dict[str, np.ndarray]:
    folder = root / SCANNET_FOLDER
    return {k: np.load(folder / f"{name}_{k}.npy") for k in ("vert", "sem_label", "ins_label", "bbox")}


def sunrgbd_files(root: Path, split: str, name: str, version: str = "v1") -> dict[str, np.ndarray]:
    folder = root / sunrgbd_folder(split, version)
    return {"pc": np.load(folder / f"{name}_pc.npz")["pc"], "bbox": np.load(folder / f"{name}_bbox.npy"),
            "votes": np.load(folder / f"{name}_votes.npz")["point_votes"]}


def same_rows(a: np.ndarray, b: np.ndarray, atol: float = 1e-5) -> bool:
    """Whether a and b hold the same rows in any order."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.allclose(a[np.lexsort(a.T[::-1])], b[np.lexsort(b.T[::-1])], atol=atol)


def real_boxes(sample: dict[str, torch.Tensor]) -> np.ndarray:
    return sample["gt_boxes"][sample["box_label_mask"] > 0].double().numpy()


def assert_votes_reach_box_centres(sample: dict[str, torch.Tensor], tol: float = 1e-4) -> None:
    """Each voting point + its votes is the centre of a ground-truth box that holds the point."""
    xyz = sample["points"][:, :3].double().numpy()
    votes = sample["vote_label"].double().numpy()
    mask = sample["vote_label_mask"].numpy().astype(bool)
    boxes = real_boxes(sample)
    assert mask.any() and len(boxes)
    targets = xyz[mask, None, :] + votes[mask].reshape(-1, 3, 3)  # (V, 3 slots, 3)
    gap = np.linalg.norm(targets[:, 0, None, :] - boxes[None, :, :3], axis=-1)  # (V, K)
    nearest = gap.argmin(1)
    assert gap.min(1).max() < tol
    np.testing.assert_allclose(targets[:, 1:], np.repeat(targets[:, :1], 2, axis=1), atol=tol)  # rooms: no overlaps
    inside = points_in_boxes(xyz[mask], boxes, tol=tol)
    assert inside[np.arange(len(nearest)), nearest].all()


# -- box parametrisation --------------------------------------------------------------------------------------
def test_heading_and_size_classes_decode_back_to_the_box() -> None:
    rng = np.random.default_rng(0)
    for bins in (1, 12):
        angles = np.concatenate([rng.uniform(-7, 7, 200), [0.0, math.pi, -math.pi, 2 * math.pi - 1e-13]])
        cls, res = heading_to_class(angles, bins)
        assert cls.dtype == np.int64 and cls.min() >= 0 and cls.max() < bins
        assert np.all(np.abs(res) <= math.pi / bins + 1e-9)
        back = class_to_heading(cls, res, bins)
        np.testing.assert_allclose(np.cos(back - angles), 1.0, atol=1e-9)  # the same angle modulo 2π
        assert np.all((back >= -math.pi) & (back < math.pi))
        back_t = class_to_heading(torch.from_numpy(cls), torch.from_numpy(res), bins)
        np.testing.assert_allclose(back_t.numpy(), back, atol=1e-12)
    # bin 0 is centred on 0: 12 bins of 30°, 20° is bin 1 (centre 30°) with residual -10°
    cls, res = heading_to_class(np.radians([14.0, 20.0, -20.0]), 12)
    assert cls.tolist() == [0, 1, 11]
    np.testing.assert_allclose(np.degrees(res), [14.0, -10.0, 10.0], atol=1e-9)

    boxes = np.column_stack([rng.normal(size=(6, 3)), rng.uniform(0.3, 2, (6, 3)), rng.uniform(-3, 3, 6)])
    classes = np.array([0, 1, 2, 1, 0, 2])
    means = np.array([[1.0, 1.0, 1.0], [2.0, 0.5, 1.0], [0.4, 0.4, 0.9]])
    enc = encode_boxes(boxes, classes, means, 12)
    np.testing.assert_array_equal(enc["size_class"], classes)
    np.testing.assert_allclose(enc["size_residual"], boxes[:, 3:6] - means[classes])
    dec = decode_boxes(enc["center"], enc["heading_class"], enc["heading_residual"], enc["size_class"],
                       enc["size_residual"], means, 12)
    np.testing.assert_allclose(box_corners(dec), box_corners(boxes), atol=1e-9)
    dec_t = decode_boxes(*(torch.from_numpy(enc[k]) for k in ("center", "heading_class", "heading_residual",
                                                                 "size_class", "size_residual")), means, 12)
    np.testing.assert_allclose(dec_t.numpy(), dec, atol=1e-12)
    # corners agree with the scene generator's footprint (an independent formula) and the torch path
    corners = box_corners(boxes)
    for box, c in zip(boxes, corners):
        assert same_rows(c[:4, :2], box_corners_2d(box), atol=1e-9)
        np.testing.assert_allclose(c[:, 2].min(), box[2] - box[5] / 2)
    np.testing.assert_allclose(box_corners(torch.from_numpy(boxes)).numpy(), corners, atol=1e-12)


def test_box_flips_and_turns_move_the_corners_with_the_points() -> None:
    box = np.array([[1.0, 2.0, 0.5, 2.0, 1.0, 0.6, 0.5]])
    corners = box_corners(box)[0]
    for axis in (0, 1):
        mirrored = corners.copy()
        mirrored[:, axis] *= -1
        assert same_rows(box_corners(flip_boxes(box, axis))[0], mirrored, atol=1e-9)
    turned = corners @ rotz(0.7).T
    assert same_rows(box_corners(rotate_boxes(box, 0.7))[0], turned, atol=1e-9)
    aligned = np.array([[1.0, 2.0, 0.5, 2.0, 1.0, 0.6, 0.0]])
    bounds = rotate_aligned_boxes(aligned, 0.3)[0]
    spun = box_corners(aligned)[0] @ rotz(0.3).T
    assert bounds[6] == 0.0
    np.testing.assert_allclose(bounds[:3], (spun.min(0) + spun.max(0)) / 2, atol=1e-9)
    np.testing.assert_allclose(bounds[3:6], spun.max(0) - spun.min(0), atol=1e-9)


# -- ScanNet ------------------------------------------------------------------------------------------------
def test_scannet_batch_keys_shapes_and_boxes(scannet_root: Path) -> None:
    dm = scannet_dm(scannet_root, batch_size=2, use_height=True)
    assert dm.num_classes == 18 and dm.num_heading_bins == 1 and dm.num_input_features == 1
    dm.setup("fit")
    assert dm.scene_names("train") == TRAIN and dm.scene_names("test") == VAL
    batch = next(iter(dm.train_dataloader()))
    shapes = {"points": (2, POINTS, 4), "vote_label": (2, POINTS, 9), "vote_label_mask": (2, POINTS),
              "center_label": (2, MAX_NUM_OBJ, 3), "heading_class_label": (2, MAX_NUM_OBJ),
              "heading_residual_label": (2, MAX_NUM_OBJ), "size_class_label": (2, MAX_NUM_OBJ),
              "size_residual_label": (2, MAX_NUM_OBJ, 3), "sem_cls_label": (2, MAX_NUM_OBJ),
              "box_label_mask": (2, MAX_NUM_OBJ), "gt_boxes": (2, MAX_NUM_OBJ, 7), "index": (2,)}
    assert {k: tuple(v.shape) for k, v in batch.items()} == shapes
    ints = {"vote_label_mask", "heading_class_label", "size_class_label", "sem_cls_label", "index"}
    for key, value in batch.items():
        assert value.dtype == (torch.int64 if key in ints else torch.float32), key

    sample = dm.dataset("val")[0]
    files = scannet_files(scannet_root, VAL[0])
    k = len(files["bbox"])
    assert 0 < k == int(sample["box_label_mask"].sum()) and not sample["box_label_mask"][k:].any()
    np.testing.assert_allclose(real_boxes(sample)[:, :6], files["bbox"][:, :6], atol=1e-5)
    assert not sample["gt_boxes"][:, 6].any() and not sample["heading_class_label"].any()
    assert sample["sem_cls_label"][:k].tolist() == [NYU40_TO_CLASS[int(v)] for v in files["bbox"][:, 6]]
    assert torch.equal(sample["size_class_label"], sample["sem_cls_label"])
    decoded = decode_boxes(sample["center_label"][:k].double(), sample["heading_class_label"][:k],
                           sample["heading_residual_label"][:k].double(), sample["size_class_label"][:k],
                           sample["size_residual_label"][:k].double(), dm.mean_sizes, 1)
    np.testing.assert_allclose(decoded.numpy(), real_boxes(sample), atol=1e-5)


def test_scannet_mean_sizes_come_from_the_training_boxes(scannet_root: Path) -> None:
    dm = scannet_dm(scannet_root)
    rows = np.concatenate([scannet_files(scannet_root, n)["bbox"] for n in TRAIN])
    cls = np.array([NYU40_TO_CLASS[int(v)] for v in rows[:, 6]])
    for c in range(18):
        expected = rows[cls == c, 3:6].mean(0) if (cls == c).any() else rows[:, 3:6].mean(0)
        np.testing.assert_allclose(dm.mean_sizes[c], expected, atol=1e-9)
    fixed = np.full((18, 3), 0.5)
    assert np.array_equal(scannet_dm(scannet_root, mean_sizes=fixed.tolist()).mean_sizes, fixed)
    with pytest.raises(ValueError, match="mean_sizes"):
        scannet_dm(scannet_root, mean_sizes=[[1.0, 1.0, 1.0]])


def test_scannet_votes_point_from_object_points_to_their_box_centres(scannet_root: Path) -> None:
    dm = scannet_dm(scannet_root, use_color=True)  # num_points = N: the sample is a permutation of the scene
    sample = dm.dataset("val")[0]
    files = scannet_files(scannet_root, VAL[0])
    assert_votes_reach_box_centres(sample)
    # the voting points are exactly the points of instances of the 18 classes
    sem, ins = files["sem_label"].astype(np.int64), files["ins_label"].astype(np.int64)
    voting = np.zeros(len(ins), dtype=bool)
    for inst in np.unique(ins[ins > 0]):
        members = ins == inst
        voting |= members & (int(sem[np.argmax(members)]) in NYU40_TO_CLASS)
    assert int(sample["vote_label_mask"].sum()) == int(voting.sum()) > 0
    expected = np.concatenate([files["vert"][:, :3], (files["vert"][:, 3:] - SCANNET_MEAN_COLOR_RGB) / 256,
                               voting[:, None]], axis=1)
    got = torch.cat([sample["points"], sample["vote_label_mask"][:, None].float()], dim=1).numpy()
    assert same_rows(got, expected)


def test_scannet_votes_use_the_file_boxes_when_they_are_larger_than_the_points(tmp_path: Path) -> None:
    """VoteNet's boxes bound all points before its 50k subsampling: votes go to their centres, not the points'."""
    points = sample_scene(make_scene(3, num_objects=(4, 6)), POINTS, seed=3)
    vert = np.concatenate([points.xyz, points.rgb.astype(np.float32)], axis=1)
    sem = nyu40_ids(points.semantic)
    tight = scannet_instance_boxes(points.xyz, sem, points.instance)
    assert len(tight) >= 2
    loose = tight.copy()
    loose[:, 3:6] += 0.1  # 5 cm more on each side ...
    loose[:, 0] += 0.03  # ... and not centred on the points
    write_votenet_scannet(tmp_path, "scene0000_00", vert, sem, points.instance, bbox=loose[1:])
    (tmp_path / "scannetv2_train.txt").write_text("scene0000_00\n")
    (tmp_path / "scannetv2_val.txt").write_text("scene0000_00\n")
    sample = scannet_dm(tmp_path).dataset("val")[0]
    targets = (sample["points"] + sample["vote_label"][:, :3]).double().numpy()[sample["vote_label_mask"] > 0]
    centres = np.unique(np.round(targets, 4), axis=0)
    # every boxed instance votes to its file box's centre; the one without a box to its points' bounds centre
    expected = np.concatenate([loose[1:, :3], tight[:1, :3]])
    assert same_rows(centres, np.round(expected, 4), atol=2e-4)


def test_scannet_augmentation_keeps_points_in_axis_aligned_boxes(scannet_root: Path) -> None:
    dm = scannet_dm(scannet_root)
    train, plain = dm.dataset("train"), dm.dataset("val")
    assert train.augment is not None and plain.augment is None
    xs = []
    for draw in range(6):
        sample = train[(0, draw)]
        assert_votes_reach_box_centres(sample)
        assert not sample["gt_boxes"][:, 6].any()
        xs.append(sample["points"][:, 0].mean().item())
    assert min(xs) < 0 < max(xs)  # both x signs seen: flips happen (the room is at x > 0 before flipping)
    again = train[(0, 3)]
    assert torch.equal(again["points"], train[(0, 3)]["points"])
    assert not torch.equal(again["points"], train[(0, 4)]["points"])


def test_aligned_augmentation_matches_the_transform_it_draws(scannet_root: Path) -> None:
    sample = scannet_dm(scannet_root, augment=False).dataset("train")[0]
    xyz, votes = sample["points"][:, :3].double().numpy(), sample["vote_label"].double().numpy()
    boxes = real_boxes(sample)
    aug = DetectionAugment(flip_x=True, flip_y=True, rotation_deg=5.0, axis_aligned=True)
    angle = math.radians(4.0)
    xyz2, votes2, boxes2, _ = aug.apply(xyz, votes, boxes, None, flip_x=True, flip_y=True, angle=angle, scale=1.0)
    expected = (xyz * [-1, -1, 1]) @ rotz(angle).T
    np.testing.assert_allclose(xyz2, expected, atol=1e-9)
    np.testing.assert_allclose((xyz2 + votes2[:, :3])[:5], ((xyz + votes[:, :3]) * [-1, -1, 1] @ rotz(angle).T)[:5],
                               atol=1e-9)
    for box, new in zip(boxes, boxes2):
        spun = (box_corners(box) * [-1, -1, 1]) @ rotz(angle).T
        np.testing.assert_allclose(new[:3], (spun.min(0) + spun.max(0)) / 2, atol=1e-9)
        np.testing.assert_allclose(new[3:6], spun.max(0) - spun.min(0), atol=1e-9)
        assert new[6] == 0.0


def test_height_is_z_above_the_floor_percentile(scannet_root: Path, sunrgbd_root: Path) -> None:
    sample = scannet_dm(scannet_root, use_height=True, augment=False).dataset("train")[1]
    z = scannet_files(scannet_root, TRAIN[1])["vert"][:, 2].astype(np.float64)
    floor = np.percentile(z, 0.99)
    assert floor > 0.4  # the shifted room: not trivially z
    np.testing.assert_allclose(sample["points"][:, 3], sample["points"][:, 2] - floor, atol=1e-5)
    # under scaling, height scales with z: z - height = the scaled floor, the same for every point
    dm = sunrgbd_dm(sunrgbd_root, use_height=True)
    pc = sunrgbd_files(sunrgbd_root, "train", dm.scene_names("train")[0])["pc"]
    floor = np.percentile(pc[:, 2], 0.99)
    assert floor < -1.0
    offsets = []
    for draw in range(4):
        points = dm.dataset("train")[(0, draw)]["points"].double()
        gap = points[:, 2] - points[:, 3]
        assert float(gap.max() - gap.min()) < 1e-5
        offsets.append(float(gap.mean()) / floor)
    assert min(offsets) >= 0.85 - 1e-6 and max(offsets) <= 1.15 + 1e-6 and max(offsets) - min(offsets) > 1e-3


def test_fewer_points_than_asked_are_sampled_with_replacement(scannet_root: Path) -> None:
    sample = scannet_dm(scannet_root, num_points=POINTS + 500, augment=False).dataset("val")[0]
    xyz = sample["points"].numpy()
    assert xyz.shape == (POINTS + 500, 3)
    unique = np.unique(xyz, axis=0)
    assert len(unique) <= POINTS < len(xyz)
    source = {tuple(row) for row in scannet_files(scannet_root, VAL[0])["vert"][:, :3]}
    assert all(tuple(row) in source for row in unique)


# -- SUN RGB-D ------------------------------------------------------------------------------------------------
def test_sunrgbd_boxes_votes_and_targets(sunrgbd_root: Path) -> None:
    dm = sunrgbd_dm(sunrgbd_root, use_color=True)
    assert dm.num_classes == 10 and dm.num_heading_bins == 12 and dm.num_input_features == 3
    assert dm.scene_names("train") == ["000001", "000002", "000003"] and dm.scene_names("val") == ["000004"]
    sample = dm.dataset("val")[0]
    files = sunrgbd_files(sunrgbd_root, "val", "000004")
    rows = files["bbox"]
    k = len(rows)
    assert k > 0 and int(sample["box_label_mask"].sum()) == k
    ours = np.column_stack([rows[:, :3], 2 * rows[:, 3:6], -rows[:, 6]])  # half sizes, clockwise heading
    np.testing.assert_allclose(box_corners(real_boxes(sample)), box_corners(ours), atol=1e-5)
    assert sample["sem_cls_label"][:k].tolist() == rows[:, 7].astype(int).tolist()
    decoded = decode_boxes(sample["center_label"][:k].double(), sample["heading_class_label"][:k],
                           sample["heading_residual_label"][:k].double(), sample["size_class_label"][:k],
                           sample["size_residual_label"][:k].double(), dm.mean_sizes, 12)
    np.testing.assert_allclose(box_corners(decoded.numpy()), box_corners(ours), atol=1e-5)
    assert_votes_reach_box_centres(sample)
    expected = np.concatenate([files["pc"][:, :3], files["pc"][:, 3:] - 0.5, files["votes"]], axis=1)
    got = torch.cat([sample["points"], sample["vote_label_mask"][:, None].float(), sample["vote_label"]], 1)
    assert same_rows(got.numpy(), expected)
    # mean sizes: full sizes of the training boxes, per class
    train = np.concatenate([sunrgbd_files(sunrgbd_root, "train", n)["bbox"] for n in dm.scene_names("train")])
    for c in np.unique(train[:, 7]).astype(int):
        np.testing.assert_allclose(dm.mean_sizes[c], 2 * train[train[:, 7] == c, 3:6].mean(0), atol=1e-9)


def test_sunrgbd_augmentation_keeps_votes_and_boxes_consistent(sunrgbd_root: Path) -> None:
    dm = sunrgbd_dm(sunrgbd_root)
    for draw in range(4):
        assert_votes_reach_box_centres(dm.dataset("train")[(1, draw)])
    # one explicit application: x flip mirrors the yaw, then a turn and a scale
    sample = sunrgbd_dm(sunrgbd_root, augment=False).dataset("train")[1]
    xyz, votes, boxes = (sample["points"][:, :3].double().numpy(), sample["vote_label"].double().numpy(),
                         real_boxes(sample))
    aug = DetectionAugment(flip_x=True, rotation_deg=30.0, scale_range=(0.85, 1.15))
    xyz2, votes2, boxes2, _ = aug.apply(xyz, votes, boxes, None, flip_x=True, flip_y=False, angle=0.4, scale=1.1)

    def move(p: np.ndarray) -> np.ndarray:
        return 1.1 * ((p * [-1, 1, 1]) @ rotz(0.4).T)

    np.testing.assert_allclose(xyz2, move(xyz), atol=1e-9)
    np.testing.assert_allclose(xyz2 + votes2[:, 3:6], move(xyz + votes[:, 3:6]), atol=1e-9)
    for box, new in zip(boxes, boxes2):
        assert same_rows(box_corners(new), move(box_corners(box)), atol=1e-9)
    np.testing.assert_allclose(np.cos(boxes2[:, 6]), np.cos(math.pi - boxes[:, 6] + 0.4), atol=1e-9)


def test_sunrgbd_v2_reads_its_own_folders(sunrgbd_root: Path) -> None:
    dm = sunrgbd_dm(sunrgbd_root, version="v2")
    assert dm.scene_names("train") == ["000007"] and dm.scene_names("test") == ["000008"]
    assert dm.dataset("val")[0]["box_label_mask"].sum() > 0


# -- datamodule behaviour ------------------------------------------------------------------------------------------
def test_training_order_is_seeded_and_resumable(scannet_root: Path) -> None:
    def batches(dm: VoteNetScanNetDataModule, n: int) -> list[torch.Tensor]:
        it = iter(dm.train_dataloader())
        return [next(it)["points"] for _ in range(n)]

    a, b = scannet_dm(scannet_root, num_points=512, batch_size=1), scannet_dm(scannet_root, num_points=512,
                                                                             batch_size=1)
    assert all(torch.equal(x, y) for x, y in zip(batches(a, 2), batches(b, 2)))
    state = a.state_dict()
    assert np.allclose(state["mean_sizes"], a.mean_sizes)
    following = batches(a, 2)
    c = scannet_dm(scannet_root, num_points=512, batch_size=1)
    c.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(batches(c, 2), following))


@pytest.mark.parametrize("name", ["votenet_scannet", "votenet_sunrgbd"])
def test_configs_build_the_datamodules(name: str, scannet_root: Path, sunrgbd_root: Path) -> None:
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "data" / f"{name}.yaml")
    cfg.root = str(scannet_root if name == "votenet_scannet" else sunrgbd_root)
    cfg.seed, cfg.num_points, cfg.num_workers = 0, 1000, 0
    dm = instantiate(cfg)
    assert isinstance(dm, VoteNetScanNetDataModule if name == "votenet_scannet" else VoteNetSUNRGBDDataModule)
    assert dm.dataset("train")[0]["points"].shape == (1000, 3)


# -- errors -----------------------------------------------------------------------------------------------------
@pytest.fixture()
def scannet_copy(scannet_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(scannet_root, tmp_path / "scannet"))


def test_a_scannet_box_file_with_wrong_columns_is_named(scannet_copy: Path) -> None:
    path = scannet_copy / SCANNET_FOLDER / f"{VAL[0]}_bbox.npy"
    np.save(path, np.load(path)[:, :6])
    dm = scannet_dm(scannet_copy)
    with pytest.raises(DataFormatError, match="6 columns, expected 7") as err:
        dm.dataset("val")[0]
    assert str(path) in str(err.value)
    train_box = scannet_copy / SCANNET_FOLDER / f"{TRAIN[0]}_bbox.npy"
    rows = np.load(train_box)
    rows[0, 6] = 1  # wall: not a detection class
    np.save(train_box, rows)
    with pytest.raises(DataFormatError, match="NYU40 id 1 ") as err:
        _ = scannet_dm(scannet_copy).mean_sizes
    assert str(train_box) in str(err.value)


def test_scannet_lists_and_missing_files_are_reported(scannet_copy: Path) -> None:
    (scannet_copy / "scannetv2_val.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="scannetv2_val.txt"):
        scannet_dm(scannet_copy).dataset("val")
    other = scannet_copy / "lists" / "val.txt"
    other.parent.mkdir()
    other.write_text(f"{VAL[0]}\nscene9999_00\n")
    with pytest.raises(DatasetLayoutError, match="scene9999_00_vert.npy") as err:
        scannet_dm(scannet_copy, split_files={"val": str(other)}).dataset("val")
    assert "listed in" in str(err.value)
    other.write_text(f"{VAL[0]}\nscans/{VAL[0]}\n")
    with pytest.raises(DataFormatError, match=r"val.txt:2"):
        scannet_dm(scannet_copy, split_files={"val": str(other)}).dataset("val")
    sem = scannet_copy / SCANNET_FOLDER / f"{TRAIN[1]}_sem_label.npy"
    np.save(sem, np.load(sem)[:-1])
    with pytest.raises(DataFormatError, match="sem_label.npy: has shape"):
        scannet_dm(scannet_copy).dataset("train")[(1, 0)]


def test_sunrgbd_bad_files_are_named(sunrgbd_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(sunrgbd_root, tmp_path / "sunrgbd"))
    folder = root / sunrgbd_folder("val", "v1")
    box_path = folder / "000004_bbox.npy"
    np.save(box_path, np.load(box_path)[:, :7])
    with pytest.raises(DataFormatError, match="7 columns, expected 8") as err:
        sunrgbd_dm(root).dataset("val")[0]
    assert str(box_path) in str(err.value)
    votes_path = root / sunrgbd_folder("train", "v1") / "000002_votes.npz"
    np.savez(votes_path, point_votes=np.zeros((10, 10)))
    with pytest.raises(DataFormatError, match="point_votes") as err:
        sunrgbd_dm(root).dataset("train")[(1, 0)]
    assert str(votes_path) in str(err.value)
    (root / sunrgbd_folder("train", "v1") / "000003_votes.npz").unlink()
    with pytest.raises(DatasetLayoutError, match="000003_votes.npz"):
        sunrgbd_dm(root).dataset("train")
    with pytest.raises(DatasetLayoutError, match="sunrgbd_pc_bbox_votes_50k_v2_train"):
        sunrgbd_dm(tmp_path / "nowhere", version="v2").dataset("train")
