"""Binary little-endian PLY with per-vertex properties and triangle faces, as ScanNet ships its meshes.

Written from NumPy structured arrays (one record per vertex) so the header and the bytes match exactly
the property names and types a dataset uses (ScanNet: ``float x,y,z``, ``uchar red,green,blue,alpha``,
``ushort label``, faces ``list uchar int vertex_indices``). ``read_ply`` parses the same subset back (any
binary little-endian file with one vertex element and fixed-size triangle faces) for tests and readers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selfsup_pcd.data.errors import DataFormatError
from selfsup_pcd.data.writers.atomic import atomic_file

_PLY_TYPES = {
    "char": "i1", "uchar": "u1", "short": "<i2", "ushort": "<u2", "int": "<i4", "uint": "<u4",
    "float": "<f4", "double": "<f8", "int8": "i1", "uint8": "u1", "int16": "<i2", "uint16": "<u2",
    "int32": "<i4", "uint32": "<u4", "float32": "<f4", "float64": "<f8",
}  # fmt: skip
_NAME_OF = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint", "f4": "float",
            "f8": "double"}


def _type_name(dtype: np.dtype) -> str:
    key = f"{dtype.kind}{dtype.itemsize}"
    if key not in _NAME_OF:
        raise ValueError(f"no PLY type for dtype {dtype}")
    return _NAME_OF[key]


def write_ply(path: str | Path, vertices: np.ndarray, faces: np.ndarray | None = None,
              comments: tuple[str, ...] = ()) -> None:
    """Writes ``vertices`` (structured array, one field per property) and triangle ``faces`` (F, 3), atomically."""
    if vertices.dtype.names is None:
        raise ValueError("vertices must be a structured array (one field per PLY property)")
    header = ["ply", "format binary_little_endian 1.0", *(f"comment {c}" for c in comments),
              f"element vertex {len(vertices)}"]
    header += [f"property {_type_name(vertices.dtype[name])} {name}" for name in vertices.dtype.names]
    face_records = None
    if faces is not None:
        faces = np.asarray(faces)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must be (F, 3), got {faces.shape}")
        if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
            raise ValueError("faces index vertices out of range")
        face_records = np.empty(len(faces), dtype=[("count", "u1"), ("indices", "<i4", (3,))])
        face_records["count"] = 3
        face_records["indices"] = faces
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    little = vertices.astype(vertices.dtype.newbyteorder("<"), copy=False)
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(np.ascontiguousarray(little).tobytes())
        if face_records is not None:
            fh.write(face_records.tobytes())


def read_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(vertex structured array, faces (F, 3) int64 or None) of a binary little-endian triangle PLY."""
    path = Path(path)
    data = path.read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise DataFormatError(path, "not a PLY file (no 'ply' magic or no end_header)")
    elements: list[tuple[str, int, list[tuple[str, ...]]]] = []
    for line in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] == "comment":
            continue
        if words[0] == "format" and words[1] != "binary_little_endian":
            raise DataFormatError(path, f"format {words[1]} is not supported (binary_little_endian only)")
        if words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            elements[-1][2].append(tuple(words[1:]))
    offset = end + len(b"end_header\n")
    vertices, faces = None, None
    for name, count, props in elements:
        if name == "vertex":
            if any(p[0] == "list" for p in props):
                raise DataFormatError(path, "list properties on vertices are not supported")
            dtype = np.dtype([(p[1], _PLY_TYPES[p[0]]) for p in props])
            vertices = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
            offset += dtype.itemsize * count
        elif name == "face":
            if len(props) != 1 or props[0][0] != "list":
                raise DataFormatError(path, f"face element must hold one list property, got {props}")
            _, count_type, index_type, _ = props[0]
            dtype = np.dtype([("count", _PLY_TYPES[count_type]), ("indices", _PLY_TYPES[index_type], (3,))])
            records = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
            if count and np.any(records["count"] != 3):
                raise DataFormatError(path, "faces are not all triangles")
            faces = records["indices"].astype(np.int64)
            offset += dtype.itemsize * count
        else:
            raise DataFormatError(path, f"element {name!r} is not supported")
    if vertices is None:
        raise DataFormatError(path, "has no vertex element")
    if offset != len(data):
        raise DataFormatError(path, f"size mismatch: header describes {offset} bytes, file has {len(data)}")
    return vertices, faces
