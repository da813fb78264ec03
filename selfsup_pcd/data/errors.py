"""Errors raised for bad datasets: they always name the file (and the line, for text formats)."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """A data file exists but its content is not in the expected format."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder lacks a file or folder its layout requires."""

    def __init__(self, dataset: str, missing: str | Path, expected_layout: str, source: str) -> None:
        self.missing = Path(missing)
        super().__init__(
            f"{dataset}: missing {missing}\n\nExpected layout:\n{expected_layout.rstrip()}\n\n"
            f"Where to get it: {source}"
        )
