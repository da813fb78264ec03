"""Mesh datasets in their native layouts (ModelNet40 OFF, ShapeNetCore.v2 OBJ), written here with trimesh."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.modelnet40_mesh import ModelNet40MeshDataModule, load_mesh, normalize_mesh
from selfsup_pcd.data.shapenet_mesh import SYNSET_NAMES, SYNSETS, ShapeNetMeshDataModule, hash_split
from selfsup_pcd.render.cache import RenderSettings, build, open_cache, read_shape
from selfsup_pcd.render.renderer import shared_renderer


def box(extents=(2.0, 4.0, 6.0), centre=(5.0, 5.0, 5.0)) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=extents)
    mesh.apply_translation(centre)
    return mesh


def write_off(path: Path, mesh: trimesh.Trimesh, glued: bool = False) -> None:
    text = trimesh.exchange.off.export_off(mesh)
    assert text.startswith("OFF\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("OFF" + text[4:] if glued else text)  # glued: "OFF8 12 0" as in many ModelNet files


def modelnet_tree(root: Path) -> Path:
    """bed: 2 train (one with a glued header) + 1 test; chair: 1 train + 1 test."""
    write_off(root / "bed" / "train" / "bed_0001.off", box())
    write_off(root / "bed" / "train" / "bed_0002.off", box((1, 1, 3)), glued=True)
    write_off(root / "bed" / "test" / "bed_0516.off", box((3, 1, 1)))
    write_off(root / "chair" / "train" / "chair_0001.off", trimesh.creation.icosphere(2, radius=3.0))
    write_off(root / "chair" / "test" / "chair_0890.off", trimesh.creation.cylinder(1.0, 2.0))
    return root


def test_glued_off_header_reads_like_the_standard_one(tmp_path) -> None:
    mesh = box()
    write_off(tmp_path / "a.off", mesh)
    write_off(tmp_path / "b.off", mesh, glued=True)
    assert (tmp_path / "b.off").read_text().startswith("OFF8 12 0\n")
    a, b = load_mesh(tmp_path / "a.off"), load_mesh(tmp_path / "b.off")
    np.testing.assert_allclose(a.vertices, mesh.vertices)
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)


def test_modelnet40_mesh_layout_points_and_meshes(tmp_path) -> None:
    root = modelnet_tree(tmp_path / "ModelNet40")
    dm = ModelNet40MeshDataModule(root, num_points=256, use_normals=True, seed=0, batch_size=2)
    dm.prepare_data()
    train = dm.dataset("train")
    assert [p.name for p in train.files] == ["bed_0001.off", "bed_0002.off", "chair_0001.off"]
    assert train.labels.tolist() == [2, 2, 8]  # 40-class ids: bed = 2, chair = 8
    assert dm.labels("test").tolist() == [2, 8] and dm.num_classes == 40
    item = train[0]
    assert item["points"].shape == (256, 6) and item["label"] == 2 and item["index"] == 0
    xyz, normals = item["points"][:, :3].numpy(), item["points"][:, 3:].numpy()
    # the 2 x 4 x 6 box, z-up: after the rotation its long side (z) is y; centred; corners on the unit sphere
    half = np.array([1.0, 3.0, 2.0]) / np.sqrt(1 + 4 + 9)
    np.testing.assert_allclose(np.abs(xyz).max(axis=0), half, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    on_face = np.isclose(np.abs(xyz), half, atol=1e-5).any(axis=1)
    assert on_face.all()  # every sample lies on the surface
    mesh = train.mesh(0)
    np.testing.assert_allclose(np.abs(mesh.vertices).max(axis=0), half, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices, axis=1), 1.0, atol=1e-9)
    # deterministic per seed; another seed samples other points
    again = ModelNet40MeshDataModule(root, num_points=256, use_normals=True, seed=0).dataset("train")[0]
    other = ModelNet40MeshDataModule(root, num_points=256, use_normals=True, seed=1).dataset("train")[0]
    assert torch.equal(item["points"], again["points"])
    assert not torch.equal(item["points"], other["points"])
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape == (2, 256, 6)


def test_modelnet40_mesh_options_and_errors(tmp_path) -> None:
    root = modelnet_tree(tmp_path / "ModelNet40")
    only = ModelNet40MeshDataModule(root, classes=["chair"], exclude=["chair_0890"], num_points=32)
    assert only.labels("train").tolist() == [8]
    with pytest.raises(DatasetLayoutError, match="chair_0001.off"):
        only.dataset("test")  # the only test chair is excluded
    with pytest.raises(DatasetLayoutError, match="Expected layout"):
        ModelNet40MeshDataModule(tmp_path / "nowhere").prepare_data()
    (root / "bed" / "train" / "bed_0001.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n")
    dataset = ModelNet40MeshDataModule(root, num_points=32).dataset("train")
    with pytest.raises(DataFormatError, match="bed_0001.off: cannot be read as a mesh"):
        dataset[0]
    (root / "bed" / "train" / "bed_0001.off").write_text("OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n")
    with pytest.raises(DataFormatError, match="bed_0001.off: mesh has no faces"):
        dataset.mesh(0)


def shapenet_tree(root: Path) -> dict[str, list[str]]:
    """3 airplanes and 2 chairs as model_normalized.obj, plus one model folder without its mesh."""
    models = {"02691156": ["a1", "a2", "a3"], "03001627": ["c1", "c2"]}
    for synset, ids in models.items():
        for k, model in enumerate(ids):
            path = root / synset / model / "models" / "model_normalized.obj"
            path.parent.mkdir(parents=True)
            path.write_text(trimesh.exchange.obj.export_obj(box((1.0 + k, 1.0, 0.5), (0.0, 0.0, 0.0))))
    (root / "03001627" / "broken" / "models").mkdir(parents=True)
    return models


def test_shapenet_mesh_layout_split_file_and_labels(tmp_path, caplog) -> None:
    root = tmp_path / "ShapeNetCore.v2"
    shapenet_tree(root)
    csv = tmp_path / "all.csv"
    csv.write_text("id,synsetId,subSynsetId,modelId,split\n1,2691156,2691156,a1,train\n2,02691156,x,a2,test\n"
                   "3,02691156,x,a3,train\n4,03001627,x,c1,train\n5,03001627,x,c2,test\n6,03001627,x,broken,train\n")
    dm = ShapeNetMeshDataModule(root, split_file=csv, num_points=128)
    with caplog.at_level(logging.WARNING):
        train = dm.dataset("train")
    assert "without models/model_normalized.obj skipped" in caplog.text
    assert [p.parts[-3] for p in train.files] == ["a1", "a3", "c1"]
    assert train.labels.tolist() == [0, 0, 18]  # airplane = 0, chair = 18 (synsets sorted by id)
    assert dm.class_names[0] == "airplane" and dm.class_names[18] == "chair" and dm.num_classes == 55
    assert dm.labels("test").tolist() == [0, 18]
    points = train[1]["points"].numpy()
    # model a3: a 3 x 1 x 0.5 box, already y-up; farthest corner on the unit sphere
    half = np.array([1.5, 0.5, 0.25])
    np.testing.assert_allclose(np.abs(points).max(axis=0), half / np.linalg.norm(half), atol=1e-5)
    only = ShapeNetMeshDataModule(root, categories=["chair"], split_file=csv, num_points=16)
    assert only.labels("train").tolist() == [18]
    with pytest.raises(ValueError, match="unknown ShapeNetCore category 'sofas'"):
        ShapeNetMeshDataModule(root, categories=["sofas"]).dataset("train")
    bad = tmp_path / "bad.csv"
    bad.write_text("synsetId,modelId,split\n02691156,a1,holdout\n")
    with pytest.raises(DataFormatError, match="bad.csv:2: split 'holdout'"):
        ShapeNetMeshDataModule(root, split_file=bad).dataset("train")


def test_shapenet_hash_split_and_synset_table(tmp_path) -> None:
    assert len(SYNSET_NAMES) == 55 and len(set(SYNSET_NAMES.values())) == 55
    assert all(len(s) == 8 and s.isdigit() for s in SYNSETS)
    known = {"02691156": "airplane", "02958343": "car", "03001627": "chair", "04379243": "table",
             "04530566": "watercraft", "02747177": "trash_bin"}
    assert {s: SYNSET_NAMES[s] for s in known} == known
    assert [SYNSETS.index(s) for s in ("02691156", "03001627", "04554684")] == [0, 18, 54]
    ids = [f"model{i}" for i in range(2000)]
    splits = [hash_split(i, 0.2) for i in ids]
    assert abs(splits.count("test") / len(ids) - 0.2) < 0.03 and set(splits) == {"train", "test"}
    root = tmp_path / "ShapeNetCore.v2"
    models = shapenet_tree(root)
    dm = ShapeNetMeshDataModule(root, test_fraction=0.5, num_points=16)
    train = {p.parts[-3] for p in dm.dataset("train").files}
    test = {p.parts[-3] for p in dm.dataset("test").files}
    assert not train & test and train | test == {m for ids in models.values() for m in ids}


def test_render_cache_renders_the_meshes(tmp_path) -> None:
    root = modelnet_tree(tmp_path / "ModelNet40")
    dataset = ModelNet40MeshDataModule(root, num_points=128).dataset("test")
    settings = RenderSettings(num_views=2, resolution=16)
    path = build(dataset, tmp_path / "renders", "test", settings, workers=0, progress=False)
    renderer = shared_renderer(16, 16, background=settings.background, light_intensity=settings.light_intensity,
                               ambient=settings.ambient, supersample=settings.supersample)
    with open_cache(path) as f:
        for i in range(len(dataset)):
            shape = read_shape(f, i)
            direct = renderer.render_mesh(dataset.mesh(i), settings.cameras())
            assert np.array_equal(shape["views"], direct.rgb)  # the real surface, not point splats
            assert (shape["depth"] > 0).mean() > 0.1 and len(shape["pairs"]) > 0


def test_real_meshes_in_native_layouts(shared_data, tmp_path) -> None:
    meshes = shared_data / "meshes"
    # ModelNet40 layout: the pyvista ant written as OFF with the glued header of the ModelNet release
    ant = load_mesh(meshes / "pyvista" / "ant.ply")
    write_off(tmp_path / "ModelNet40" / "person" / "train" / "person_0001.off", ant, glued=True)
    write_off(tmp_path / "ModelNet40" / "person" / "test" / "person_0089.off", ant)
    # ShapeNetCore.v2 layout: the airplane OBJ (linked, not copied) as a model of synset 02691156
    obj = tmp_path / "ShapeNetCore.v2" / "02691156" / "plane0" / "models" / "model_normalized.obj"
    obj.parent.mkdir(parents=True)
    obj.symlink_to(meshes / "pymeshlab" / "airplane.obj")
    modelnet = ModelNet40MeshDataModule(tmp_path / "ModelNet40", num_points=512).dataset("train")
    shapenet = ShapeNetMeshDataModule(tmp_path / "ShapeNetCore.v2", test_fraction=0.0, num_points=512)
    shapenet = shapenet.dataset("train")
    for dataset, reference in ((modelnet, ant), (shapenet, load_mesh(meshes / "pymeshlab" / "airplane.obj"))):
        mesh = dataset.mesh(0)
        assert len(mesh.faces) == len(reference.faces)
        assert np.linalg.norm(mesh.vertices, axis=1).max() == pytest.approx(1.0)
        points = dataset[0]["points"].numpy()
        assert points.shape == (512, 3) and np.linalg.norm(points, axis=1).max() <= 1.0 + 1e-6
        # the points are surface samples of the very mesh the renderer gets (same frame)
        rng = np.random.default_rng(dataset.sample_seed(0))
        np.testing.assert_allclose(points, trimesh.sample.sample_surface(mesh, 512, seed=rng)[0], atol=1e-6)
    assert modelnet.labels.tolist() == [24] and shapenet.labels.tolist() == [0]  # person, airplane
    expected = normalize_mesh(ant, up_axis="z")
    np.testing.assert_allclose(modelnet.mesh(0).vertices, expected.vertices)
