"""Runs the project's entry points as a user would: ``python -m selfsup_pcd.<entry> overrides``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A small but real configuration: procedural shapes, a narrow PointNet, few epochs.
TINY_TRAIN = [
    "data=procedural",
    "data.train_per_class=6",
    "data.test_per_class=3",
    "data.num_points=128",
    "data.batch_size=8",
    "model=pointnet",
    "model.backbone.mlp2=[32,64,128]",
    "model.head.hidden=[32]",
    "task.scheduler.T_max=4",
]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    env.pop("WANDB_MODE", None)
    return env


def command(entry: str, log_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", f"selfsup_pcd.{entry}", f"paths.log_dir={log_dir}", *overrides]


def run_cli(
    entry: str, log_dir: Path, overrides: list[str], timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(entry, log_dir, overrides), cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{entry} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def start_cli(entry: str, log_dir: Path, overrides: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command(entry, log_dir, overrides), cwd=ROOT, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
