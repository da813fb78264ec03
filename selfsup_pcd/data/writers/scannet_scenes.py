"""ScanNet v2 scans as released (``scans/<scene>/``): mesh, labelled mesh, over-segmentation, aggregation.

```
scans/
└── scene0000_00/
    ├── scene0000_00_vh_clean_2.ply                  mesh: vertex float x,y,z, uchar red,green,blue,alpha;
    │                                                face list uchar int vertex_indices (binary little endian)
    ├── scene0000_00_vh_clean_2.labels.ply           same vertices and faces + ushort label (NYU40 id),
    │                                                coloured by label
    ├── scene0000_00_vh_clean_2.0.010000.segs.json   {"params", "sceneId", "segIndices": [segment per vertex]}
    ├── scene0000_00.aggregation.json                {"sceneId", "appId", "segGroups": [{"id", "objectId",
    │                                                "segments", "label"}], "segmentsFile"}
    └── scene0000_00.txt                             meta: "axisAlignment = <16 numbers>", sceneType
```
This is what VoteNet's ``batch_load_scannet_data.py`` and the PointContrast/SR-UNet converters read
(``downstream.md`` §5b-6): objects are segGroups (``objectId + 1`` = instance id), their ``label`` is a raw
ScanNet category mapped to NYU40 by ``scannetv2-labels.combined.tsv``; vertices take their group's label.

Known from the release and those readers: file names, PLY properties and types, the JSON keys read
(``segGroups[].objectId/label/segments``, ``segIndices``), ``axisAlignment`` in the meta file.
Recalled, not checked against a release file: ``sceneId``/``segmentsFile`` carrying a ``scannet.`` prefix,
``appId = "Aggregator.v2"``, the ``params`` values of the segmentation. Our own choices: segments are the
cells of a ``segment_size`` grid within each object or wall (ScanNet's come from a graph cut of the
mesh); the label colours are a fixed pseudo-random palette, not ScanNet's legend; the mesh is already
axis-aligned, so ``axisAlignment`` is the identity.

Class mapping (ours -> NYU40 id, NYU40 name, ScanNet raw category):

| ours | NYU40 | NYU40 name | raw category |
|---|---|---|---|
| floor | 2 | floor | floor |
| wall | 1 | wall | wall |
| ceiling | 22 | ceiling | ceiling |
| table | 7 | table | table |
| chair | 5 | chair | chair |
| sofa | 6 | sofa | couch |
| bed | 4 | bed | bed |
| desk | 14 | desk | desk |
| bookshelf | 10 | bookshelf | bookshelf |
| cabinet | 3 | cabinet | cabinet |
| night_stand | 32 | night stand | nightstand |
| lamp | 35 | lamp | lamp |
| toilet | 33 | toilet | toilet |
| bathtub | 36 | bathtub | bathtub |
| box | 29 | box | box |
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selfsup_pcd.data.synthetic.scenes import SCENE_CLASSES, Scene
from selfsup_pcd.data.writers.atomic import atomic_dir
from selfsup_pcd.data.writers.ply import write_ply

FOLDER = "scans"
NYU40_NAMES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop",
]  # fmt: skip  (NYU40 id = index + 1)
SCANNET_CLASS_MAP: dict[str, tuple[int, str]] = {
    "floor": (2, "floor"), "wall": (1, "wall"), "ceiling": (22, "ceiling"), "table": (7, "table"),
    "chair": (5, "chair"), "sofa": (6, "couch"), "bed": (4, "bed"), "desk": (14, "desk"),
    "bookshelf": (10, "bookshelf"), "cabinet": (3, "cabinet"), "night_stand": (32, "nightstand"),
    "lamp": (35, "lamp"), "toilet": (33, "toilet"), "bathtub": (36, "bathtub"), "box": (29, "box"),
}  # fmt: skip
SEGMENT_PARAMS = {
    "kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750", "maxPoints": "30000", "thinThresh": "0.05",
    "flatThresh": "0.001", "minLength": "0.02", "maxLength": "1",
}  # fmt: skip
SEGMENT_SIZE = 0.5
VERTEX_DTYPE = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                ("alpha", "u1")]
LABEL_VERTEX_DTYPE = [*VERTEX_DTYPE, ("label", "<u2")]


def nyu40_ids(semantic: np.ndarray) -> np.ndarray:
    """NYU40 id of each of our semantic ids (``SCENE_CLASSES`` index)."""
    table = np.array([SCANNET_CLASS_MAP[name][0] for name in SCENE_CLASSES], dtype=np.int64)
    return table[np.asarray(semantic)]


def label_colours(labels: np.ndarray) -> np.ndarray:
    """(N, 3) uint8: a fixed colour per NYU40 id (0 = unannotated is black)."""
    palette = np.random.default_rng(40).integers(40, 256, size=(41, 3)).astype(np.uint8)
    palette[0] = 0
    return palette[np.asarray(labels)]


@dataclass
class SegGroup:
    """One annotated object of the aggregation file."""

    object_id: int  # 0-based; instance id = object_id + 1 in VoteNet's reader
    label: str  # raw ScanNet category
    segments: list[int]


@dataclass
class ScanNetMesh:
    """Everything one ScanNet scan folder holds, as arrays."""

    vertices: np.ndarray  # (V, 3) float
    faces: np.ndarray  # (F, 3) int
    colors: np.ndarray  # (V, 3) or (V, 4) uint8
    labels: np.ndarray  # (V,) NYU40 ids
    seg_indices: np.ndarray  # (V,) segment id per vertex
    seg_groups: list[SegGroup]


def scene_to_scannet(scene: Scene, segment_size: float = SEGMENT_SIZE) -> ScanNetMesh:
    """The ScanNet view of a procedural scene: one segGroup per object and per wall/floor/ceiling piece."""
    vertices = np.asarray(scene.mesh.vertices)
    cells = np.floor(vertices / segment_size).astype(np.int64)
    keys = np.concatenate([scene.vertex_part[:, None], cells], axis=1)
    _, seg_indices = np.unique(keys, axis=0, return_inverse=True)
    seg_indices = seg_indices.reshape(-1)
    groups = []
    for object_id, part in enumerate(np.unique(scene.vertex_part)):
        in_part = scene.vertex_part == part
        class_name = SCENE_CLASSES[int(scene.vertex_semantic[in_part][0])]
        groups.append(SegGroup(object_id, SCANNET_CLASS_MAP[class_name][1],
                               sorted(int(s) for s in np.unique(seg_indices[in_part]))))
    return ScanNetMesh(
        vertices=vertices,
        faces=np.asarray(scene.mesh.faces),
        colors=np.asarray(scene.mesh.visual.vertex_colors),
        labels=nyu40_ids(scene.vertex_semantic),
        seg_indices=seg_indices,
        seg_groups=groups,
    )


def _vertex_records(mesh: ScanNetMesh, with_label: bool) -> np.ndarray:
    records = np.zeros(len(mesh.vertices), dtype=LABEL_VERTEX_DTYPE if with_label else VERTEX_DTYPE)
    for k, axis in enumerate("xyz"):
        records[axis] = mesh.vertices[:, k]
    rgb = label_colours(mesh.labels) if with_label else np.asarray(mesh.colors)[:, :3]
    records["red"], records["green"], records["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    colors = np.asarray(mesh.colors)
    records["alpha"] = colors[:, 3] if colors.shape[1] == 4 and not with_label else 255
    if with_label:
        records["label"] = mesh.labels
    return records


def write_scannet_scene(root: str | Path, scene_name: str, mesh: ScanNetMesh, scene_type: str = "Office") -> Path:
    """Writes ``root/scans/<scene_name>/`` (atomically, the whole folder) and returns that folder."""
    n = len(mesh.vertices)
    if not (len(mesh.colors) == len(mesh.labels) == len(mesh.seg_indices) == n):
        raise ValueError("colors, labels and seg_indices need one entry per vertex")
    if np.any(np.asarray(mesh.labels) < 0) or np.any(np.asarray(mesh.labels) > 40):
        raise ValueError("labels must be NYU40 ids in 0..40")
    final = Path(root) / FOLDER / scene_name
    with atomic_dir(final) as tmp:
        write_ply(tmp / f"{scene_name}_vh_clean_2.ply", _vertex_records(mesh, False), mesh.faces,
                  comments=("VCGLIB generated",))
        write_ply(tmp / f"{scene_name}_vh_clean_2.labels.ply", _vertex_records(mesh, True), mesh.faces,
                  comments=("VCGLIB generated",))
        segs_name = f"{scene_name}_vh_clean_2.0.010000.segs.json"
        segs = {"params": SEGMENT_PARAMS, "sceneId": scene_name,
                "segIndices": [int(s) for s in mesh.seg_indices]}
        (tmp / segs_name).write_text(json.dumps(segs), encoding="utf-8")
        aggregation = {
            "sceneId": f"scannet.{scene_name}",
            "appId": "Aggregator.v2",
            "segGroups": [{"id": g.object_id, "objectId": g.object_id, "segments": list(g.segments),
                           "label": g.label} for g in mesh.seg_groups],
            "segmentsFile": f"scannet.{segs_name}",
        }
        (tmp / f"{scene_name}.aggregation.json").write_text(json.dumps(aggregation, indent=1), encoding="utf-8")
        identity = " ".join(f"{v:.6f}" for v in np.eye(4).ravel())
        (tmp / f"{scene_name}.txt").write_text(f"axisAlignment = {identity}\nsceneType = {scene_type}\n",
                                               encoding="utf-8")
    return final
