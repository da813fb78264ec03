"""Metrics of finished runs side by side, or grouped over seeds, as a table and as curves.

``python -m selfsup_pcd.compare PATH ... [--group-by KEY ...] [--metric NAME ...] [--markdown FILE] [--json FILE]
[--plot FILE.png [--x epoch|step]] [--wandb-group NAME]``

Each PATH is a run directory (it holds ``metrics.json``, written by ``train`` and ``eval``), a wandb offline run
directory (``wandb/offline-run-*``), a directory with such runs below it at any depth (a Hydra multirun/sweep
directory), or ``wandb:ENTITY/PROJECT`` (runs read through the wandb API: needs the network and ``wandb login``;
``--wandb-group`` keeps one group, e.g. one sweep). A run directory is not searched further, and hidden
directories (``.hydra``) are skipped. A bare wandb run (no ``metrics.json`` around it) gives its summary as final
metrics and its logged config to ``--group-by``.

Without ``--group-by`` the table has one row per metric and one column per run. ``NAME_mean`` / ``NAME_std`` pairs
(e.g. few-shot SVM draws) are shown as one ``mean ± std`` cell; accuracies and IoUs (values in [0, 1] under names the
tasks use) are shown in percent.

With ``--group-by KEY`` (repeatable; dotted keys of the composed config ``.hydra/config.yaml``, e.g.
``method.temperature``) runs whose values of those keys are equal form one group, one column labelled
``KEY=VALUE,...``. A cell is the mean ± sample std (ddof=1) over the runs of the group that have the metric, and
the ``n`` row counts the runs of each group; a cell over fewer runs says ``(n=k)``, and with n=1 the std is omitted
(``null`` in JSON). A run's own ``NAME_mean`` is aggregated like any metric, so the within-run std (``NAME_std``,
spread over draws) is dropped: the spread shown is over runs (seeds). Interpolations in the config that cannot be
resolved here (e.g. Hydra's ``${hydra:...}``) are compared as their raw ``${...}`` text.

``--markdown FILE`` also writes the table; ``--json FILE`` writes ``{column label: {metric name as in metrics.json:
{"mean", "std", "n"}}}`` with raw values (no percent), for scripts.

``--plot FILE`` writes a PNG of the logged curves: one panel per metric (those ``--metric`` keeps that have two or
more x values), one line per group (per run without ``--group-by``) at the mean over its runs, with a ±std band
where two or more runs have the point. x is the epoch (values logged several times in an epoch are averaged within
the run) or, with ``--x step``, the global step. Curves come from the run's CSV log (``csv/metrics.csv`` of
Lightning's CSVLogger), else from its wandb offline run(s), read from the ``.wandb`` file without the network.
The image is ``PANEL_PX`` pixels per panel, at most ``PLOT_COLUMNS`` panels a row.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from selfsup_pcd.utils.hydra import register_resolvers
from selfsup_pcd.wandb_files import WandbFileError, find_offline_runs, is_offline_run_dir, read_offline_run

PERCENT_HINTS = ("acc", "oa", "iou", "map")
METRICS_FILE = "metrics.json"
CONFIG_FILE = Path(".hydra") / "config.yaml"
CSV_LOG = Path("csv") / "metrics.csv"
GROUP_N_ROW = "n"
WANDB_PREFIX = "wandb:"
X_KEYS = ("epoch", "step")
PANEL_PX = (400, 300)
PLOT_COLUMNS = 3
_DPI = 100


class CompareError(RuntimeError):
    """A run directory without readable metrics or config: reported as one line naming the file."""


def read_metrics(run_dir: Path) -> dict[str, float]:
    """The run's numeric metrics; non-numeric entries are skipped (they cannot be averaged or compared)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise CompareError(f"{path}: no metrics.json (is {run_dir} a finished train/eval run directory?)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CompareError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    if not isinstance(metrics, dict):
        raise CompareError(f"{path}: expected an object of metric name -> number")
    return {str(k): float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def _natural_key(name: str) -> list[Any]:
    """Sort ``2`` before ``10``: Hydra numbers sweep jobs 0, 1, ..., 10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]



def _number(value: Any) -> float | None:
    """Finite or not, a float for numbers (not bools); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _wandb_row(row: dict[str, Any]) -> dict[str, float]:
    """A wandb history row in CSV terms: ``step`` is Lightning's global step, wandb's own ``_*`` keys dropped."""
    out = {k: v for k, raw in row.items() if not k.startswith("_") and (v := _number(raw)) is not None}
    step = out.pop("trainer/global_step", None)
    if step is None and _number(row.get("_step")) is not None:
        step = float(row["_step"])
    if step is not None:
        out["step"] = step
    return out


def _wandb_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Final metrics of a wandb run: its numeric summary, less wandb's and Lightning's bookkeeping keys."""
    return {k: v for k, raw in summary.items() if not k.startswith("_") and k not in ("epoch", "trainer/global_step")
            and (v := _number(raw)) is not None}


def read_csv_history(path: Path) -> list[dict[str, float]]:
    """Rows of a Lightning ``metrics.csv``: the cells each row filled (CSVLogger leaves the others empty)."""
    rows = []
    with open(path, newline="") as f:
        for line in csv.DictReader(f):
            row = {}
            for key, cell in line.items():
                if key is None or cell in (None, ""):
                    continue
                try:
                    row[key] = float(cell)
                except ValueError:
                    continue
            rows.append(row)
    return rows


class Run:
    """One run, wherever it was logged; metrics, config and history are read on first use."""

    path: Path
    config_source: str

    def metrics(self) -> dict[str, float]:
        raise NotImplementedError

    def config(self) -> Any:
        raise NotImplementedError

    def history(self) -> list[dict[str, float]]:
        """Logged rows, each with ``epoch`` and/or ``step`` and the metrics of that log call."""
        raise NotImplementedError


class LocalRun(Run):
    """A run directory of ``train`` / ``eval``: ``metrics.json``, ``.hydra/``, ``csv/`` and/or ``wandb/``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config_source = str(self.path / CONFIG_FILE)

    def metrics(self) -> dict[str, float]:
        return read_metrics(self.path)

    def config(self) -> Any:
        return read_config(self.path)

    def history(self) -> list[dict[str, float]]:
        if (self.path / CSV_LOG).is_file():
            return read_csv_history(self.path / CSV_LOG)
        rows: list[dict[str, float]] = []
        for offline in find_offline_runs(self.path):  # a resumed run: one directory per process, oldest first
            rows += [_wandb_row(r) for r in _read_offline(offline).history]
        return rows


def _read_offline(path: Path) -> Any:
    try:
        return read_offline_run(path)
    except (OSError, WandbFileError) as err:
        raise CompareError(str(err)) from err


class OfflineWandbRun(Run):
    """A wandb offline run directory on its own: summary as final metrics, its logged config, its history."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config_source = f"the wandb config of {self.path}"
        self._run: Any = None

    def _offline(self) -> Any:
        if self._run is None:
            self._run = _read_offline(self.path)
        return self._run

    def metrics(self) -> dict[str, float]:
        return _wandb_metrics(self._offline().summary)

    def config(self) -> Any:
        return OmegaConf.create({k: v for k, v in self._offline().config.items() if k != "_wandb"})

    def history(self) -> list[dict[str, float]]:
        return [_wandb_row(r) for r in self._offline().history]


class ApiRun(Run):
    """A run of ``wandb.Api().runs(...)``; its name labels the column."""

    def __init__(self, run: Any, spec: str) -> None:
        self.run = run
        self.path = Path(f"{spec.removeprefix(WANDB_PREFIX).strip('/')}/{run.id}")
        self.config_source = f"the wandb config of run {run.id} ({spec})"

    @property
    def label(self) -> str:
        return str(getattr(self.run, "name", None) or self.run.id)

    def metrics(self) -> dict[str, float]:
        summary = getattr(self.run.summary, "_json_dict", None)
        return _wandb_metrics(dict(summary if summary is not None else self.run.summary.items()))

    def config(self) -> Any:
        return OmegaConf.create({k: v for k, v in dict(self.run.config).items() if k != "_wandb"})

    def history(self) -> list[dict[str, float]]:
        return [_wandb_row(dict(r)) for r in self.run.scan_history()]


def api_runs(spec: str, group: str | None = None) -> list[Run]:
    """Runs of ``wandb:ENTITY/PROJECT`` through the wandb API (optionally one group), oldest first."""
    project = spec.removeprefix(WANDB_PREFIX).strip("/")
    if project.count("/") != 1 or not all(project.split("/")):
        raise CompareError(f"{spec}: expected {WANDB_PREFIX}ENTITY/PROJECT")
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        raise CompareError(f"{spec}: reading runs through the wandb API needs the network, but WANDB_MODE={mode}; "
                           "pass local run directories instead (their wandb offline runs are read from the files)")
    try:
        import wandb

        found = list(wandb.Api(timeout=30).runs(project, filters={"group": group} if group else {}))
    except Exception as err:  # no API key, no network, unknown project: wandb raises many types
        raise CompareError(f"{spec}: the wandb API did not answer ({type(err).__name__}: {err})") from err
    if not found:
        raise CompareError(f"{spec}: no runs" + (f" in group {group!r}" if group else ""))
    return [ApiRun(run, spec) for run in found]


def discover_runs(path: Path) -> list[Run]:
    """Runs at or below ``path``, in natural path order; an error names the path when there is none."""
    path = Path(path)
    if path.is_file() and path.name == METRICS_FILE:
        path = path.parent
    if (path / METRICS_FILE).is_file():
        return [LocalRun(path)]
    if is_offline_run_dir(path):
        return [OfflineWandbRun(path)]
    if not path.is_dir():
        raise CompareError(f"{path / METRICS_FILE}: no metrics.json (is {path} a finished train/eval run directory?)")
    runs: list[Run] = []
    for root, dirs, files in os.walk(path):
        if METRICS_FILE in files and Path(root, METRICS_FILE).is_file():
            runs.append(LocalRun(Path(root)))
            dirs.clear()  # a run is a leaf: its csv/, checkpoints/, wandb/ hold no other runs
            continue
        if is_offline_run_dir(root):
            runs.append(OfflineWandbRun(Path(root)))
            dirs.clear()
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    if not runs:
        raise CompareError(f"{path / METRICS_FILE}: no metrics.json, and no run directory (holding one) below {path} "
                           "(nor a wandb offline run)")
    return sorted(runs, key=lambda r: _natural_key(str(r.path.relative_to(path))))


def discover_all(paths: Iterable[Path | str], wandb_group: str | None = None) -> list[Run]:
    """Runs of every argument in argument order, each run once even if named twice (a sweep and one of its jobs)."""
    seen: set[str] = set()
    runs = []
    for path in paths:
        text = str(path)
        found = api_runs(text, wandb_group) if text.startswith(WANDB_PREFIX) else discover_runs(Path(path))
        for run in found:
            ident = f"api:{run.path}" if isinstance(run, ApiRun) else str(run.path.resolve())
            if ident not in seen:
                seen.add(ident)
                runs.append(run)
    return runs


def run_labels(runs: Sequence[Path]) -> list[str]:
    """Directory names when they tell runs apart, else paths relative to the runs' common parent."""
    names = [run.name for run in runs]
    if len(set(names)) == len(names):
        return names
    if len(runs) > 1:
        common = Path(os.path.commonpath([run.resolve() for run in runs]))
        rel = [str(run.resolve().relative_to(common)) for run in runs]
        if len(set(rel)) == len(rel) and all(r != "." for r in rel):
            return rel
    return [str(run) for run in runs]


def labels_of(runs: Sequence[Run]) -> list[str]:
    """Column labels: local runs by directory (``run_labels``), API runs by name; clashes get their id."""
    local = [r for r in runs if not isinstance(r, ApiRun)]
    by_run = dict(zip(local, run_labels([r.path for r in local])))
    api = [r for r in runs if isinstance(r, ApiRun)]
    names = [r.label for r in api]
    by_run.update({r: (r.label if names.count(r.label) == 1 else f"{r.label} ({r.run.id})") for r in api})
    labels = [by_run[r] for r in runs]
    return [lab if labels.count(lab) == 1 else f"{lab} [{i}]" for i, lab in enumerate(labels)]


def read_config(run_dir: Path) -> Any:
    """The composed Hydra config of a run, interpolations left unresolved (resolved per key in ``config_value``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CompareError(f"{path}: not found; --group-by reads the run's composed Hydra config from it")
    try:
        return OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and omegaconf errors: report the file, whatever the parser says
        raise CompareError(f"{path}: not a readable config ({type(err).__name__}: {err})") from err


_ABSENT = object()


def config_value(cfg: Any, key: str, run: Run) -> Any:
    """The value of a dotted ``key``; resolved when possible, else the raw ``${...}`` text; missing: an error."""
    register_resolvers()  # the project's own (point_channels, ...), so values do not depend on what ran before
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            raise CompareError(f"run {run.path}: config key '{key}' not in {run.config_source}")
    if node == "???":  # a mandatory value the run never set: show it as Hydra writes it
        return node
    try:
        resolved = OmegaConf.select(cfg, key, default=_ABSENT)
        if OmegaConf.is_config(resolved):
            resolved = OmegaConf.to_container(resolved, resolve=True)
    except Exception:  # an unregistered resolver (project_root, point_channels, ...): compare the raw text
        return node
    return node if resolved is _ABSENT else resolved


def format_value(value: Any) -> str:
    """Config values as one would write them in a Hydra override (``true``, ``null``, ``[1,2]``)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _value_sort_key(value: Any) -> tuple[int, float, str]:
    """Numbers in numeric order before everything else in text order."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, format_value(value))


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> dict[str, list[Run]]:
    """``{"k1=v1,k2=v2": [runs]}``, groups in order of their values (numbers numerically)."""
    groups: dict[tuple[str, ...], tuple[list[Any], list[Run]]] = {}
    for run in runs:
        cfg = run.config()
        values = [config_value(cfg, key, run) for key in keys]
        ident = tuple(format_value(v) for v in values)
        groups.setdefault(ident, (values, []))[1].append(run)
    ordered = sorted(groups.items(), key=lambda item: [_value_sort_key(v) for v in item[1][0]])
    return {",".join(f"{k}={v}" for k, v in zip(keys, ident)): members for ident, (_, members) in ordered}


def _is_percent(name: str, values: Sequence[float]) -> bool:
    leaf = name.rsplit("/", 1)[-1].lower()
    return any(h in leaf for h in PERCENT_HINTS) and all(0.0 <= v <= 1.0 for v in values)


def _is_wanted(name: str, wanted: Sequence[str] | None) -> bool:
    """``--metric`` keeps names containing any of its values; none given keeps all."""
    return not wanted or any(w in name for w in wanted)


def _selected_names(metrics: Iterable[dict[str, float]], wanted: Sequence[str] | None) -> list[str]:
    return sorted({n for m in metrics for n in m if _is_wanted(n, wanted)})


def metric_rows(runs: dict[str, dict[str, float]], wanted: Sequence[str] | None = None) -> list[list[str]]:
    """Rows ``[metric, cell per run]``; a ``_mean`` metric absorbs its ``_std`` partner."""
    names = _selected_names(runs.values(), wanted)
    rows = []
    for name in names:
        if name.endswith("_std") and name[: -len("_std")] + "_mean" in names:
            continue
        label, partner = name, None
        if name.endswith("_mean"):
            label = name[: -len("_mean")]
            partner = label + "_std"
        values = [m[name] for m in runs.values() if name in m]
        scale = 100.0 if _is_percent(label, values) else 1.0
        cells = []
        for metrics in runs.values():
            if name not in metrics:
                cells.append("-")
            elif partner and partner in metrics:
                cells.append(f"{scale * metrics[name]:.1f} ± {scale * metrics[partner]:.1f}")
            else:
                cells.append(f"{scale * metrics[name]:.1f}" if scale != 1.0 else f"{metrics[name]:.4g}")
        rows.append([label + (" (%)" if scale != 1.0 else ""), *cells])
    return rows


@dataclass(frozen=True)
class Stat:
    """One metric over the runs of a group: mean, sample std (None for n=1) and n."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def as_json(self) -> dict[str, float | int | None]:
        return {"mean": _json_float(self.mean), "std": _json_float(self.std), "n": self.n}


def _json_float(value: float | None) -> float | None:
    """NaN/inf are not JSON: written as null."""
    return None if value is None or not math.isfinite(value) else value


def _grouped_names(groups: dict[str, list[dict[str, float]]], wanted: Sequence[str] | None) -> list[str]:
    """Selected metric names, less each ``_std`` whose ``_mean`` is there (the within-run std, dropped)."""
    names = _selected_names((m for members in groups.values() for m in members), wanted)
    return [n for n in names if not (n.endswith("_std") and n[: -len("_std")] + "_mean" in names)]


def aggregate(groups: dict[str, list[dict[str, float]]], wanted: Sequence[str] | None = None
              ) -> dict[str, dict[str, Stat]]:
    """``{group: {metric: Stat}}`` over the runs of each group that have the metric."""
    names = _grouped_names(groups, wanted)
    return {label: {name: Stat.of(vals) for name in names if (vals := [m[name] for m in members if name in m])}
            for label, members in groups.items()}


def grouped_rows(groups: dict[str, list[dict[str, float]]], wanted: Sequence[str] | None = None) -> list[list[str]]:
    """Rows ``[metric, mean ± std per group]`` after an ``n`` row of run counts."""
    stats = aggregate(groups, wanted)
    rows = [[GROUP_N_ROW, *(str(len(members)) for members in groups.values())]]
    for name in _grouped_names(groups, wanted):
        label = name[: -len("_mean")] if name.endswith("_mean") else name
        values = [m[name] for members in groups.values() for m in members if name in m]
        scale = 100.0 if _is_percent(label, values) else 1.0
        cells = []
        for group, members in groups.items():
            stat = stats[group].get(name)
            if stat is None:
                cells.append("-")
                continue
            fmt = ".1f" if scale != 1.0 else ".4g"
            cell = f"{scale * stat.mean:{fmt}}"
            if stat.std is not None:
                cell += f" ± {scale * stat.std:{fmt}}"
            if stat.n != len(members):
                cell += f" (n={stat.n})"
            cells.append(cell)
        rows.append([label + (" (%)" if scale != 1.0 else ""), *cells])
    return rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """Aligned plain text for the terminal, or a Markdown table for notes and issues."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [header, *rows])


@dataclass(frozen=True)
class Curve:
    """One metric of one group: at each x, the mean over the runs that logged it, their std (None below 2), n."""

    x: list[float]
    mean: list[float]
    std: list[float | None]
    n: list[int]


def run_series(rows: Iterable[dict[str, float]], x_key: str) -> dict[str, dict[float, float]]:
    """``{metric: {x: value}}`` of one run; several values at one x (per-step metrics by epoch) are averaged."""
    acc: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        if x_key not in row:
            continue
        for name, value in row.items():
            if name not in X_KEYS:
                acc.setdefault(name, {}).setdefault(row[x_key], []).append(value)
    return {name: {x: statistics.fmean(v) for x, v in sorted(points.items())} for name, points in acc.items()}


def group_curves(groups: dict[str, list[Run]], wanted: Sequence[str] | None, x_key: str
                 ) -> dict[str, dict[str, Curve]]:
    """``{metric: {group: Curve}}`` for the metrics ``--metric`` keeps that have two or more x values somewhere."""
    series = {label: [run_series(run.history(), x_key) for run in members] for label, members in groups.items()}
    names = sorted({n for runs in series.values() for s in runs for n in s if _is_wanted(n, wanted)})
    out: dict[str, dict[str, Curve]] = {}
    for name in names:
        per_group = {}
        for label, runs in series.items():
            xs = sorted({x for s in runs for x in s.get(name, {})})
            if not xs:
                continue
            values = [[s[name][x] for s in runs if x in s.get(name, {})] for x in xs]
            per_group[label] = Curve(xs, [statistics.fmean(v) for v in values],
                                     [statistics.stdev(v) if len(v) > 1 else None for v in values],
                                     [len(v) for v in values])
        if any(len(c.x) > 1 for c in per_group.values()):
            out[name] = per_group
    return out


def plot_size(panels: int) -> tuple[int, int]:
    """Pixel width and height of a plot with ``panels`` panels."""
    cols = min(PLOT_COLUMNS, panels)
    rows = math.ceil(panels / cols)
    return cols * PANEL_PX[0], rows * PANEL_PX[1]


def plot_curves(curves: dict[str, dict[str, Curve]], path: Path, x_key: str) -> None:
    """One panel per metric, a mean line and a ±std band per group; a PNG of ``plot_size`` pixels."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend
    from matplotlib.ticker import MaxNLocator

    width, height = plot_size(len(curves))
    cols = min(PLOT_COLUMNS, len(curves))
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, layout="constrained")
    axes = fig.subplots(math.ceil(len(curves) / cols), cols, squeeze=False).ravel()
    labels = list(dict.fromkeys(label for per_group in curves.values() for label in per_group))
    for ax, (name, per_group) in zip(axes, curves.items()):
        for label, curve in per_group.items():
            color = f"C{labels.index(label) % 10}"
            ax.plot(curve.x, curve.mean, color=color, label=label, marker="o" if len(curve.x) < 20 else None,
                    markersize=3)
            std = [s if s is not None else 0.0 for s in curve.std]
            if any(s is not None for s in curve.std):
                ax.fill_between(curve.x, [m - s for m, s in zip(curve.mean, std)],
                                [m + s for m, s in zip(curve.mean, std)], color=color, alpha=0.2, linewidth=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x_key, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are whole numbers
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=6, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=_DPI)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m selfsup_pcd.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="run directory (holding metrics.json), wandb offline run, a directory with runs below it "
                             f"(a sweep), or {WANDB_PREFIX}ENTITY/PROJECT")
    parser.add_argument("--group-by", action="append", default=None, metavar="KEY",
                        help="dotted key of .hydra/config.yaml; runs with equal values form one column (repeatable)")
    parser.add_argument("--metric", action="append", default=None, metavar="NAME",
                        help="keep metrics whose name contains this (repeatable)")
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE",
                        help="also write the table as Markdown here")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help='also write {column: {metric: {"mean", "std", "n"}}} here')
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE",
                        help="write a PNG of the logged curves (mean and ±std band per group) here")
    parser.add_argument("--x", choices=X_KEYS, default="epoch", help="x axis of --plot (default: epoch)")
    parser.add_argument("--wandb-group", default=None, metavar="NAME",
                        help=f"with {WANDB_PREFIX}ENTITY/PROJECT: only the runs of this wandb group")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        found = discover_all(args.paths, args.wandb_group)
        metrics = {run: run.metrics() for run in found}
        if args.group_by:
            run_groups = group_runs(found, args.group_by)
        else:
            run_groups = {label: [run] for label, run in zip(labels_of(found), found)}
        curves = group_curves(run_groups, args.metric, args.x) if args.plot else {}
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.plot and not curves:
        print(f"error: --plot: no run has a logged history ({CSV_LOG} or wandb) with two or more {args.x} values "
              "of the selected metrics", file=sys.stderr)
        return 2
    groups = {label: [metrics[r] for r in members] for label, members in run_groups.items()}
    if args.group_by:
        header, rows = ["metric", *groups], grouped_rows(groups, args.metric)
        summary = {label: {name: stat.as_json() for name, stat in stats.items()}
                   for label, stats in aggregate(groups, args.metric).items()}
    else:
        runs = {label: members[0] for label, members in groups.items()}
        header, rows = ["metric", *runs], metric_rows(runs, args.metric)
        # one run per column: every metric as written (a _std too), nothing aggregated, hence no std over runs
        summary = {label: {name: Stat(value, None, 1).as_json() for name, value in sorted(m.items())
                           if _is_wanted(name, args.metric)} for label, m in runs.items()}
    print(format_table(header, rows))
    if args.markdown:
        args.markdown.write_text(format_table(header, rows, markdown=True) + "\n")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.plot:
        plot_curves(curves, args.plot, args.x)
        width, height = plot_size(len(curves))
        print(f"curves of {len(curves)} metrics written to {args.plot} ({width}x{height})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
