"""Atomic writes: leftovers of a killed writer are removed by the next successful write, live ones are not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from selfsup_pcd.data.writers.atomic import atomic_dir, atomic_file


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_killed_writers_temporaries_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "ply_data_train0.h5"
    stale_file = tmp_path / f".{target.name}.{dead_pid()}.abc123.tmp"
    stale_file.write_bytes(b"half written")
    stale_dir = tmp_path / f".{target.name}.{dead_pid()}.def456.old"
    stale_dir.mkdir()
    (stale_dir / "x").write_text("old")
    live = tmp_path / f".{target.name}.{os.getppid()}.ghi789.tmp"  # our parent still runs: maybe writing now
    live.write_bytes(b"in progress")
    other = tmp_path / f".other.h5.{dead_pid()}.jkl.tmp"  # another item's temporary: not ours to judge
    other.write_bytes(b"")

    with atomic_file(target) as tmp:
        assert tmp.name.startswith(f".{target.name}.{os.getpid()}.")
        tmp.write_bytes(b"complete")

    assert target.read_bytes() == b"complete"
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and other.exists()


def test_failed_write_leaves_neither_target_nor_temporary(tmp_path: Path) -> None:
    target = tmp_path / "scene0000_00"
    try:
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("partial")
            raise RuntimeError("writer failed")
    except RuntimeError:
        pass
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
