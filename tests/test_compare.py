"""`python -m selfsup_pcd.compare`: metrics of run directories side by side."""

from __future__ import annotations

import json

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
