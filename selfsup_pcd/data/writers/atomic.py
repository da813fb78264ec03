"""Atomic output: a file or folder appears under its final name only once it is complete.

Writers build each file (or each scene folder) under a hidden temporary name beside its destination and
rename it into place, so an error or a kill never leaves a half-written item that a reader would take for
a real one. Renaming within one folder is atomic on POSIX file systems. A SIGKILL cannot run cleanup, so the
temporary names carry the writer's pid and the next successful write of the same item removes leftovers of
writers that no longer run.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Removes ``path``'s temporaries left by killed writers (their pid no longer runs); returns them."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\..+\.(tmp|old)$")
    removed = []
    for sibling in path.parent.glob(f".{path.name}.*"):
        match = pattern.match(sibling.name)
        if match and not _alive(int(match.group(1))):
            _remove(sibling)
            removed.append(sibling)
    return removed


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path in ``path``'s folder; renamed to ``path`` (replacing it) on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
        remove_stale_temporaries(path)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yields an empty temporary folder beside ``path``; on success it replaces ``path`` (old content removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
        remove_stale_temporaries(path)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Writes a small text file atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
