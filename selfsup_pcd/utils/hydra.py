"""Hydra helpers: resolvers used by conf/, and instantiation of callback / logger groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = str(PROJECT_ROOT / "conf")


def register_resolvers() -> None:
    """Resolvers referenced from the YAML files (safe to call twice)."""
    resolvers = {
        "project_root": lambda: str(PROJECT_ROOT),
        "point_channels": lambda normals: 6 if normals else 3,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiates every ``_target_`` entry of a config group such as ``callbacks`` or ``logger``."""
    if not group:
        return []
    return [hydra.utils.instantiate(node) for node in group.values() if isinstance(node, DictConfig)
            and "_target_" in node]


register_resolvers()
