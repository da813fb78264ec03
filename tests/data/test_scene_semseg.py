"""The scene semantic-segmentation base: block grid, training/evaluation blocks, voxels, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup_pcd.data.scene_semseg import IGNORE_INDEX, RoomBlocks, SceneCloud, SceneSemsegDataModule


def make_room(name: str, seed: int, size=(3.3, 2.2, 2.5), n: int = 6000, up_axis: int = 2) -> SceneCloud:
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-5, 5, 3)
    xyz = (lo + rng.uniform(0, 1, (n, 3)) * size).astype(np.float32)
    labels = (np.floor(xyz[:, (up_axis + 1) % 3] - lo[(up_axis + 1) % 3]).astype(np.int64) % 3)
    labels[rng.random(n) < 0.05] = IGNORE_INDEX
    rgb = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    return SceneCloud(name, xyz, rgb, labels)


class ToyScenes(SceneSemsegDataModule):
    def __init__(self, scenes: dict[str, list[SceneCloud]], **kwargs) -> None:
        super().__init__(**kwargs)
        self.by_split = scenes

    @property
    def class_names(self) -> list[str]:
        return ["a", "b", "c"]

    def load_scenes(self, split: str) -> list[SceneCloud]:
        return self.by_split[split]


@pytest.fixture
def toy() -> dict[str, list[SceneCloud]]:
    return {"train": [make_room("r0", 0), make_room("r1", 1, size=(1.7, 4.1, 2.0))],
            "test": [make_room("t0", 2, n=5000), make_room("t1", 3, size=(0.6, 0.7, 2.0), n=300)]}


@pytest.mark.parametrize("size,stride", [(1.0, 0.5), (1.0, 1.0), (1.0, 0.3)])
def test_block_grid_covers_every_point_and_blocks_hold_exactly_their_square(size, stride):
    room = make_room("r", 5)
    grid = RoomBlocks(room.xyz, 2, size, stride)
    blocks = grid.all_blocks()
    np.testing.assert_array_equal(grid.counts(blocks), [len(grid.points(b)) for b in blocks])
    seen = np.zeros(len(room.xyz), dtype=np.int64)
    shifted = room.xyz.astype(np.float64) - room.xyz.min(0)
    for block in blocks:
        idx = grid.points(block)
        seen[idx] += 1
        lo = grid.origin(block)
        last = block == np.asarray(grid.blocks_per_axis) - 1
        inside = np.all((shifted[:, :2] >= lo - 1e-6) & ((shifted[:, :2] < lo + size) | last), axis=1)
        assert set(idx.tolist()) == set(np.flatnonzero(inside).tolist())
    assert seen.min() >= 1
    # overlapping strides put interior points in several blocks
    if stride < size:
        assert seen.max() > 1


def test_training_blocks_have_num_points_nine_channels_and_are_within_one_block(toy):
    dm = ToyScenes(toy, num_points=512, min_block_points=100, block_size=1.0, block_stride=0.5)
    data = dm.dataset("train")
    scene_counts = [len(s.xyz) for s in toy["train"]]
    for k in range(0, len(data), 3):
        sample = data[(k, 7)]
        points, idx, room = sample["points"].numpy(), sample["point_index"].numpy(), int(sample["room"])
        scene = toy["train"][room]
        assert points.shape == (512, 9) and points.dtype == np.float32
        assert idx.max() < scene_counts[room]
        shifted = scene.xyz[idx].astype(np.float64) - scene.xyz.min(0)
        extent = scene.xyz.max(0) - scene.xyz.min(0)
        # block-centred x, y within half a block; z shifted to min 0; rgb; xyz / room max
        assert np.abs(points[:, :2]).max() <= 0.5 + 1e-5
        np.testing.assert_allclose(points[:, 2], shifted[:, 2], atol=1e-5)
        np.testing.assert_allclose(points[:, 3:6], scene.rgb[idx], atol=1e-6)
        np.testing.assert_allclose(points[:, 6:9], shifted / extent, atol=1e-5)
        assert points[:, 6:9].min() >= 0 and points[:, 6:9].max() <= 1 + 1e-6
        np.testing.assert_array_equal(sample["labels"].numpy(), scene.labels[idx])
        # the block spans at most block_size on the plane
        span = shifted[:, :2].max(0) - shifted[:, :2].min(0)
        assert np.all(span <= 1.0 + 1e-5)


def test_blocks_under_min_points_are_dropped_and_short_blocks_sampled_with_replacement():
    rng = np.random.default_rng(9)
    # three 1 m blocks along x with 150, 150 and 40 points
    xyz = np.concatenate([rng.uniform([0, 0, 0], [1, 1, 2], (150, 3)), rng.uniform([1, 0, 0], [2, 1, 2], (150, 3)),
                          rng.uniform([2, 0, 0], [2.9, 1, 2], (40, 3))]).astype(np.float32)
    xyz[0], xyz[-1] = [0, 0, 0], [2.95, 1, 2]  # fix the room's extent to 2.95 x 1 m
    room = SceneCloud("sparse", xyz, rng.uniform(0, 1, (len(xyz), 3)).astype(np.float32),
                      np.zeros(len(xyz), dtype=np.int64))
    dm = ToyScenes({"train": [room], "test": [room]}, num_points=256, min_block_points=100, block_size=1.0,
                   block_stride=1.0)
    grid = RoomBlocks(room.xyz, 2, 1.0, 1.0)
    counts = grid.counts(grid.all_blocks())
    assert sorted(counts.tolist()) == [40, 150, 150]
    data = dm.dataset("train")
    assert len(data) == 2 and data.dropped == 1
    assert sorted(data.entries[:, 1].tolist()) == [0, 1]
    for k in range(2):
        sample = data[k]
        idx = sample["point_index"].numpy()
        block_points = grid.points(data.entries[k, 1:])
        assert len(idx) == 256 and len(block_points) == 150  # all of the block plus repeats
        assert set(idx.tolist()) == set(block_points.tolist())
    # evaluation keeps the sparse block
    assert sorted(set(dm.dataset("test").entries[:, 1].tolist())) == [0, 1, 2]


def test_training_samples_are_reproducible_and_differ_between_epochs(toy):
    a = ToyScenes(toy, num_points=256, seed=3).dataset("train")
    b = ToyScenes(toy, num_points=256, seed=3).dataset("train")
    assert torch.equal(a[(2, 11)]["point_index"], b[(2, 11)]["point_index"])
    assert not torch.equal(a[(2, 11)]["point_index"], a[(2, 12)]["point_index"])


def test_eval_blocks_cover_every_original_point(toy):
    dm = ToyScenes(toy, num_points=256, eval_stride=0.5)
    data = dm.dataset("test")
    labels = dm.room_labels("test")
    seen = [np.zeros(len(lab), dtype=bool) for lab in labels]
    for k in range(len(data)):
        sample = data[k]
        assert sample["points"].shape == (256, 9)
        room, idx = int(sample["room"]), sample["point_index"].numpy()
        np.testing.assert_array_equal(sample["labels"].numpy(), labels[room][idx])
        seen[room][idx] = True
    assert all(s.all() for s in seen)
    # the 300-point room is smaller than a block: one block, two chunks (256 + padded 44)
    assert (data.entries[:, 0] == 1).sum() == 2


def test_val_maps_to_val_split_and_loader_batches(toy):
    dm = ToyScenes(toy, num_points=128, batch_size=4, eval_batch_size=5)
    assert dm.room_labels("val")[0] is not None and len(dm.room_labels("val")) == 2
    assert dm.num_classes == 3 and dm.ignore_index == IGNORE_INDEX
    batch = next(iter(dm.val_dataloader()))
    assert batch["points"].shape == (5, 128, 9) and batch["point_index"].shape == (5, 128)
    assert batch["room"].shape == (5,) and batch["labels"].dtype == torch.int64
    train = next(iter(dm.train_dataloader()))
    assert train["points"].shape == (4, 128, 9)


def test_train_loader_resumes_from_state_dict(toy):
    dm = ToyScenes(toy, num_points=64, batch_size=4, seed=1)
    first = [b["point_index"] for b in dm.train_dataloader()]
    state = dm.state_dict()
    second = [b["point_index"] for b in dm.train_dataloader()]
    assert not all(torch.equal(x, y) for x, y in zip(first, second))
    other = ToyScenes(toy, num_points=64, batch_size=4, seed=1)
    other.load_state_dict(state)
    again = [b["point_index"] for b in other.train_dataloader()]
    assert all(torch.equal(x, y) for x, y in zip(second, again))


def test_up_axis_chooses_the_block_plane(toy):
    room = make_room("sideways", 4, size=(1.0, 3.0, 2.0), up_axis=1)
    dm = ToyScenes({"train": [room], "test": [room]}, num_points=128, up_axis=1, block_stride=1.0)
    grid = dm.dataset("test").rooms.grids[0]
    assert grid.axes == [0, 2] and grid.blocks_per_axis == [1, 2]
    sample = dm.dataset("test")[0]
    shifted = room.xyz[sample["point_index"].numpy()] - room.xyz.min(0)
    np.testing.assert_allclose(sample["points"][:, 1].numpy(), shifted[:, 1], atol=1e-5)  # up axis: not centred


def test_bad_arguments_are_refused(toy):
    with pytest.raises(ValueError, match="mode"):
        ToyScenes(toy, mode="rooms")
    with pytest.raises(ValueError, match="stride"):
        ToyScenes(toy, block_stride=2.0)


def test_voxel_mode_inverse_and_labels_are_consistent(toy):
    dm = ToyScenes(toy, mode="voxels", voxel_size=0.1, batch_size=2, label_mode="majority")
    scene = toy["test"][0]
    sample = dm.dataset("test")[0]
    inverse, labels = sample["inverse"].numpy(), sample["labels"].numpy()
    np.testing.assert_array_equal(sample["point_labels"].numpy(), scene.labels)
    assert len(inverse) == len(scene.xyz) and inverse.max() == len(sample["coords"]) - 1
    # evaluation: no augmentation, so each point's voxel is floor((xyz - min) / size)
    expected = np.floor((scene.xyz.astype(np.float64) - scene.xyz.min(0)) / 0.1).astype(np.int64)
    np.testing.assert_array_equal(sample["coords"].numpy()[inverse], expected)
    # a voxel's label is a label of one of its points; feats are the centred mean colour
    for v in np.unique(inverse)[:50]:
        members = scene.labels[inverse == v]
        assert labels[v] in members.tolist() or (labels[v] == IGNORE_INDEX and (members == IGNORE_INDEX).all())
        np.testing.assert_allclose(sample["feats"][v].numpy(), scene.rgb[inverse == v].mean(0) - 0.5, atol=1e-5)
    batch = next(iter(dm.test_dataloader()))
    assert batch["coords"].shape[1] == 4 and batch["room"].tolist() == [0, 1]
    assert len(batch["inverse"]) == len(batch["point_labels"]) == sum(len(s.xyz) for s in toy["test"])
    assert (batch["labels"][batch["inverse"]] != IGNORE_INDEX).float().mean() > 0.5


def test_voxel_training_augments_reproducibly_and_keeps_labels(toy):
    dm = ToyScenes(toy, mode="voxels", voxel_size=0.1, features="ones")
    data = dm.dataset("train")
    a, b, c = data[(0, 5)], data[(0, 5)], data[(0, 6)]
    assert torch.equal(a["coords"], b["coords"]) and not torch.equal(a["coords"], c["coords"])
    assert a["feats"].shape[1] == 1
    np.testing.assert_array_equal(a["point_labels"].numpy(), toy["train"][0].labels)
    # rotation about z and scale 0.9-1.1 keep the room's height within 10 %
    height = float(np.ptp(toy["train"][0].xyz[:, 2]))
    assert 0.85 * height / 0.1 <= float(np.ptp(a["coords"][:, 2].numpy())) <= 1.15 * height / 0.1 + 1
    with pytest.raises(ValueError, match="normals"):
        ToyScenes(toy, mode="voxels", features="normals").dataset("train")


def test_worker_processes_give_the_same_batches(toy):
    batches = []
    for workers in (0, 2):
        dm = ToyScenes(toy, num_points=64, batch_size=4, seed=2, num_workers=workers)
        batches.append([b["point_index"] for b in dm.train_dataloader()])
    assert len(batches[0]) == len(batches[1]) > 1
    assert all(torch.equal(x, y) for x, y in zip(*batches))
