"""`python -m selfsup_pcd.compare`: metrics of run directories side by side."""

from __future__ import annotations

import json
import re

import pytest

from selfsup_pcd.compare import main


def write_run(root, name: str, metrics: dict) -> object:
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_mean_std_pairs_merge_into_percent_cells(tmp_path, capsys) -> None:
    a = write_run(tmp_path, "pretrained", {"test/1shot_macc_mean": 0.625, "test/1shot_macc_std": 0.05,
                                           "test/oa": 0.9, "train/loss": 1.2345})
    b = write_run(tmp_path, "random", {"test/1shot_macc_mean": 0.5, "test/1shot_macc_std": 0.125})
    assert main([str(a), str(b), "--markdown", str(tmp_path / "t.md")]) == 0
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["test/1shot_macc"] == ["(%)", "62.5", "±", "5.0", "50.0", "±", "12.5"]
    assert lines["test/oa"] == ["(%)", "90.0", "-"]          # missing in one run: a dash, not a crash
    assert lines["train/loss"] == ["1.234", "-"]             # not a rate: raw value, no percent
    markdown = (tmp_path / "t.md").read_text().splitlines()
    assert markdown[0] == "| metric | pretrained | random |"
    assert "| test/1shot_macc (%) | 62.5 ± 5.0 | 50.0 ± 12.5 |" in markdown


def test_metric_filter_and_missing_run_named(tmp_path, capsys) -> None:
    a = write_run(tmp_path, "a", {"test/oa": 0.5, "test/macc": 0.25})
    assert main([str(a), "--metric", "macc"]) == 0
    out = capsys.readouterr().out
    assert "test/macc" in out and "test/oa" not in out
    assert main([str(a), str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere' / 'metrics.json'}: no metrics.json" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_corrupt_metrics_file_is_an_error_naming_it(tmp_path, capsys, text) -> None:
    run = tmp_path / "bad"
    run.mkdir()
    (run / "metrics.json").write_text(text)
    assert main([str(run)]) == 2
    assert str(run / "metrics.json") in capsys.readouterr().err


# ---- sweeps: run discovery and --group-by over the Hydra job layout -------------------------------------------------

def write_job(root, name: str, metrics: dict, config: str, overrides: list[str] | None = None) -> object:
    """One job directory as Hydra writes it: metrics.json next to .hydra/{config,overrides}.yaml."""
    run = write_run(root, name, metrics)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(config)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides or []))
    return run


JOB_CONFIG = """\
seed: {seed}
method:
  temperature: {temperature}
data:
  seed: ${{seed}}
  pairs:
    shuffle: false
model:
  in_channels: ${{point_channels:${{oc.select:data.use_normals,false}}}}
paths:
  root_dir: ${{project_root:}}
"""


def write_sweep(root) -> object:
    """A 2x2 multirun (method.temperature x seed) with hand-chosen metrics; jobs numbered as Hydra does."""
    sweep = root / "multirun" / "2024-05-01" / "12-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    jobs = [  # temperature, seed, test/oa, train/loss, within-run SVM draws (mean, std)
        (0.1, 0, 0.5, 1.0, 0.25, 0.01),
        (0.1, 1, 0.7, 3.0, 0.75, 0.02),
        (0.5, 0, 0.8, 2.0, 0.5, 0.03),
        (0.5, 1, 0.9, 2.0, 0.5, 0.04),
    ]
    for i, (temperature, seed, oa, loss, draws_mean, draws_std) in enumerate(jobs):
        write_job(sweep, str(i), {"test/oa": oa, "train/loss": loss, "test/1shot_macc_mean": draws_mean,
                                  "test/1shot_macc_std": draws_std},
                  JOB_CONFIG.format(seed=seed, temperature=temperature),
                  [f"method.temperature={temperature}", f"seed={seed}"])
    return sweep


def table(out: str) -> dict[str, list[str]]:
    """Plain-text table rows by metric label, cells split on two or more spaces."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.strip().splitlines()]
    return {row[0]: row[1:] for row in rows}


def test_sweep_2x2_groups_mean_std_over_seeds(tmp_path, capsys) -> None:
    write_sweep(tmp_path)
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    assert main([str(tmp_path / "multirun"), "--group-by", "method.temperature", "--markdown", str(md),
                 "--json", str(js)]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["metric"] == ["method.temperature=0.1", "method.temperature=0.5"]
    assert rows["n"] == ["2", "2"]
    # test/oa: (0.5, 0.7) -> 60.0 ± sqrt(0.02) = 14.1;  (0.8, 0.9) -> 85.0 ± sqrt(0.005) = 7.1
    assert rows["test/oa (%)"] == ["60.0 ± 14.1", "85.0 ± 7.1"]
    # train/loss (not a rate): (1, 3) -> 2 ± sqrt(2);  (2, 2) -> 2 ± 0
    assert rows["train/loss"] == ["2 ± 1.414", "2 ± 0"]
    # each run's own draw mean is aggregated over runs; its within-run std is dropped
    assert rows["test/1shot_macc (%)"] == ["50.0 ± 35.4", "50.0 ± 0.0"]
    assert not any("_std" in label for label in rows)
    markdown = md.read_text().splitlines()
    assert markdown[0] == "| metric | method.temperature=0.1 | method.temperature=0.5 |"
    assert "| test/oa (%) | 60.0 ± 14.1 | 85.0 ± 7.1 |" in markdown and "| n | 2 | 2 |" in markdown
    summary = json.loads(js.read_text())
    assert list(summary) == ["method.temperature=0.1", "method.temperature=0.5"]
    low = summary["method.temperature=0.1"]
    assert low["test/oa"] == {"mean": pytest.approx(0.6), "std": pytest.approx(0.02 ** 0.5), "n": 2}
    assert low["test/1shot_macc_mean"] == {"mean": pytest.approx(0.5), "std": pytest.approx(0.125 ** 0.5), "n": 2}
    assert "test/1shot_macc_std" not in low
    assert summary["method.temperature=0.5"]["train/loss"] == {"mean": 2.0, "std": 0.0, "n": 2}


def test_group_by_several_keys_and_interpolations(tmp_path, capsys) -> None:
    write_sweep(tmp_path)
    # data.seed is ${seed}, model.in_channels uses the project's resolvers: both resolved, whatever ran before
    assert main([str(tmp_path), "--group-by", "data.seed", "--group-by", "model.in_channels",
                 "--group-by", "data.pairs.shuffle", "--metric", "test/oa"]) == 0
    rows = table(capsys.readouterr().out)
    raw = "model.in_channels=3"
    assert rows["metric"] == [f"data.seed=0,{raw},data.pairs.shuffle=false",
                              f"data.seed=1,{raw},data.pairs.shuffle=false"]
    assert rows["n"] == ["2", "2"]
    assert rows["test/oa (%)"] == ["65.0 ± 21.2", "80.0 ± 14.1"]  # (0.5, 0.8) and (0.7, 0.9)


def test_group_of_one_omits_std_and_partial_metric_says_n(tmp_path, capsys) -> None:
    cfg = "k: {k}\n"
    write_job(tmp_path, "a", {"test/oa": 0.5, "extra": 1.0}, cfg.format(k=10))
    write_job(tmp_path, "b", {"test/oa": 0.7}, cfg.format(k=10))
    write_job(tmp_path, "c", {"test/oa": 0.25}, cfg.format(k=2))
    js = tmp_path / "t.json"
    assert main([str(tmp_path), "--group-by", "k", "--json", str(js)]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["metric"] == ["k=2", "k=10"]           # numbers in numeric order
    assert rows["n"] == ["1", "2"]
    assert rows["test/oa (%)"] == ["25.0", "60.0 ± 14.1"]
    assert rows["extra"] == ["-", "1 (n=1)"]
    assert json.loads(js.read_text())["k=2"]["test/oa"] == {"mean": 0.25, "std": None, "n": 1}


def test_nested_discovery_skips_hidden_dirs_and_run_subdirs(tmp_path, capsys) -> None:
    write_run(tmp_path / "x" / "deep" / "er", "run1", {"m": 1.0})
    write_run(tmp_path / "y", "run2", {"m": 2.0})
    run3 = write_run(tmp_path, "run3", {"m": 3.0})
    write_run(run3, "csv", {"m": 99.0})                        # inside a run: not another run
    write_run(tmp_path / ".hidden", "run4", {"m": 99.0})      # hidden directories are not searched
    # the same run reached twice (through its parent and directly) is one column
    assert main([str(tmp_path), str(run3)]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["metric"] == ["run3", "run1", "run2"]         # a run argument first, then its sweep in path order
    assert rows["m"] == ["3", "1", "2"]


def test_nested_discovery_labels_jobs_by_relative_path(tmp_path, capsys) -> None:
    for sweep, value in (("s1", 1.0), ("s2", 2.0)):
        for job in ("0", "1", "10", "2"):
            write_run(tmp_path / sweep, job, {"m": value + int(job) / 100})
    js = tmp_path / "t.json"
    assert main([str(tmp_path / "s1"), str(tmp_path / "s2"), "--json", str(js)]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["metric"] == ["s1/0", "s1/1", "s1/2", "s1/10", "s2/0", "s2/1", "s2/2", "s2/10"]
    assert json.loads(js.read_text())["s2/10"] == {"m": {"mean": 2.1, "std": None, "n": 1}}


def test_missing_key_config_or_runs_are_errors_naming_them(tmp_path, capsys) -> None:
    sweep = write_sweep(tmp_path)
    assert main([str(sweep), "--group-by", "method.temperature", "--group-by", "method.momentum"]) == 2
    err = capsys.readouterr().err
    assert f"run {sweep / '0'}: config key 'method.momentum' not in {sweep / '0' / '.hydra' / 'config.yaml'}" in err
    bare = write_run(tmp_path, "bare", {"m": 1.0})
    assert main([str(bare), "--group-by", "seed"]) == 2
    assert f"{bare / '.hydra' / 'config.yaml'}: not found" in capsys.readouterr().err
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    assert f"no run directory (holding one) below {tmp_path / 'empty'}" in capsys.readouterr().err
    (sweep / "3" / "metrics.json").write_text("{broken")
    assert main([str(sweep)]) == 2
    assert str(sweep / "3" / "metrics.json") in capsys.readouterr().err
    (sweep / "2" / ".hydra" / "config.yaml").write_text("a: [unclosed\n")
    assert main([str(sweep / "2"), "--group-by", "seed"]) == 2
    assert f"{sweep / '2' / '.hydra' / 'config.yaml'}: not a readable config" in capsys.readouterr().err


# ---- curves: --plot from Lightning CSV logs ------------------------------------------------------------------------

def write_csv_log(run, rows: list[dict]) -> None:
    """A Lightning CSVLogger file: one column per key, cells a row did not log left empty."""
    columns = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("epoch", "step"), k))
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    (run / "csv").mkdir()
    (run / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_mean_and_std_band_per_group_from_csv_logs(tmp_path, capsys) -> None:
    from selfsup_pcd.compare import PANEL_PX, LocalRun, group_curves, plot_size

    sweep = write_sweep(tmp_path)
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        k = int(job.name)
        # val/oa once per epoch; train/loss twice per epoch (per step); epoch 2 only in job 3
        rows = [{"epoch": e, "step": 10 * e + 4, "val/oa": 0.1 * (e + 1) + 0.01 * k} for e in range(2 + (k == 3))]
        rows += [{"epoch": e, "step": 10 * e + s, "train/loss": float(k + e + s)} for e in range(2) for s in (1, 3)]
        write_csv_log(job, rows)
    groups = {"t=0.1": [LocalRun(sweep / "0"), LocalRun(sweep / "1")],
              "t=0.5": [LocalRun(sweep / "2"), LocalRun(sweep / "3")]}
    curves = group_curves(groups, ["val/oa", "train/loss"], "epoch")
    low, high = curves["val/oa"]["t=0.1"], curves["val/oa"]["t=0.5"]
    assert low.x == [0.0, 1.0] and low.mean == pytest.approx([0.105, 0.205]) and low.n == [2, 2]
    assert low.std == pytest.approx([0.01 / 2 ** 0.5] * 2)
    assert high.x == [0.0, 1.0, 2.0] and high.n == [2, 2, 1] and high.std[2] is None  # one run: no band
    # per-step values are averaged within the epoch of each run first: job 0, epoch 1 -> (2 + 4) / 2
    assert curves["train/loss"]["t=0.1"].mean == pytest.approx([(2.0 + 3.0) / 2, (3.0 + 4.0) / 2])
    assert group_curves(groups, ["val/oa"], "step")["val/oa"]["t=0.1"].x == [4.0, 14.0]

    png = tmp_path / "out" / "curves.png"
    assert main([str(sweep), "--group-by", "method.temperature", "--metric", "val/oa", "--metric", "loss",
                 "--plot", str(png)]) == 0
    assert "train/loss" in capsys.readouterr().out             # metrics.json's train/loss row
    assert png_size(png) == plot_size(2) == (2 * PANEL_PX[0], PANEL_PX[1])
    assert plot_size(4) == (3 * PANEL_PX[0], 2 * PANEL_PX[1])  # three panels a row


def test_plot_without_any_history_is_an_error(tmp_path, capsys) -> None:
    sweep = write_sweep(tmp_path)
    assert main([str(sweep), "--plot", str(tmp_path / "c.png")]) == 2
    assert "--plot: no run has a logged history" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
