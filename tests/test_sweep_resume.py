"""Resumable sweeps (issue #9): a named grid sweep killed part-way and re-run with the same command finishes only what
was left: finished jobs are skipped, the interrupted one resumes from its last.ckpt, the others run."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _cli import ROOT, TINY_TRAIN, cli_env
from omegaconf import OmegaConf

from selfsup_pcd.data.synthetic import CLASS_NAMES
from selfsup_pcd.sweeps import JOB_RECORD, SweepJob, SweepJobMismatchError
from selfsup_pcd.utils.callbacks import TEST_KILL_ENV
from selfsup_pcd.wandb_files import find_offline_runs, read_offline_run

# 2 seeds x 2 learning rates, wandb offline; jobs 0..3 in this order: (0, 0.001) (0, 0.01) (1, 0.001) (1, 0.01)
GRID = [*TINY_TRAIN, "trainer.max_epochs=2", "data.num_workers=0", "logger=wandb", "~callbacks.rich_progress_bar",
        "sweep_name=grid", "seed=0,1", "task.optimizer.lr=0.001,0.01"]
# TINY_TRAIN's procedural training split: 6 shapes per class, batches of 8 (drop_last)
STEPS_PER_EPOCH = len(CLASS_NAMES) * 6 // 8


def sweep(log_dir: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    """The same command each time; ``kill`` (JOB:EPOCH) is the test hook that SIGKILLs the sweep process."""
    env = cli_env()
    env["WANDB_MODE"] = "offline"
    if kill:
        env[TEST_KILL_ENV] = kill
    return subprocess.run([sys.executable, "-m", "selfsup_pcd.train", "-m", f"paths.log_dir={log_dir}", *GRID],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def fingerprint(job: Path) -> dict[str, tuple[int, str]]:
    """mtime and hash of what a finished job wrote: a retrained job would rewrite every one of them."""
    files = [job / JOB_RECORD, job / "metrics.json", job / "backbone.pt", job / "checkpoints" / "last.ckpt"]
    return {f.name: (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest()) for f in files}


def record(job: Path) -> dict:
    return json.loads((job / JOB_RECORD).read_text())


def test_killed_sweep_rerun_finishes_only_what_was_left(tmp_path) -> None:
    root = tmp_path / "train" / "multiruns" / "grid"
    jobs = [root / str(i) for i in range(4)]

    killed = sweep(tmp_path, kill="1:1")  # job 1 dies at its first batch of epoch 1, after epoch 0's checkpoint
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert record(jobs[0])["done"] and (jobs[0] / "metrics.json").is_file()
    assert record(jobs[1]) == {"overrides": record(jobs[1])["overrides"], "done": False}
    assert not (jobs[1] / "metrics.json").exists()
    interrupted = ckpt(jobs[1] / "checkpoints" / "last.ckpt")
    assert (interrupted["epoch"], interrupted["global_step"]) == (0, STEPS_PER_EPOCH)
    assert not jobs[2].exists() and not jobs[3].exists()
    before = fingerprint(jobs[0])

    rerun = sweep(tmp_path)
    assert rerun.returncode == 0, f"{rerun.stdout[-3000:]}\n{rerun.stderr[-6000:]}"
    logs = [(job / "train.log").read_text() for job in jobs]

    # job 0 finished before the kill: skipped, nothing rewritten, no second wandb run
    assert fingerprint(jobs[0]) == before
    assert "skipped:" in logs[0] and logs[0].count("Resuming from") == 0
    assert len(find_offline_runs(jobs[0])) == 1

    # job 1 resumed from last.ckpt: same wandb run, which logged only the epoch left, from the step it had reached
    assert "skipped:" not in logs[1] and f"Resuming from {jobs[1] / 'checkpoints' / 'last.ckpt'}" in logs[1]
    final = ckpt(jobs[1] / "checkpoints" / "last.ckpt")
    uninterrupted = ckpt(jobs[0] / "checkpoints" / "last.ckpt")
    assert (final["epoch"], final["global_step"]) == (1, 2 * STEPS_PER_EPOCH)
    assert (uninterrupted["epoch"], uninterrupted["global_step"]) == (final["epoch"], final["global_step"])
    first_part, resumed_part = find_offline_runs(jobs[1])
    assert first_part.name.endswith(final["wandb_run_id"]) and resumed_part.name.endswith(final["wandb_run_id"])
    resumed = read_offline_run(resumed_part)
    assert [row["epoch"] for row in resumed.history if "val/oa" in row] == [1]
    assert min(row["trainer/global_step"] for row in resumed.history) >= STEPS_PER_EPOCH

    # jobs 2 and 3 had not started: they ran, from scratch, each as its own wandb run
    for log in logs[2:]:
        assert "skipped:" not in log and "Resuming from" not in log
    assert all(len(find_offline_runs(job)) == 1 for job in jobs[2:])

    # every job has its metrics, and the record hands the same values to a sweeper
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert record(job)["done"] and 0.0 <= metrics["test/oa"] <= 1.0
        assert record(job)["metrics"] == pytest.approx({k: metrics[k] for k in record(job)["metrics"]})
    assert [dict(o.split("=", 1) for o in record(job)["overrides"])["seed"] for job in jobs] == ["0", "0", "1", "1"]
    assert len({read_offline_run(find_offline_runs(job)[0]).run_id for job in jobs}) == 4


def test_job_record_skips_finished_resumes_started_and_refuses_another_job(tmp_path) -> None:
    job = SweepJob(tmp_path, ("seed=0", "lr=0.1"))
    assert job.start() is None  # fresh: recorded as started
    assert record(tmp_path) == {"overrides": ["seed=0", "lr=0.1"], "done": False}
    assert job.start() is None  # started, not finished: train (which resumes from last.ckpt)
    job.finish({"val/oa": 0.5})
    assert SweepJob(tmp_path, ("lr=0.1", "seed=0")).start() == {"val/oa": 0.5}  # same overrides, any order
    with pytest.raises(SweepJobMismatchError, match="holds another job"):
        SweepJob(tmp_path, ("seed=1", "lr=0.1")).start()
    assert record(tmp_path)["done"]  # the refused job changed nothing


def test_a_skipped_job_returns_its_recorded_metric_without_training(tmp_path, monkeypatch) -> None:
    import selfsup_pcd.train as train_module

    job = SweepJob(tmp_path, ("seed=0",))
    job.start()
    job.finish({"val/oa_best": 0.75})
    monkeypatch.setattr(SweepJob, "current", classmethod(lambda cls: job))
    monkeypatch.setattr(train_module, "train", lambda cfg: pytest.fail("a finished job was trained again"))
    assert train_module.main.__wrapped__(OmegaConf.create({"optimized_metric": "val/oa_best"})) == 0.75
