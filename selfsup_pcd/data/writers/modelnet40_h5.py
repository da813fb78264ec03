"""ModelNet40 in PointNet's ``modelnet40_ply_hdf5_2048`` layout, from any labelled point arrays.

```
modelnet40_ply_hdf5_2048/
├── ply_data_train0.h5 ... ply_data_trainK.h5   data (n, P, 3) float32, label (n, 1) uint8, [normal (n, P, 3)]
├── ply_data_test0.h5 ...                       at most 2048 shapes per file
├── train_files.txt, test_files.txt             data/modelnet40_ply_hdf5_2048/ply_data_train0.h5, one a line
└── shape_names.txt                             class names, label = line index
```
The list files name the h5 files by the path the release zip uses (relative to PointNet's checkout),
which ``selfsup_pcd.data.modelnet40`` resolves by file name. The release also has
``ply_data_<split>_<k>_id2file.json`` files (recalled: a JSON list of the source mesh names); they are
written here with made-up names ``<class>/<class>_<nnnn>.ply`` because nothing in this project reads them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from selfsup_pcd.data.writers.atomic import atomic_file, write_text

FOLDER = "modelnet40_ply_hdf5_2048"
SHAPES_PER_FILE = 2048
LIST_PREFIX = "data/modelnet40_ply_hdf5_2048"


def _write_h5(path: Path, data: np.ndarray, label: np.ndarray, normal: np.ndarray | None) -> None:
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("data", data=data.astype(np.float32))
        f.create_dataset("label", data=label.astype(np.uint8).reshape(-1, 1))
        if normal is not None:
            f.create_dataset("normal", data=normal.astype(np.float32))


def write_modelnet40_h5(
    root: str | Path,
    splits: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    shape_names: Sequence[str],
    shapes_per_file: int = SHAPES_PER_FILE,
) -> Path:
    """Writes ``root/modelnet40_ply_hdf5_2048`` and returns it.

    ``splits`` maps "train"/"test" to ``(data (n, P, 3), label (n,), normal (n, P, 3) or None)``; labels index
    ``shape_names`` (at most 256 classes: labels are stored as uint8, as in the release).
    """
    if not 0 < shapes_per_file <= SHAPES_PER_FILE:
        raise ValueError(f"shapes_per_file must be in 1..{SHAPES_PER_FILE}, got {shapes_per_file}")
    if len(shape_names) > 256:
        raise ValueError("labels are stored as uint8: at most 256 classes")
    folder = Path(root) / FOLDER
    for split, (data, label, normal) in splits.items():
        if split not in ("train", "test"):
            raise ValueError(f"split must be train or test, got {split!r}")
        data, label = np.asarray(data), np.asarray(label).reshape(-1)
        if data.ndim != 3 or data.shape[2] != 3 or len(label) != len(data):
            raise ValueError(f"{split}: need data (n, P, 3) and label (n,), got {data.shape} and {label.shape}")
        if normal is not None and np.shape(normal) != data.shape:
            raise ValueError(f"{split}: normal must have the shape of data {data.shape}, got {np.shape(normal)}")
        if len(label) and (label.min() < 0 or label.max() >= len(shape_names)):
            raise ValueError(f"{split}: labels must index the {len(shape_names)} shape names")
        names, counts = [], {}
        for k, start in enumerate(range(0, max(len(data), 1), shapes_per_file)):
            rows = slice(start, start + shapes_per_file)
            name = f"ply_data_{split}{k}.h5"
            _write_h5(folder / name, data[rows], label[rows], None if normal is None else np.asarray(normal)[rows])
            id2file = []
            for lbl in label[rows]:
                counts[int(lbl)] = counts.get(int(lbl), 0) + 1
                cls = shape_names[int(lbl)]
                id2file.append(f"{cls}/{cls}_{counts[int(lbl)]:04d}.ply")
            write_text(folder / f"ply_data_{split}_{k}_id2file.json", json.dumps(id2file))
            names.append(f"{LIST_PREFIX}/{name}")
        write_text(folder / f"{split}_files.txt", "".join(f"{n}\n" for n in names))
    write_text(folder / "shape_names.txt", "".join(f"{n}\n" for n in shape_names))
    return folder
