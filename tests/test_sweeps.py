"""Sweeps (issue #9): seed multiruns as one wandb group with one finished run per job, ``compare`` over them, the
Optuna search config, and the SLURM / submitit launchers."""

from __future__ import annotations

import json
import os
import re
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _cli import ROOT, TINY_TRAIN, cli_env
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from selfsup_pcd.compare import PANEL_PX, LocalRun, OfflineWandbRun, group_curves, main
from selfsup_pcd.sweeps import finish_wandb_run
from selfsup_pcd.utils.hydra import CONFIG_DIR
from selfsup_pcd.wandb_files import find_offline_runs, read_offline_run

SWEEP = [*TINY_TRAIN, "trainer.max_epochs=2", "callbacks=none", "data.num_workers=0"]
LRS = ("0.001", "0.01")


def multirun(log_dir: Path, overrides: list[str], timeout: float = 300) -> Path:
    """Runs ``train -m`` with wandb forced offline; returns the (single) sweep directory."""
    env = cli_env()
    env["WANDB_MODE"] = "offline"
    proc = subprocess.run([sys.executable, "-m", "selfsup_pcd.train", "-m", f"paths.log_dir={log_dir}", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"multirun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    sweeps = sorted((log_dir / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def overrides(job: Path) -> dict[str, str]:
    return dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))


def metrics(job: Path) -> dict[str, float]:
    return json.loads((job / "metrics.json").read_text())


@pytest.fixture(scope="module")
def sweep_2x2(tmp_path_factory) -> Path:
    """2 learning rates x 2 seeds, logged to wandb (offline) and CSV."""
    log_dir = tmp_path_factory.mktemp("sweep")
    return multirun(log_dir, [*SWEEP, "logger=many", "seed=0,1", f"task.optimizer.lr={','.join(LRS)}"])


def test_each_job_is_its_own_finished_wandb_run_in_one_group(sweep_2x2) -> None:
    runs = []
    for job in jobs(sweep_2x2):
        offline = find_offline_runs(job)
        assert len(offline) == 1, offline
        run = read_offline_run(offline[0])
        runs.append(run)
        assert run.finished and run.exit_code == 0
        assert run.name.endswith(f"/{job.name}")
        ov = overrides(job)
        assert run.config["seed"] == int(ov["seed"])
        assert run.config["task"]["optimizer"]["lr"] == float(ov["task.optimizer.lr"])
        # nothing of another job: exactly this job's two validation epochs, its own final value
        epochs = [row["epoch"] for row in run.history if "val/oa" in row]
        assert epochs == [0, 1]
        assert run.summary["val/oa"] == pytest.approx(metrics(job)["val/oa"])
    assert len(runs) == 4 and len({r.run_id for r in runs}) == 4
    group = sweep_2x2.relative_to(sweep_2x2.parents[2]).as_posix()  # train/multiruns/<time>, below paths.log_dir
    assert {r.group for r in runs} == {group}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def table(out: str) -> dict[str, list[str]]:
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.strip().splitlines()]
    return {row[0]: row[1:] for row in rows}


def test_compare_sweep_mean_std_over_seeds_and_plot(sweep_2x2, tmp_path, capsys) -> None:
    png, md, js = tmp_path / "curves.png", tmp_path / "t.md", tmp_path / "t.json"
    assert main([str(sweep_2x2), "--group-by", "task.optimizer.lr", "--metric", "val/oa", "--plot", str(png),
                 "--markdown", str(md), "--json", str(js)]) == 0
    rows = table(capsys.readouterr().out)
    labels = [f"task.optimizer.lr={lr}" for lr in LRS]
    assert rows["metric"] == labels and rows["n"] == ["2", "2"]
    expected = []
    for lr in LRS:
        values = [metrics(j)["val/oa"] for j in jobs(sweep_2x2) if overrides(j)["task.optimizer.lr"] == lr]
        assert len(values) == 2
        expected.append(f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}")
    assert rows["val/oa (%)"] == expected
    assert f"| val/oa (%) | {expected[0]} | {expected[1]} |" in md.read_text()
    assert all(json.loads(js.read_text())[label]["val/oa"]["n"] == 2 for label in labels)
    # two panels (val/oa, val/oa_best) of PANEL_PX each, both groups drawn in their colours
    assert png_size(png) == (2 * PANEL_PX[0], PANEL_PX[1])
    from PIL import Image

    with Image.open(png) as image:
        colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert {(31, 119, 180), (255, 127, 14)} <= colours  # matplotlib's C0 and C1
    groups = {f"task.optimizer.lr={lr}": [LocalRun(j) for j in jobs(sweep_2x2)
                                          if overrides(j)["task.optimizer.lr"] == lr] for lr in LRS}
    curve = group_curves(groups, ["val/oa"], "epoch")["val/oa"][labels[0]]
    assert curve.x == [0.0, 1.0] and curve.n == [2, 2] and all(s is not None for s in curve.std)


def test_wandb_offline_runs_read_like_the_csv_logs(sweep_2x2, capsys) -> None:
    offline = [find_offline_runs(j)[0] for j in jobs(sweep_2x2)]
    args = ["--group-by", "task.optimizer.lr", "--metric", "val/oa"]
    assert main([str(sweep_2x2), *args]) == 0
    from_dirs = table(capsys.readouterr().out)
    assert main([*map(str, offline), *args]) == 0  # summary + logged config of each .wandb file
    assert table(capsys.readouterr().out) == from_dirs
    for job, run_dir in zip(jobs(sweep_2x2), offline):
        csv_curve = group_curves({"g": [LocalRun(job)]}, ["val/"], "epoch")
        wandb_curve = group_curves({"g": [OfflineWandbRun(run_dir)]}, ["val/"], "epoch")
        assert set(csv_curve) == set(wandb_curve) >= {"val/oa", "val/loss"}
        for name, per_group in csv_curve.items():
            assert wandb_curve[name]["g"].x == per_group["g"].x
            assert wandb_curve[name]["g"].mean == pytest.approx(per_group["g"].mean, rel=1e-6)


def test_wandb_api_source_fails_clearly_offline(monkeypatch, capsys) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["wandb:someone/selfsup_pcd", "--group-by", "seed"]) == 2
    err = capsys.readouterr().err
    assert "wandb:someone/selfsup_pcd: reading runs through the wandb API needs the network" in err
    assert main(["wandb:no-project"]) == 2
    assert "expected wandb:ENTITY/PROJECT" in capsys.readouterr().err


def test_wandb_api_runs_are_grouped_like_local_ones(monkeypatch, tmp_path, capsys) -> None:
    """The API code path, with ``wandb.Api`` replaced by a stand-in holding what the API returns."""
    import wandb

    class FakeRun:
        def __init__(self, i: int, lr: float, oa: list[float]) -> None:
            self.id, self.name = f"id{i}", f"train/sweep/{i}"
            self.config = {"seed": i % 2, "task": {"optimizer": {"lr": lr}}, "_wandb": {"x": 1}}
            self.summary = {"val/oa": oa[-1], "_step": 5, "epoch": 1}
            self._oa = oa

        def scan_history(self):
            return [{"epoch": e, "val/oa": v, "trainer/global_step": 10 * e, "_step": e}
                    for e, v in enumerate(self._oa)]

    fake = [FakeRun(0, 0.1, [0.2, 0.4]), FakeRun(1, 0.1, [0.4, 0.8]), FakeRun(2, 0.5, [0.1, 0.3])]
    asked = {}

    class FakeApi:
        def __init__(self, timeout: int) -> None:
            pass

        def runs(self, path: str, filters: dict) -> list[FakeRun]:
            asked.update(path=path, filters=filters)
            return fake

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(wandb, "Api", FakeApi)
    png = tmp_path / "api.png"
    assert main(["wandb:me/proj", "--wandb-group", "train/sweep", "--group-by", "task.optimizer.lr",
                 "--plot", str(png), "--x", "step"]) == 0
    assert asked == {"path": "me/proj", "filters": {"group": "train/sweep"}}
    rows = table(capsys.readouterr().out)
    assert rows["n"] == ["2", "1"] and rows["val/oa (%)"] == ["60.0 ± 28.3", "30.0"]
    assert png_size(png) == PANEL_PX


def test_optuna_search_returns_the_objective(tmp_path) -> None:
    sweep = multirun(tmp_path, [*SWEEP, "hparams_search=cls_optuna", "hydra.sweeper.n_trials=2", "logger=csv"])
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = jobs(sweep)
    assert len(trials) == 2
    values = [metrics(j)["val/oa_best"] for j in trials]
    assert results["best_value"] == pytest.approx(max(values))
    best = trials[values.index(max(values))]
    params = results["best_params"]
    assert set(params) == {"task.optimizer.lr", "task.optimizer.weight_decay"}
    assert 1e-4 <= params["task.optimizer.lr"] <= 1e-2 and 1e-6 <= params["task.optimizer.weight_decay"] <= 1e-3
    if len(set(values)) == 2:  # a tie does not tell which trial optuna calls best
        assert float(overrides(best)["task.optimizer.lr"]) == pytest.approx(params["task.optimizer.lr"])


def test_train_returns_the_optimized_metric_or_names_the_logged_ones(monkeypatch) -> None:
    import selfsup_pcd.train as train_module

    monkeypatch.setattr(train_module, "train", lambda cfg: {"val/oa": 0.5, "val/loss": 1.0})
    task = train_module.main.__wrapped__  # the function under @hydra.main
    assert task(OmegaConf.create({"optimized_metric": "val/oa"})) == 0.5
    assert task(OmegaConf.create({"optimized_metric": None})) is None
    with pytest.raises(KeyError, match="'val/oa_best' was not logged; logged: val/loss, val/oa"):
        task(OmegaConf.create({"optimized_metric": "val/oa_best"}))


def finished_run(path: Path, timeout: float = 30.0):
    """The offline run once its file holds the exit record: wandb's core process may still be writing after
    ``finish()`` returned in this process (a separate job process has exited by then)."""
    deadline = time.monotonic() + timeout
    while not (run := read_offline_run(path)).finished and time.monotonic() < deadline:
        time.sleep(0.1)
    return run


def test_a_failed_job_finishes_its_wandb_run(tmp_path, monkeypatch) -> None:
    """wandb.init returns a run still open in the process: the next job of a sweep would log into it."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with pytest.raises(RuntimeError, match="diverged"), finish_wandb_run():
        first = wandb.init(project="p", dir=tmp_path, group="g")
        first.log({"loss": 1.0})
        raise RuntimeError("diverged")
    assert wandb.run is None
    with finish_wandb_run():
        second = wandb.init(project="p", dir=tmp_path, group="g")
        second.log({"loss": 0.5})
    assert second.id != first.id and wandb.run is None
    runs = {r.run_id: r for r in map(finished_run, sorted((tmp_path / "wandb").glob("offline-run-*")))}
    assert runs[first.id].exit_code == 1 and runs[second.id].exit_code == 0
    assert [row["loss"] for row in runs[first.id].history] == [1.0]
    assert [row["loss"] for row in runs[second.id].history] == [0.5]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_sizes_the_allocation_from_the_trainer(tmp_path, monkeypatch) -> None:
    import submitit.slurm.slurm as slurm

    cfg = compose_train(["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4",
                         f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.launcher.partition=gpu"])
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher_cfg.nodes, launcher_cfg.tasks_per_node, launcher_cfg.gpus_per_node) == (2, 4, 4)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu"
    single = compose_train(["hydra/launcher=slurm"])  # trainer without num_nodes: one node, one task
    assert (single.hydra.launcher.nodes, single.hydra.launcher.tasks_per_node) == (1, 1)

    # the sbatch script submitit would submit (no cluster here: srun stands in, sbatch is never called)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    class SubmittedError(Exception):
        pass

    def capture(executor, command: str):
        raise SubmittedError(executor._make_submission_file_text(command, "uid"))

    monkeypatch.setattr(slurm.SlurmExecutor, "_submit_command", capture)
    launcher = instantiate(launcher_cfg)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    with pytest.raises(SubmittedError) as submitted:
        launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    sbatch = submitted.value.args[0]
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in sbatch, line
    assert re.search(r"^#SBATCH --array=0-1(%\d+)?$", sbatch, re.M)  # one array element per job
    assert re.search(r"^srun .* -m submitit\.core\._submit ", sbatch, re.M)


@pytest.fixture
def restored_environ():
    """Lightning's SLURM environment writes MASTER_ADDR / MASTER_PORT into os.environ itself; left behind, they send
    every later DDP test's rank 1 to the fake node 'gpu07' (a hang), so the whole environment is put back."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_lightning_takes_its_ranks_from_slurm(tmp_path, monkeypatch, restored_environ) -> None:
    from lightning_fabric.plugins.environments import SLURMEnvironment

    # task 3 of `srun` on 2 nodes x 2 tasks: second task of the second node
    for key, value in {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3",
                       "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_NODELIST": "gpu[07-08]",
                       "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "42"}.items():
        monkeypatch.setenv(key, value)
    cfg = compose_train(["trainer=ddp", "trainer.num_nodes=2", "trainer.devices=2", "trainer.accelerator=cpu",
                         f"trainer.default_root_dir={tmp_path}"])
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size) == (3, 1, 1, 4)
    assert trainer.strategy.cluster_environment.main_address == "gpu07"
    # srun started the processes: Lightning's launcher starts no child script
    assert trainer.strategy.cluster_environment.creates_processes_externally


@pytest.mark.slow  # ~20 s: submitit's process start and polling
def test_submitit_local_executor_runs_the_job(tmp_path) -> None:
    """The job runs in a process of submitit's own (what srun would start), and writes into the sweep directory."""
    sweep = multirun(tmp_path, [*SWEEP, "trainer.max_epochs=1", "hydra/launcher=submitit_local", "logger=many",
                                "seed=3"])
    (job,) = jobs(sweep)
    assert overrides(job)["seed"] == "3" and (job / "metrics.json").is_file()
    (log,) = (sweep / ".submitit").rglob("*_log.out")
    (offline,) = find_offline_runs(job)
    run = read_offline_run(offline)
    assert run.finished and run.group == sweep.relative_to(tmp_path).as_posix()
    assert f"metrics written to {job / 'metrics.json'}" in log.read_text()  # the job's output went to submitit's log
