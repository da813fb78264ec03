"""PCL's PCD point-cloud files (v0.7): header, then ``ascii``, ``binary`` or ``binary_compressed`` data.

``read_pcd`` returns the header and one structured NumPy record per point, so any field set works (mOSD's
``label x y z rgba``, ``x y z rgb``, normals, ...). Layouts:

* ``ascii``: one point per line, the fields' values in order (a field with COUNT k takes k values).
* ``binary``: packed little-endian records, row-major.
* ``binary_compressed``: ``uint32`` compressed size, ``uint32`` uncompressed size, then an LZF stream whose
  content is column-major (all values of the first field, then of the second, ...). LZF comes from the
  ``python-lzf`` package (pinned in requirements.txt), imported only for such files.

Padding fields named ``_`` are read and dropped. Organised clouds keep ``width`` x ``height`` in the
header (row-major rows of ``width`` points). Colour packed into one 32-bit field (``rgb``/``rgba``, type U
or F) is ``0x00RRGGBB``: ``unpack_rgb`` splits it. Every defect raises ``DataFormatError`` naming the file,
and the line for a bad header or ascii line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfsup_pcd.data.errors import DataFormatError
from selfsup_pcd.data.writers.atomic import atomic_file

DATA_FORMATS = ("ascii", "binary", "binary_compressed")
_TYPES = {("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8", ("U", 1): "u1", ("U", 2): "u2",
          ("U", 4): "u4", ("U", 8): "u8", ("F", 4): "f4", ("F", 8): "f8"}  # fmt: skip
_KEYS = ("VERSION", "FIELDS", "COLUMNS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA")


@dataclass
class PCDHeader:
    """The header's content; ``fields``/``sizes``/``types``/``counts`` are parallel lists."""

    fields: list[str]
    sizes: list[int]
    types: list[str]
    counts: list[int]
    width: int
    height: int
    points: int
    data: str
    viewpoint: list[float] = field(default_factory=lambda: [0, 0, 0, 1, 0, 0, 0])
    version: str = "0.7"

    def dtype(self, keep_padding: bool = True) -> np.dtype:
        """Packed little-endian record of one point."""
        spec = []
        for k, (name, size, kind, count) in enumerate(zip(self.fields, self.sizes, self.types, self.counts)):
            if name == "_" and not keep_padding:
                continue
            base = "<" + _TYPES[(kind, size)]
            spec.append((f"_{k}" if name == "_" else name, base, (count,)) if count > 1
                        else (f"_{k}" if name == "_" else name, base))
        return np.dtype(spec)

    @property
    def organized(self) -> bool:
        return self.height > 1


@dataclass
class PointCloudPCD:
    """A PCD file: its header and a structured array (one record per point, padding fields dropped)."""

    header: PCDHeader
    data: np.ndarray

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name]

    @property
    def fields(self) -> list[str]:
        return list(self.data.dtype.names or ())


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 R, G, B of colours packed as ``0x00RRGGBB`` in uint32 or float32 (PCL's float ``rgb``)."""
    packed = np.asarray(packed)
    if packed.dtype.kind == "f":
        packed = packed.astype(np.float32).view(np.uint32)
    packed = packed.astype(np.uint32)
    return np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], -1).astype(np.uint8)


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint32 ``0x00RRGGBB`` of (N, 3) 0-255 colours."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


# -- reading ---------------------------------------------------------------------------------------------
def _parse_header(path: Path, raw: bytes) -> tuple[PCDHeader, int, int]:
    """(header, byte offset of the data, number of header lines)."""
    entries: dict[str, tuple[list[str], int]] = {}
    pos, lineno = 0, 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise DataFormatError(path, "header ends before its DATA line (truncated, or not a PCD file)")
        lineno += 1
        try:
            line = raw[pos:end].decode("ascii").strip()
        except UnicodeDecodeError:
            raise DataFormatError(path, "header line is not ASCII text (not a PCD file?)", lineno) from None
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *rest = line.split()
        if key not in _KEYS:
            raise DataFormatError(path, f"unknown header entry {key!r} in {line!r}", lineno)
        entries[key] = (rest, lineno)
        if key == "DATA":
            break
    return _Header(path, entries, lineno).build(), pos, lineno


class _Header:
    """Checks the header entries; an error names the line of the entry at fault."""

    def __init__(self, path: Path, entries: dict[str, tuple[list[str], int]], data_line: int) -> None:
        self.path, self.entries, self.data_line = path, entries, data_line

    def line(self, key: str) -> int:
        return self.entries[key][1] if key in self.entries else self.data_line

    def fail(self, key: str, message: str) -> DataFormatError:
        return DataFormatError(self.path, message, self.line(key))

    def ints(self, key: str) -> list[int]:
        tokens = self.entries[key][0]
        try:
            out = [int(v) for v in tokens]
        except ValueError:
            raise self.fail(key, f"{key} must be integers, got {' '.join(tokens)!r}") from None
        if not out or any(v < 0 for v in out):
            raise self.fail(key, f"{key} must be non-negative integers, got {' '.join(tokens)!r}")
        return out

    def build(self) -> PCDHeader:
        fkey = "FIELDS" if "FIELDS" in self.entries else "COLUMNS"
        fields = self.entries.get(fkey, ([], 0))[0]
        if not fields:
            raise self.fail(fkey, "header has no FIELDS entry")
        n = len(fields)
        for key in ("SIZE", "TYPE"):
            if key not in self.entries:
                raise self.fail(key, f"header has no {key} entry")
        sizes = self.ints("SIZE")
        types = [t.upper() for t in self.entries["TYPE"][0]]
        counts = self.ints("COUNT") if "COUNT" in self.entries else [1] * n
        for key, got in (("SIZE", sizes), ("TYPE", types), ("COUNT", counts)):
            if len(got) != n:
                raise self.fail(key, f"{key} has {len(got)} entries but FIELDS names {n} fields")
        for name, size, kind in zip(fields, sizes, types):
            if (kind, size) not in _TYPES:
                key = "TYPE" if kind not in {k for k, _ in _TYPES} else "SIZE"
                raise self.fail(key, f"field {name!r}: TYPE {kind} with SIZE {size} is not a PCD type")
        named = [f for f in fields if f != "_"]
        if len(set(named)) != len(named):
            raise self.fail(fkey, f"FIELDS repeats a name: {' '.join(fields)}")
        width = self.ints("WIDTH")[0] if "WIDTH" in self.entries else None
        height = self.ints("HEIGHT")[0] if "HEIGHT" in self.entries else 1
        points = self.ints("POINTS")[0] if "POINTS" in self.entries else None
        if width is None and points is None:
            raise self.fail("DATA", "header has neither WIDTH nor POINTS")
        width = points // max(height, 1) if width is None else width
        if points is None:
            points = width * height
        if points != width * height:
            raise self.fail("POINTS", f"POINTS {points} differs from WIDTH x HEIGHT = {width} x {height}")
        data = self.entries["DATA"][0][0].lower() if self.entries["DATA"][0] else ""
        if data not in DATA_FORMATS:
            raise self.fail("DATA", f"DATA {data!r} is not one of {DATA_FORMATS}")
        viewpoint = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
        if "VIEWPOINT" in self.entries:
            try:
                viewpoint = [float(v) for v in self.entries["VIEWPOINT"][0]]
            except ValueError:
                viewpoint = []
            if len(viewpoint) != 7:
                raise self.fail("VIEWPOINT", "VIEWPOINT must be 7 numbers (translation, quaternion)")
        version = self.entries.get("VERSION", (["0.7"], 0))[0]
        return PCDHeader(fields, sizes, types, counts, width, height, points, data, viewpoint,
                         version[0] if version else "0.7")


def _lzf():
    try:
        import lzf
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("reading or writing binary_compressed PCD files needs the python-lzf package "
                          "(pip install python-lzf; pinned in requirements.txt)") from None
    return lzf


def _read_ascii(path: Path, body: bytes, header: PCDHeader, first_line: int) -> np.ndarray:
    dtype = header.dtype()
    widths = header.counts
    ncol = sum(widths)
    rows, linenos = [], []
    for k, line in enumerate(body.split(b"\n")):
        if len(rows) == header.points:
            break
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != ncol:
            raise DataFormatError(path, f"point has {len(tokens)} values, expected {ncol} "
                                        f"({' '.join(header.fields)})", first_line + k)
        rows.append(tokens)
        linenos.append(first_line + k)
    if len(rows) < header.points:
        raise DataFormatError(path, f"truncated: {len(rows)} of {header.points} points")
    table = np.array(rows, dtype=bytes).reshape(header.points, ncol)
    out = np.empty(header.points, dtype=dtype)
    col = 0
    for name, width in zip(dtype.names, widths):
        target = dtype[name].base
        try:
            values = table[:, col:col + width].astype(target)
        except (ValueError, OverflowError):
            for r, row in enumerate(table[:, col:col + width]):
                try:
                    row.astype(target)
                except (ValueError, OverflowError):
                    raise DataFormatError(path, f"field {name!r}: {b' '.join(row).decode(errors='replace')!r} "
                                                f"is not {target}", linenos[r]) from None
            raise
        out[name] = values if width > 1 else values[:, 0]
        col += width
    return out


def _read_binary(path: Path, body: bytes, header: PCDHeader) -> np.ndarray:
    dtype = header.dtype()
    need = header.points * dtype.itemsize
    if len(body) < need:
        raise DataFormatError(path, f"truncated: binary data has {len(body)} bytes, {header.points} points of "
                                    f"{dtype.itemsize} bytes need {need}")
    return np.frombuffer(body, dtype=dtype, count=header.points).copy()


def _read_compressed(path: Path, body: bytes, header: PCDHeader) -> np.ndarray:
    dtype = header.dtype()
    if len(body) < 8:
        raise DataFormatError(path, "truncated: binary_compressed data lacks its two size words")
    compressed, uncompressed = np.frombuffer(body[:8], dtype="<u4").tolist()
    if len(body) - 8 < compressed:
        raise DataFormatError(path, f"truncated: compressed data has {len(body) - 8} of {compressed} bytes")
    need = header.points * dtype.itemsize
    if uncompressed != need:
        raise DataFormatError(path, f"uncompressed size {uncompressed} differs from {header.points} points x "
                                    f"{dtype.itemsize} bytes = {need}")
    if need == 0:
        return np.empty(0, dtype=dtype)
    try:
        raw = _lzf().decompress(body[8:8 + compressed], uncompressed)
    except ValueError as err:
        raise DataFormatError(path, f"corrupt LZF data ({err})") from None
    if raw is None or len(raw) != uncompressed:
        raise DataFormatError(path, f"LZF data does not decompress to {uncompressed} bytes")
    out = np.empty(header.points, dtype=dtype)
    offset = 0
    for name in dtype.names:  # column-major: every point's value of one field, then the next field
        column = np.dtype((dtype[name].base, dtype[name].shape)) if dtype[name].shape else dtype[name]
        out[name] = np.frombuffer(raw, dtype=column, count=header.points, offset=offset)
        offset += header.points * column.itemsize
    return out


def read_pcd(path: str | Path) -> PointCloudPCD:
    """Reads a PCD file of any of the three data layouts (see the module docstring)."""
    path = Path(path)
    raw = path.read_bytes()
    header, offset, lines = _parse_header(path, raw)
    body = raw[offset:]
    if header.data == "ascii":
        data = _read_ascii(path, body, header, lines + 1)
    elif header.data == "binary":
        data = _read_binary(path, body, header)
    else:
        data = _read_compressed(path, body, header)
    if "_" in header.fields:
        packed = np.empty(len(data), dtype=header.dtype(keep_padding=False))
        for name in packed.dtype.names:
            packed[name] = data[name]
        data = packed
    return PointCloudPCD(header, data)


# -- writing ---------------------------------------------------------------------------------------------
def _header_for(data: np.ndarray, data_format: str, width: int | None, height: int | None,
                viewpoint: list[float] | None) -> PCDHeader:
    fields, sizes, types, counts = [], [], [], []
    kinds = {"i": "I", "u": "U", "f": "F"}
    for name in data.dtype.names:
        base, shape = data.dtype[name].base, data.dtype[name].shape
        if base.kind not in kinds or (kinds[base.kind], base.itemsize) not in _TYPES:
            raise ValueError(f"field {name!r} has dtype {base}, which PCD cannot store")
        fields.append(name)
        sizes.append(base.itemsize)
        types.append(kinds[base.kind])
        counts.append(int(np.prod(shape)) if shape else 1)
    n = len(data)
    width = n if width is None else width
    height = (n // max(width, 1) if n else 1) if height is None else height
    if width * height != n:
        raise ValueError(f"width x height = {width} x {height} differs from the {n} points")
    return PCDHeader(fields, sizes, types, counts, width, height, n, data_format,
                     viewpoint or [0, 0, 0, 1, 0, 0, 0])


def write_pcd(path: str | Path, data: np.ndarray, data_format: str = "binary_compressed", width: int | None = None,
              height: int | None = None, viewpoint: list[float] | None = None) -> Path:
    """Writes a structured array (one record per point) as a PCD v0.7 file, atomically."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    data = np.asarray(data)
    if data.dtype.names is None:
        raise ValueError("data must be a structured array (one field per PCD field)")
    header = _header_for(data, data_format, width, height, viewpoint)
    packed = data.astype(header.dtype())
    text = "\n".join([
        "# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7", "FIELDS " + " ".join(header.fields),
        "SIZE " + " ".join(map(str, header.sizes)), "TYPE " + " ".join(header.types),
        "COUNT " + " ".join(map(str, header.counts)), f"WIDTH {header.width}", f"HEIGHT {header.height}",
        "VIEWPOINT " + " ".join(f"{v:g}" for v in header.viewpoint), f"POINTS {header.points}",
        f"DATA {data_format}", "",
    ]).encode("ascii")
    if data_format == "ascii":
        columns = []
        for name in packed.dtype.names:
            values = packed[name].reshape(len(packed), -1)
            digits = 9 if values.dtype.itemsize == 4 else 17  # enough to read back the same float
            fmt = (lambda v, d=digits: f"{v:.{d}g}") if values.dtype.kind == "f" else str
            columns.append([" ".join(fmt(v) for v in row) for row in values.tolist()])
        body = "".join(" ".join(parts) + "\n" for parts in zip(*columns)).encode("ascii")
    elif data_format == "binary":
        body = packed.tobytes()
    else:
        raw = b"".join(np.ascontiguousarray(packed[name]).tobytes() for name in packed.dtype.names)
        # incompressible data grows by at most one byte per 32 literals
        compressed = _lzf().compress(raw, len(raw) + len(raw) // 32 + 16) if raw else b""
        body = np.array([len(compressed), len(raw)], dtype="<u4").tobytes() + compressed
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_bytes(text + body)
    return path
