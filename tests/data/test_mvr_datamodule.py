"""MVR data: pair sampling (random / fps / one_per_point, shortage policies, seeds, shuffle control), view
subsets, point subsampling, exclusion lists and the render cache built from nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from selfsup_pcd.data.mvr import MVRDataModule, collate_shapes, sample_object_pairs
from selfsup_pcd.render.cache import RenderCacheError

SOURCE = {"_target_": "selfsup_pcd.data.synthetic.ProceduralShapesDataModule", "num_points": 128,
          "train_per_class": 1, "test_per_class": 1, "seed": 0}
RENDER = {"num_views": 6, "resolution": 16, "workers": 0}


def make_dm(render_dir, **kwargs) -> MVRDataModule:
    options = {"source": SOURCE, "source_name": "procedural", "render": RENDER, "num_points": 128,
               "batch_size": 4, "seed": 0, **kwargs}
    options["pairs"] = {"num_pairs": 48, **kwargs.get("pairs", {})}
    return MVRDataModule(render_dir, **options)


@pytest.fixture(scope="module")
def render_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mvr_renders")
    make_dm(path).prepare_data()
    return path


def first_batch(dm: MVRDataModule, size: int = 4) -> dict:
    dm.setup("fit")
    dataset = dm.dataset("train")
    return collate_shapes([dataset[i] for i in range(size)])


# -- one object ------------------------------------------------------------------------------------
def synthetic_object(num_points: int = 200, pairs_per_point: int = 3, seed: int = 0):
    """Points on a sphere; each point seen in `pairs_per_point` distinct views at random pixels."""
    rng = np.random.default_rng(seed)
    xyz = rng.standard_normal((num_points, 3))
    xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
    rows = []
    for p in range(num_points):
        for v in rng.choice(12, pairs_per_point, replace=False):
            rows.append([v, rng.integers(32), rng.integers(32), p])
    return torch.tensor(rows, dtype=torch.long), torch.tensor(xyz, dtype=torch.float32)


def chosen_views(full: dict, out: dict, b: int) -> list[int]:
    """Original view index of each view of ``out``'s shape ``b`` (found by comparing the images)."""
    num = out["views"].shape[1]
    return [next(v for v in range(full["views"].shape[1]) if torch.equal(full["views"][b, v], out["views"][b, k]))
            for k in range(num)]


def min_pairwise_distance(xyz: torch.Tensor) -> float:
    d = torch.cdist(xyz, xyz) + torch.eye(len(xyz)) * 1e9
    return float(d.min())


def test_random_sampling_draws_distinct_rows_of_the_table() -> None:
    table, xyz = synthetic_object()
    rows, short = sample_object_pairs(table, xyz, 256, "random", torch.Generator().manual_seed(0))
    assert not short and rows.shape == (256, 4)
    as_set = {tuple(r) for r in rows.tolist()}
    assert len(as_set) == 256 and as_set <= {tuple(r) for r in table.tolist()}


def test_fps_takes_every_pair_of_well_spread_points() -> None:
    table, xyz = synthetic_object(num_points=300, pairs_per_point=3)
    rows, _ = sample_object_pairs(table, xyz, 90, "fps", torch.Generator().manual_seed(0))
    points = rows[:, 3].unique()
    assert len(points) == 30  # 3 pairs per point: 30 distinct points, each with all of its pairs
    for p in points.tolist():
        assert (rows[:, 3] == p).sum() == 3
    random_points = torch.randperm(300, generator=torch.Generator().manual_seed(1))[:30]
    assert min_pairwise_distance(xyz[points]) > 1.5 * min_pairwise_distance(xyz[random_points])


def test_one_per_point_gives_distinct_points_then_rounds() -> None:
    table, xyz = synthetic_object(num_points=300, pairs_per_point=3)
    rows, _ = sample_object_pairs(table, xyz, 128, "one_per_point", torch.Generator().manual_seed(0))
    assert len(rows[:, 3].unique()) == 128
    random_points = torch.randperm(300, generator=torch.Generator().manual_seed(1))[:128]
    assert min_pairwise_distance(xyz[rows[:, 3]]) > min_pairwise_distance(xyz[random_points])
    # fewer points than pairs: round robin, every point used 2 or 3 times, no row twice
    rows, short = sample_object_pairs(table[:150], xyz, 120, "one_per_point", torch.Generator().manual_seed(0))
    counts = torch.bincount(rows[:, 3], minlength=50)[:50]
    assert not short and counts.min() >= 2 and counts.max() <= 3
    assert len({tuple(r) for r in rows.tolist()}) == 120


@pytest.mark.parametrize("method", ["random", "fps", "one_per_point"])
def test_shortage_policies(method) -> None:
    table, xyz = synthetic_object(num_points=20, pairs_per_point=2)  # 40 pairs < 64
    rows, short = sample_object_pairs(table, xyz, 64, method, torch.Generator().manual_seed(0), "replace")
    assert short and rows.shape == (64, 4)
    assert {tuple(r) for r in rows.tolist()} == {tuple(r) for r in table.tolist()}  # all pairs, then repeats
    assert sample_object_pairs(table, xyz, 64, method, torch.Generator(), "skip") == (None, True)
    with pytest.raises(ValueError, match="fewer than num_pairs=64"):
        sample_object_pairs(table, xyz, 64, method, torch.Generator(), "error")


# -- the datamodule on a real render cache ------------------------------------------------------------
def test_prepare_data_renders_once_and_refuses_other_settings(render_dir) -> None:
    cache = render_dir / "train.h5"
    stamp = cache.stat().st_mtime_ns
    make_dm(render_dir).prepare_data()  # finished cache: checked, not rebuilt
    assert cache.stat().st_mtime_ns == stamp
    with pytest.raises(RenderCacheError, match="other settings"):
        make_dm(render_dir, render={**RENDER, "elevation_deg": 10.0}).prepare_data()


@pytest.mark.parametrize("sampling", ["random", "fps", "one_per_point"])
def test_same_seed_same_pairs_and_pairs_hit_rendered_pixels(render_dir, sampling) -> None:
    first = make_dm(render_dir, pairs={"sampling": sampling}).sample_batch(first_batch(make_dm(render_dir)))
    again = make_dm(render_dir, pairs={"sampling": sampling}).sample_batch(first_batch(make_dm(render_dir)))
    other = make_dm(render_dir, seed=1, pairs={"sampling": sampling}).sample_batch(first_batch(make_dm(render_dir)))
    assert torch.equal(first["pairs"], again["pairs"]) and not torch.equal(first["pairs"], other["pairs"])
    assert first["pairs"].shape == (4, 48, 4) and int(first["pair_shortage"]) == 0
    b, p = torch.meshgrid(torch.arange(4), torch.arange(48), indexing="ij")
    view, row, col = (first["pairs"][..., i] for i in range(3))
    pixels = first["views"][b, view, row, col]  # (B, P, 3) uint8: every paired pixel shows the surface
    assert (pixels.amax(-1) > 0).all()


def test_view_subset_keeps_views_and_pairs_consistent(render_dir) -> None:
    full = first_batch(make_dm(render_dir))
    dm = make_dm(render_dir, pairs={"num_views": 3, "min_view_pairs": 0})
    out = dm.sample_batch(full)
    assert out["views"].shape[1] == 3 and out["pairs"][..., 0].max() < 3
    # every chosen view is one of the shape's rendered views, and the pairs use only those
    for b in range(4):
        chosen = chosen_views(full, out, b)
        table = torch.split(full["pairs"], full["pairs_count"].tolist())[b]
        rows = {tuple(r) for r in table.tolist()}
        for v, r, c, i in out["pairs"][b].tolist():
            assert (chosen[v], r, c, i) in rows


def test_shuffle_control_permutes_points_among_the_same_pixels(render_dir) -> None:
    batch = first_batch(make_dm(render_dir))
    plain = make_dm(render_dir).sample_batch(batch)
    shuffled = make_dm(render_dir, pairs={"shuffle": True}).sample_batch(batch)
    a, s = plain["pairs"][0], shuffled["pairs"][0]  # first object: same draws before the shuffle
    assert torch.equal(a[:, :3], s[:, :3])
    assert torch.equal(a[:, 3].sort().values, s[:, 3].sort().values) and not torch.equal(a[:, 3], s[:, 3])


def test_skip_drops_short_shapes_and_error_names_them(render_dir) -> None:
    batch = first_batch(make_dm(render_dir))
    need = int(batch["pairs_count"].min()) + 1  # the poorest shape is short
    out = make_dm(render_dir, pairs={"num_pairs": need, "on_shortage": "skip"}).sample_batch(batch)
    assert int(out["pair_shortage"]) >= 1 and out["pairs"].shape[0] == 4 - int(out["pair_shortage"])
    assert out["points"].shape[0] == out["views"].shape[0] == out["label"].shape[0] == out["pairs"].shape[0]
    with pytest.raises(ValueError, match="shape .*fewer than num_pairs"):
        make_dm(render_dir, pairs={"num_pairs": need, "on_shortage": "error"}).sample_batch(batch)
    replaced = make_dm(render_dir, pairs={"num_pairs": need}).sample_batch(batch)
    assert replaced["pairs"].shape == (4, need, 4) and int(replaced["pair_shortage"]) >= 1


def test_random_subsample_reindexes_pairs(render_dir) -> None:
    batch = first_batch(make_dm(render_dir))
    out = make_dm(render_dir, num_points=64, subsample="random").sample_batch(batch)
    assert out["points"].shape == (4, 64, 3) and out["pairs"][..., 3].max() < 64
    for b in range(4):  # each sampled pair's point is a row of the full cloud that this pixel saw
        table = torch.split(batch["pairs"], batch["pairs_count"].tolist())[b]
        chosen = chosen_views(batch, out, b)
        for v, r, c, i in out["pairs"][b].tolist()[:10]:
            full_rows = table[(table[:, 0] == chosen[v]) & (table[:, 1] == r) & (table[:, 2] == c), 3]
            assert any(torch.equal(batch["points"][b, j], out["points"][b, i]) for j in full_rows.tolist())


def test_points_centred_unit_sphere_first_rows_and_axis_order(render_dir) -> None:
    plain = make_dm(render_dir, num_points=100).dataset("train")[0]
    swapped = make_dm(render_dir, num_points=100, axis_order=[0, 2, 1]).dataset("train")[0]
    assert plain["points"].shape == (100, 3) and plain["pairs"][:, 3].max() < 100
    assert torch.allclose(swapped["points"], plain["points"][:, [0, 2, 1]], atol=1e-6)
    full = make_dm(render_dir).dataset("train")[0]["points"]
    assert torch.allclose(full.mean(0), torch.zeros(3), atol=1e-5)
    assert full.norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(plain["points"], full[:100])  # quirk 11: the first rows, normalised as a whole


def test_exclude_list_drops_listed_ids(render_dir, tmp_path) -> None:
    ids = [f"shape_{i:04d}" for i in range(12)]
    (render_dir / "train.ids.json").write_text(json.dumps(ids))
    try:
        listed = tmp_path / "exclude.txt"
        listed.write_text("shape_0003  # a comment\nshape_0007\nnot_in_the_data\n")
        dm = make_dm(render_dir, exclude_list=str(listed))
        dataset = dm.dataset("train")
        assert len(dataset) == 10 and 3 not in dataset.indices and 7 not in dataset.indices
        assert len(make_dm(render_dir, exclude_list=["shape_0000"]).dataset("train")) == 11
    finally:
        (render_dir / "train.ids.json").unlink()
