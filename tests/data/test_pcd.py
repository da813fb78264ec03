"""PCD reader/writer: the real mOSD Kinect files (against PROVENANCE.md), round trips and errors naming file/line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from selfsup_pcd.data.errors import DataFormatError
from selfsup_pcd.data.pcd import pack_rgb, read_pcd, unpack_rgb, write_pcd


def provenance_table(mosd: Path) -> dict[str, tuple[int, int, int, dict[int, int]]]:
    """file -> (width, height, valid points, label counts) from the table in PROVENANCE.md."""
    rows = {}
    for line in (mosd / "PROVENANCE.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"learn\d+\.pcd", cells[0]):
            width, height = (int(v) for v in cells[3].split("x"))
            counts = dict((int(k), int(v)) for k, v in (item.split(":") for item in cells[5].split(", ")))
            rows[cells[0]] = (width, height, int(cells[4]), counts)
    return rows


@pytest.fixture(scope="module")
def mosd_dir() -> Path:
    path = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mosd").resolve()
    if not (path / "learn").is_dir():
        pytest.skip(f"mOSD files not found at {path}/learn (shared real-data pack beside the repository)")
    return path


def test_real_mosd_files_match_the_provenance_table(mosd_dir):
    table = provenance_table(mosd_dir)
    assert len(table) == 12
    for name, (width, height, valid, counts) in table.items():
        cloud = read_pcd(mosd_dir / "learn" / name)
        assert (cloud.header.width, cloud.header.height, cloud.header.data) == (width, height, "binary_compressed")
        assert cloud.fields == ["label", "x", "y", "z", "rgba"]
        labels = cloud["label"]
        got = dict(zip(*(v.tolist() for v in np.unique(labels, return_counts=True))))
        assert got == counts, name
        # invalid pixels are exactly the label-0 points. z is NaN on all of them; x and y too except in
        # learn25, where 72,276 invalid pixels have x = y = -0.0 (PROVENANCE.md says all three are NaN)
        invalid = ~np.isfinite(np.stack([cloud["x"], cloud["y"], cloud["z"]], 1)).all(1)
        assert np.array_equal(invalid, np.isnan(cloud["z"]))
        assert np.array_equal(invalid, labels == 0) and int((~invalid).sum()) == valid
        assert (cloud["rgba"] >> 24).max() == 0  # 0x00RRGGBB
        assert np.nanmin(cloud["z"]) > 0.3 and np.nanmax(cloud["z"]) < 2.0  # metres, in front of the camera


def structured(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4"), ("label", "<u2"),
                              ("offset", "<i8"), ("normal", "<f8", (3,))])
    for key in "xyz":
        data[key] = rng.normal(0, 3, n)
    data["x"][::5] = np.nan
    data["rgb"] = pack_rgb(rng.integers(0, 256, (n, 3)))
    data["label"] = rng.integers(0, 65535, n)
    data["offset"] = rng.integers(-(2**40), 2**40, n)
    data["normal"] = rng.normal(size=(n, 3))
    return data


@pytest.mark.parametrize("data_format", ["ascii", "binary", "binary_compressed"])
def test_round_trip(tmp_path, data_format):
    data = structured(60)
    path = write_pcd(tmp_path / f"c.{data_format}.pcd", data, data_format, width=10, height=6)
    cloud = read_pcd(path)
    assert (cloud.header.width, cloud.header.height, cloud.header.points, cloud.header.data) == (10, 6, 60,
                                                                                                  data_format)
    assert cloud.data.dtype == data.dtype
    for name in data.dtype.names:
        np.testing.assert_array_equal(cloud[name], data[name])  # NaN compares equal here


def test_compressed_file_is_column_major_lzf(tmp_path):
    lzf = pytest.importorskip("lzf")
    data = structured(50)
    raw = read_raw_body(write_pcd(tmp_path / "c.pcd", data, "binary_compressed"))
    size, full = np.frombuffer(raw[:8], "<u4").tolist()
    plain = lzf.decompress(raw[8:8 + size], full)
    np.testing.assert_array_equal(np.frombuffer(plain, "<f4", count=50), data["x"])  # x first, all points
    np.testing.assert_array_equal(np.frombuffer(plain, "<f4", count=50, offset=200), data["y"])


def read_raw_body(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[raw.index(b"DATA binary_compressed\n") + len("DATA binary_compressed\n"):]


def test_unpack_rgb_of_uint_and_float_packing():
    rgb = np.array([[255, 0, 10], [1, 2, 3], [128, 64, 32]], dtype=np.uint8)
    packed = pack_rgb(rgb)
    np.testing.assert_array_equal(unpack_rgb(packed), rgb)
    np.testing.assert_array_equal(unpack_rgb(packed.view(np.float32)), rgb)  # PCL's float "rgb" field


HEADER = """# .PCD v0.7
VERSION 0.7
FIELDS x y z _ label
SIZE 4 4 4 1 4
TYPE F F F U U
COUNT 1 1 1 4 1
WIDTH 3
HEIGHT 1
VIEWPOINT 0 0 0 1 0 0 0
POINTS 3
DATA {data}
"""


def test_ascii_with_padding_field_and_blank_lines(tmp_path):
    path = tmp_path / "pad.pcd"
    path.write_text(HEADER.format(data="ascii") + "1 2 3 0 0 0 0 7\n\n4 5 6 0 0 0 0 8\nnan nan nan 0 0 0 0 0\n")
    cloud = read_pcd(path)
    assert cloud.fields == ["x", "y", "z", "label"]
    np.testing.assert_array_equal(cloud["label"], [7, 8, 0])
    assert np.isnan(cloud["z"][2]) and cloud["y"][1] == 5


@pytest.mark.parametrize("header_edit,line,message", [
    (("SIZE 4 4 4 1 4", "SIZE 4 4 4 1"), 4, "SIZE has 4 entries"),
    (("TYPE F F F U U", "TYPE F F F U Q"), 5, "not a PCD type"),
    (("WIDTH 3", "WIDHT 3"), 7, "unknown header entry"),
    (("HEIGHT 1", "HEIGHT one"), 8, "HEIGHT must be integers"),
    (("POINTS 3", "POINTS 4"), 10, "differs from WIDTH x HEIGHT"),
    (("DATA {data}", "DATA zipped"), 11, "DATA 'zipped'"),
])
def test_bad_header_names_file_and_line(tmp_path, header_edit, line, message):
    path = tmp_path / "bad.pcd"
    path.write_text(HEADER.replace(*header_edit).format(data="ascii") + "1 2 3 0 0 0 0 7\n" * 3)
    with pytest.raises(DataFormatError, match=re.escape(message)) as err:
        read_pcd(path)
    assert err.value.path == path and err.value.line == line and f"{path}:{line}" in str(err.value)


def test_bad_ascii_rows_name_their_line(tmp_path):
    path = tmp_path / "rows.pcd"
    path.write_text(HEADER.format(data="ascii") + "1 2 3 0 0 0 0 7\n1 2 3 0 0 0 0\n1 2 3 0 0 0 0 7\n")
    with pytest.raises(DataFormatError, match="7 values, expected 8") as err:
        read_pcd(path)
    assert err.value.line == 13
    path.write_text(HEADER.format(data="ascii") + "1 2 3 0 0 0 0 7\n1 2 3 0 0 0 0 7\n1 2 3x 0 0 0 0 7\n")
    with pytest.raises(DataFormatError, match="field 'z'") as err:
        read_pcd(path)
    assert err.value.line == 14
    path.write_text(HEADER.format(data="ascii") + "1 2 3 0 0 0 0 7\n")
    with pytest.raises(DataFormatError, match="truncated: 1 of 3 points") as err:
        read_pcd(path)
    assert err.value.path == path


@pytest.mark.parametrize("data_format", ["binary", "binary_compressed"])
def test_truncated_binary_data_names_the_file(tmp_path, data_format):
    path = write_pcd(tmp_path / "t.pcd", structured(40), data_format)
    raw = path.read_bytes()
    path.write_bytes(raw[:-7])
    with pytest.raises(DataFormatError, match="truncated") as err:
        read_pcd(path)
    assert str(path) in str(err.value)
    path.write_bytes(raw[:raw.index(b"DATA")])
    with pytest.raises(DataFormatError, match="before its DATA line"):
        read_pcd(path)


def test_corrupt_compressed_stream_is_reported(tmp_path):
    path = write_pcd(tmp_path / "c.pcd", structured(40), "binary_compressed")
    raw = bytearray(path.read_bytes())
    start = raw.index(b"DATA binary_compressed\n") + len("DATA binary_compressed\n")
    raw[start + 4:start + 8] = np.array([123], "<u4").tobytes()  # wrong uncompressed size
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match="uncompressed size 123"):
        read_pcd(path)
