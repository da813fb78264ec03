"""Run-directory chores shared by the entry points: resume, metrics file, config logging."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def resolve_resume_checkpoint(ckpt_path: str | None, output_dir: str | Path, auto_resume: bool) -> str | None:
    """Which checkpoint ``fit`` resumes from.

    ``ckpt_path=last`` means the run directory's ``checkpoints/last.ckpt`` (an error if there is none);
    with no ``ckpt_path`` and ``auto_resume``, that file is used when it exists, so re-running the same
    command in the same run directory continues it.
    """
    last = Path(output_dir) / LAST_CHECKPOINT
    if ckpt_path == "last":
        if not last.is_file():
            raise FileNotFoundError(f"ckpt_path=last but {last} does not exist (set run_name to the run to resume)")
        return str(last)
    if ckpt_path:
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path {ckpt_path} does not exist")
        return str(ckpt_path)
    if auto_resume and last.is_file():
        log.info("Resuming from %s", last)
        return str(last)
    return None


def checkpoint_entry(path: str, key: str) -> Any:
    """One top-level entry of a Lightning checkpoint (memory-mapped, tensors not copied)."""
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True).get(key)


def _flat_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    flat = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, int | float) and math.isfinite(float(value)):
            flat[name] = float(value)
    return flat


def write_metrics(output_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Writes ``<output_dir>/metrics.json`` (flat name -> float), merging with what is already there."""
    path = Path(output_dir) / "metrics.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(_flat_floats(metrics))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".metrics.", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(dict(sorted(merged.items())), handle, indent=2)
    os.replace(tmp, path)
    return path


def config_as_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]


def print_metrics_table(metrics: Mapping[str, float], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(metrics.items()):
        table.add_row(name, f"{value:.4f}")
    Console().print(table)
