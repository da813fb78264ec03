"""A dataset split parsed once into one HDF5 file, rebuilt only when its sources change.

The txt releases (ModelNet40, ShapeNetPart) hold one text file per shape: parsing them every epoch costs minutes,
so each split is written once to ``<cache_dir>/<root name>-<hash of root path>-<split>.h5``. The file records a
fingerprint of its sources (the layout's ``fingerprint(split)``: list files, sizes, modification times) and is
rebuilt when that changes or the file is unreadable or incomplete; it is written through
``writers.atomic.atomic_file``, so a killed build leaves no half-written cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import h5py

from selfsup_pcd.data.writers.atomic import atomic_file


class FingerprintedLayout(Protocol):
    root: Path

    def fingerprint(self, split: str) -> str: ...


class H5SplitCache:
    """Subclasses name the ``dataset`` (for messages), the datasets a complete file holds (``keys``), the
    ``format_version``, and write the contents in ``_write``."""

    dataset = "dataset"
    keys: frozenset[str] = frozenset()
    format_version = 1

    def __init__(self, layout: FingerprintedLayout, split: str, cache_dir: Path) -> None:
        self.layout, self.split, self.cache_dir = layout, split, Path(cache_dir)
        root = Path(layout.root).resolve()
        tag = hashlib.sha256(str(root).encode()).hexdigest()[:12]
        self.path = self.cache_dir / f"{root.name}-{tag}-{split}.h5"

    def _is_current(self, fingerprint: str) -> bool:
        try:
            with h5py.File(self.path, "r") as f:
                return f.attrs.get("fingerprint") == fingerprint and set(f) >= set(self.keys)
        except OSError:  # absent, truncated or not HDF5: rebuild
            return False

    def ensure(self) -> Path:
        """Path of an up-to-date cache, building it first when absent or stale."""
        fingerprint = self.layout.fingerprint(self.split)
        if not self._is_current(fingerprint):
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OSError(f"cannot write the {self.dataset} cache in {self.cache_dir} ({err}); "
                              "pass a writable cache_dir") from err
            with atomic_file(self.path) as tmp, h5py.File(tmp, "w") as f:
                self._write(f)
                f.attrs["fingerprint"] = fingerprint
                f.attrs["format_version"] = self.format_version
                f.attrs["root"] = str(Path(self.layout.root).resolve())
                f.attrs["split"] = self.split
        return self.path

    def _write(self, f: h5py.File) -> None:
        raise NotImplementedError
