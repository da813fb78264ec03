"""Procedural indoor scenes: deterministic, objects apart and inside the room, tight boxes, coherent labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from selfsup_pcd.data.synthetic.scenes import (
    FURNITURE_CLASSES,
    SCENE_CLASSES,
    STRUCTURE_CLASSES,
    Scene,
    make_scene,
    sample_scene,
    sample_scene_points,
)

SEEDS = range(6)


@pytest.fixture(scope="module")
def scenes() -> dict[int, Scene]:
    return {seed: make_scene(seed) for seed in SEEDS}


def to_local(xyz: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Coordinates in the box frame (independent of the module's own helper)."""
    c, s = math.cos(box[6]), math.sin(box[6])
    d = np.asarray(xyz, dtype=np.float64) - box[:3]
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)


def footprint_mask(box: np.ndarray, grid: np.ndarray) -> np.ndarray:
    local = to_local(np.concatenate([grid, np.full((len(grid), 1), box[2])], axis=1), box)
    return np.all(np.abs(local[:, :2]) <= box[3:5] / 2, axis=1)


def test_same_seed_same_scene_and_different_seeds_differ() -> None:
    a, b, c = make_scene(7), make_scene(7), make_scene(8)
    np.testing.assert_array_equal(a.mesh.vertices, b.mesh.vertices)
    np.testing.assert_array_equal(a.mesh.faces, b.mesh.faces)
    np.testing.assert_array_equal(a.mesh.visual.vertex_colors, b.mesh.visual.vertex_colors)
    np.testing.assert_array_equal(a.vertex_semantic, b.vertex_semantic)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    pa, pb = sample_scene_points(a, 2000, seed=3), sample_scene_points(b, 2000, seed=3)
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.room_size, c.room_size)


def test_room_size_and_object_count(scenes: dict[int, Scene]) -> None:
    for scene in scenes.values():
        L, W, H = scene.room_size
        assert 4.0 <= L <= 8.0 and 4.0 <= W <= 8.0 and 2.5 <= H <= 3.0
        assert 1 <= len(scene.objects) <= 10
        assert [o.instance_id for o in scene.objects] == list(range(1, len(scene.objects) + 1))
    assert len(make_scene(0, num_objects=(0, 0)).objects) == 0
    with pytest.raises(ValueError, match="num_objects"):
        make_scene(0, num_objects=(3, 2))


def test_many_classes_occur() -> None:
    seen = {o.class_name for seed in range(12) for o in make_scene(seed).objects}
    assert len(seen) >= 9, seen
    assert seen <= set(FURNITURE_CLASSES)


def test_objects_do_not_overlap_and_lie_in_the_room(scenes: dict[int, Scene]) -> None:
    for scene in scenes.values():
        L, W, H = scene.room_size
        xs, ys = np.meshgrid(np.arange(0, L, 0.02), np.arange(0, W, 0.02), indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        cover = np.zeros(len(grid), dtype=np.int64)
        for obj in scene.objects:
            cover += footprint_mask(obj.box, grid)
            v = np.asarray(obj.mesh.vertices)
            assert v.min(0)[:2].min() > 0 and np.all(v.max(0) < scene.room_size), obj.class_name
            assert abs(v[:, 2].min()) < 1e-9  # standing on the floor
            for other in scene.objects:
                if other is not obj:
                    assert not np.any(np.all(np.abs(to_local(v, other.box)) < other.box[3:6] / 2, axis=1))
        assert cover.max() <= 1  # footprints (on a 2 cm grid) are disjoint


def test_boxes_are_tight_around_each_object(scenes: dict[int, Scene]) -> None:
    for scene in scenes.values():
        for obj in scene.objects:
            local = to_local(np.asarray(obj.mesh.vertices), obj.box)
            np.testing.assert_allclose(local.min(0), -obj.box[3:6] / 2, atol=1e-6)
            np.testing.assert_allclose(local.max(0), obj.box[3:6] / 2, atol=1e-6)
            assert -math.pi <= obj.box[6] <= math.pi


def test_sampled_points_fall_in_their_objects_box(scenes: dict[int, Scene]) -> None:
    for seed, scene in scenes.items():
        xyz, _, _, instance = sample_scene_points(scene, 30_000, seed=seed)
        for obj in scene.objects:
            mine = xyz[instance == obj.instance_id]
            assert len(mine) > 0, obj.class_name
            inside = np.all(np.abs(to_local(mine, obj.box)) <= obj.box[3:6] / 2 + 1e-5, axis=1)
            assert inside.mean() >= 0.99, (obj.class_name, inside.mean())


def test_labels_are_consistent(scenes: dict[int, Scene]) -> None:
    structure = {SCENE_CLASSES.index(n) for n in STRUCTURE_CLASSES}
    for seed, scene in scenes.items():
        points = sample_scene(scene, 20_000, seed=seed)
        assert points.xyz.dtype == np.float32 and points.rgb.dtype == np.uint8
        assert points.xyz.shape == (20_000, 3) and points.rgb.shape == (20_000, 3)
        assert set(np.unique(points.semantic[points.instance == 0])) <= structure
        for obj in scene.objects:
            classes = np.unique(points.semantic[points.instance == obj.instance_id])
            assert classes.tolist() == [obj.class_id]
            assert np.unique(scene.vertex_semantic[scene.vertex_instance == obj.instance_id]).tolist() == [obj.class_id]
        assert set(np.unique(points.semantic[points.instance > 0])).isdisjoint(structure)
        # one part per wall / floor / ceiling / object; parts never mix classes
        for part in np.unique(points.part):
            assert len(np.unique(points.semantic[points.part == part])) == 1


def test_sampling_is_area_weighted_and_colours_follow_classes(scenes: dict[int, Scene]) -> None:
    scene = scenes[0]
    L, W, H = scene.room_size
    area = scene.mesh.area
    points = sample_scene(scene, 40_000, seed=1)
    floor = points.semantic == SCENE_CLASSES.index("floor")
    assert abs(floor.mean() - L * W / area) < 0.015
    assert np.all(np.abs(points.xyz[floor, 2]) < 1e-5)
    walls = points.semantic == SCENE_CLASSES.index("wall")
    assert abs(walls.mean() - 2 * (L + W) * H / area) < 0.015
    # per-class colours: small spread within a part, clearly different between floor and walls
    floor_rgb, wall_rgb = points.rgb[floor].astype(float), points.rgb[points.part == 1].astype(float)
    assert floor_rgb.std(axis=0).max() < 15 and wall_rgb.std(axis=0).max() < 15
    assert np.abs(floor_rgb.mean(0) - wall_rgb.mean(0)).max() > 30
