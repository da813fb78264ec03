"""``python -m selfsup_pcd.synth``: every format writes its layout; runs are deterministic; --help is light."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import numpy as np

from selfsup_pcd.synth import FORMATS, main

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_formats_without_importing_torch() -> None:
    code = ("import sys, contextlib, io\nfrom selfsup_pcd import synth\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
            "    synth.main(['--help'])\nprint(buf.getvalue())\nprint('TORCH', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(f in out.stdout for f in FORMATS)
    assert "TORCH False" in out.stdout


def test_rejects_non_positive_counts(tmp_path: Path, capsys) -> None:
    assert main(["s3dis", "--out", str(tmp_path), "--scenes", "0"]) == 2
    assert "--scenes must be positive" in capsys.readouterr().err


def test_scannet_scenes_and_determinism(tmp_path: Path) -> None:
    for run in ("a", "b"):
        assert main(["scannet_scenes", "--out", str(tmp_path / run), "--scenes", "2", "--seed", "4"]) == 0
    scans = tmp_path / "a" / "scans"
    assert sorted(p.name for p in scans.iterdir()) == ["scene0000_00", "scene0001_00"]
    cmp = filecmp.dircmp(scans / "scene0001_00", tmp_path / "b" / "scans" / "scene0001_00")
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only and len(cmp.same_files) == 5
    main(["scannet_scenes", "--out", str(tmp_path / "c"), "--scenes", "1", "--seed", "5"])
    assert not filecmp.cmp(scans / "scene0000_00" / "scene0000_00_vh_clean_2.ply",
                           tmp_path / "c" / "scans" / "scene0000_00" / "scene0000_00_vh_clean_2.ply", shallow=False)


def test_s3dis_and_votenet_scannet(tmp_path: Path) -> None:
    main(["s3dis", "--out", str(tmp_path), "--scenes", "2", "--points", "3000"])
    areas = tmp_path / "Stanford3dDataset_v1.2_Aligned_Version"
    assert sorted(p.name for p in areas.iterdir()) == ["Area_1", "Area_2"]
    for area in areas.iterdir():
        (room,) = list(area.iterdir())
        assert (room / f"{room.name}.txt").is_file() and (room / "Annotations").is_dir()
        assert np.loadtxt(room / f"{room.name}.txt").shape == (3000, 6)
    main(["votenet_scannet", "--out", str(tmp_path), "--scenes", "1", "--points", "4000"])
    vert = np.load(tmp_path / "scannet_train_detection_data" / "scene0000_00_vert.npy")
    assert vert.shape == (4000, 6)


def test_modelnet40_h5_loads(tmp_path: Path) -> None:
    from selfsup_pcd.data.modelnet40 import ModelNet40DataModule
    from selfsup_pcd.data.synthetic import CLASS_NAMES

    main(["modelnet40_h5", "--out", str(tmp_path), "--shapes-per-class", "2"])
    dm = ModelNet40DataModule(tmp_path / "modelnet40_ply_hdf5_2048", format="h5", num_points=2048,
                              normalize=False, cache_dir=tmp_path / "cache", batch_size=2)
    dm.prepare_data()
    assert dm.class_names == CLASS_NAMES
    train = dm.dataset("train")
    assert len(train) == 2 * len(CLASS_NAMES) and len(dm.dataset("test")) == len(CLASS_NAMES)
    points = train[3]["points"].numpy()
    radius = np.linalg.norm(points - points.mean(0), axis=1).max()
    assert abs(radius - 1.0) < 1e-5  # unit sphere, as the release


def test_scannet_frames(tmp_path: Path, renderer: None) -> None:
    main(["scannet_frames", "--out", str(tmp_path), "--scenes", "1", "--frames", "3", "--width", "80",
          "--height", "60"])
    scene = tmp_path / "scannet_frames_25k" / "scene0000_00"
    assert sorted(p.name for p in (scene / "depth").iterdir()) == ["000000.png", "000100.png", "000200.png"]
    from PIL import Image

    with Image.open(scene / "depth" / "000100.png") as png:
        depth = np.array(png)
    assert depth.shape == (60, 80) and depth.dtype == np.uint16 and 300 < np.median(depth) < 12000


def test_votenet_sunrgbd_upright_frame(tmp_path: Path, renderer: None) -> None:
    from selfsup_pcd.data.writers.votenet import in_sunrgbd_box

    main(["votenet_sunrgbd", "--out", str(tmp_path), "--scenes", "1", "--frames", "5", "--width", "160",
          "--height", "120", "--points", "4000"])
    train = tmp_path / "sunrgbd_pc_bbox_votes_50k_v1_train"
    val = tmp_path / "sunrgbd_pc_bbox_votes_50k_v1_val"
    assert sorted(p.name for p in val.iterdir()) == ["000005_bbox.npy", "000005_pc.npz", "000005_votes.npz"]
    assert len(list(train.iterdir())) == 12
    boxes_seen = 0
    for k in range(1, 6):
        folder = val if k == 5 else train
        pc = np.load(folder / f"{k:06d}_pc.npz")["pc"]
        assert pc.shape == (4000, 6) and pc[:, 3:].min() >= 0 and pc[:, 3:].max() <= 1
        # upright camera frame: camera at the origin, z up, so the floor lies 1.2-1.6 m below it
        assert -1.65 < np.percentile(pc[:, 2], 1) < -1.15
        assert np.percentile(pc[:, 1], 5) > -0.5  # in front of the camera (+y)
        boxes = np.load(folder / f"{k:06d}_bbox.npy")
        votes = np.load(folder / f"{k:06d}_votes.npz")["point_votes"]
        for box in boxes:
            assert in_sunrgbd_box(pc, box).sum() >= 50  # each box holds the visible object's points
            assert box[2] - box[5] < -1.1  # standing on the floor
        boxes_seen += len(boxes)
        assert (votes[:, 0] > 0).any() == (len(boxes) > 0)
    assert boxes_seen > 0
