"""ShapeNetCore.v2 meshes (``model_normalized.obj``), for rendering real shapes; label = category index.

Layout::

    ShapeNetCore.v2/
      02691156/                                   synset id (category), 55 of them (``SYNSET_NAMES``)
        1a04e3eab45ca15dd86060f189eb133/          model id
          models/model_normalized.obj             (+ .mtl, textures: not read; renders are grey)
      ...
      all.csv (optional)                          id,synsetId,subSynsetId,modelId,split  (train/val/test)

ShapeNetCore.v2 ships no split. ``split_file`` names a CSV in the format above (the split list published with
ShapeNet, ``all.csv``); without one, each model goes to test when a hash of its id falls below
``test_fraction`` (stable: independent of listing order and of which other models are present). Labels are
indices into the 55 categories sorted by synset id (``class_names``); ``categories`` (names or synset ids)
keeps a subset with the same ids. ShapeNet models are y-up, so no rotation by default. Meshes are normalised
and sampled as in ``modelnet40_mesh.MeshFileDataset``. Models whose ``model_normalized.obj`` is missing (a few
in the release) are skipped with a warning; a file that cannot be read raises an error naming it.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfsup_pcd.data.base import PointCloudDataModule
from selfsup_pcd.data.errors import DataFormatError, DatasetLayoutError
from selfsup_pcd.data.modelnet40_mesh import MeshFileDataset

log = logging.getLogger(__name__)

# The 55 ShapeNetCore categories (taxonomy.json of ShapeNetCore.v2), sorted by synset id: label = position.
SYNSET_NAMES: dict[str, str] = {
    "02691156": "airplane", "02747177": "trash_bin", "02773838": "bag", "02801938": "basket",
    "02808440": "bathtub", "02818832": "bed", "02828884": "bench", "02843684": "birdhouse",
    "02871439": "bookshelf", "02876657": "bottle", "02880940": "bowl", "02924116": "bus",
    "02933112": "cabinet", "02942699": "camera", "02946921": "can", "02954340": "cap",
    "02958343": "car", "02992529": "cellphone", "03001627": "chair", "03046257": "clock",
    "03085013": "keyboard", "03207941": "dishwasher", "03211117": "display", "03261776": "earphone",
    "03325088": "faucet", "03337140": "file_cabinet", "03467517": "guitar", "03513137": "helmet",
    "03593526": "jar", "03624134": "knife", "03636649": "lamp", "03642806": "laptop",
    "03691459": "loudspeaker", "03710193": "mailbox", "03759954": "microphone", "03761084": "microwave",
    "03790512": "motorbike", "03797390": "mug", "03928116": "piano", "03938244": "pillow",
    "03948459": "pistol", "03991062": "flowerpot", "04004475": "printer", "04074963": "remote",
    "04090263": "rifle", "04099429": "rocket", "04225987": "skateboard", "04256520": "sofa",
    "04330267": "stove", "04379243": "table", "04401088": "telephone", "04460130": "tower",
    "04468005": "train", "04530566": "watercraft", "04554684": "washer",
}  # fmt: skip
SYNSETS = sorted(SYNSET_NAMES)
MESH_PATH = Path("models") / "model_normalized.obj"
SPLITS = ("train", "val", "test")

SHAPENET_LAYOUT = """\
ShapeNetCore.v2/
  02691156/                           synset id of the category (55 categories)
    <model id>/models/model_normalized.obj
  all.csv                             optional split list: id,synsetId,subSynsetId,modelId,split"""
SHAPENET_SOURCE = "ShapeNetCore.v2 from https://shapenet.org/ (registration; research and educational use only)"


def synset_of(category: str) -> str:
    """Synset id of a category given by name or id."""
    if category in SYNSET_NAMES:
        return category
    by_name = {name: synset for synset, name in SYNSET_NAMES.items()}
    if category not in by_name:
        raise ValueError(f"unknown ShapeNetCore category {category!r}; names: {sorted(by_name)}")
    return by_name[category]


def hash_split(model_id: str, test_fraction: float, val_fraction: float = 0.0) -> str:
    """train / val / test from a hash of the model id (stable across listings and machines)."""
    u = int(hashlib.sha1(model_id.encode()).hexdigest()[:8], 16) / 2**32
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def read_split_file(path: str | Path) -> dict[tuple[str, str], str]:
    """(synset id, model id) -> split from a ShapeNet ``all.csv``-style file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError("ShapeNetCore.v2", path, SHAPENET_LAYOUT, SHAPENET_SOURCE)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"synsetId", "modelId", "split"} - set(reader.fieldnames or [])
        if missing:
            raise DataFormatError(path, f"split file lacks columns {sorted(missing)} (found {reader.fieldnames})", 1)
        table = {}
        for lineno, row in enumerate(reader, start=2):
            if row["split"] not in SPLITS:
                raise DataFormatError(path, f"split {row['split']!r} is not one of {SPLITS}", lineno)
            table[(row["synsetId"].zfill(8), row["modelId"])] = row["split"]
    return table


def list_shapenet_meshes(root: str | Path, split: str, categories: Sequence[str] | None = None,
                         split_file: str | Path | None = None, test_fraction: float = 0.2,
                         val_fraction: float = 0.0) -> tuple[list[Path], list[int]]:
    """Mesh files and category labels of ``split`` (sorted by synset, then model id)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError("ShapeNetCore.v2", root, SHAPENET_LAYOUT, SHAPENET_SOURCE)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    table = read_split_file(split_file) if split_file else None
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in SYNSET_NAMES)
    wanted = [synset_of(c) for c in categories] if categories else present
    if not wanted:
        raise DatasetLayoutError("ShapeNetCore.v2", root / "<synset id>" / "<model id>" / MESH_PATH,
                                 SHAPENET_LAYOUT, SHAPENET_SOURCE)
    files, labels, skipped = [], [], []
    for synset in wanted:
        folder = root / synset
        if not folder.is_dir():
            raise DatasetLayoutError("ShapeNetCore.v2", folder, SHAPENET_LAYOUT, SHAPENET_SOURCE)
        for model in sorted(p for p in folder.iterdir() if p.is_dir()):
            chosen = (table.get((synset, model.name)) if table is not None
                      else hash_split(model.name, test_fraction, val_fraction))
            if chosen != split:
                continue
            path = model / MESH_PATH
            if not path.is_file():
                skipped.append(path)
                continue
            files.append(path)
            labels.append(SYNSETS.index(synset))
    if skipped:
        log.warning("ShapeNetCore.v2 %s: %d models without %s skipped, e.g. %s", split, len(skipped), MESH_PATH,
                    skipped[0])
    if not files:
        raise DatasetLayoutError("ShapeNetCore.v2", root / wanted[0] / "<model id>" / MESH_PATH,
                                 SHAPENET_LAYOUT + f"\n(no model of split {split!r} found)", SHAPENET_SOURCE)
    return files, labels


class ShapeNetMeshDataModule(PointCloudDataModule):
    """ShapeNetCore.v2 meshes with the project's batch format; renders as real surfaces (``mesh(i)``)."""

    def __init__(
        self,
        root: str | Path,
        num_points: int = 1024,
        use_normals: bool = False,
        normalize: bool = True,
        up_axis: str = "y",
        categories: Sequence[str] | None = None,
        split_file: str | Path | None = None,
        test_fraction: float = 0.2,
        val_fraction: float = 0.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(seed=seed, **kwargs)
        self.root = Path(root)
        self.num_points, self.use_normals, self.normalize, self.up_axis = num_points, use_normals, normalize, up_axis
        self.categories = list(categories) if categories else None
        self.split_file = split_file
        self.test_fraction, self.val_fraction = test_fraction, val_fraction

    @property
    def class_names(self) -> list[str]:
        return [SYNSET_NAMES[s] for s in SYNSETS]

    def _list(self, split: str) -> tuple[list[Path], list[int]]:
        return list_shapenet_meshes(self.root, split, self.categories, self.split_file, self.test_fraction,
                                    self.val_fraction)

    def prepare_data(self) -> None:
        for split in ("train", "test"):
            self._list(split)

    def build_dataset(self, split: str) -> MeshFileDataset:
        files, labels = self._list(split)
        return MeshFileDataset(files, labels, split=split, num_points=self.num_points, use_normals=self.use_normals,
                               normalize=self.normalize, up_axis=self.up_axis, seed=self.seed)

    def labels(self, split: str) -> np.ndarray:
        """Labels of ``split`` in dataset order, without reading any mesh."""
        split = self.val_split if split == "val" else split
        return np.asarray(self._list(split)[1], dtype=np.int64)
