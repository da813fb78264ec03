"""Metrics of finished runs side by side, or grouped over seeds.

``python -m selfsup_pcd.compare PATH ... [--group-by KEY ...] [--metric NAME ...] [--markdown FILE] [--json FILE]``

Each PATH is a run directory (it holds ``metrics.json``, written by ``train`` and ``eval``) or a directory with run
directories below it at any depth, such as a Hydra multirun/sweep directory. A run directory is not searched further,
and hidden directories (``.hydra``) are skipped.

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
"""

from __future__ import annotations

import argparse
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

PERCENT_HINTS = ("acc", "oa", "iou", "map")
METRICS_FILE = "metrics.json"
CONFIG_FILE = Path(".hydra") / "config.yaml"
GROUP_N_ROW = "n"


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


def discover_runs(path: Path) -> list[Path]:
    """Run directories at or below ``path``, in natural path order; an error names the path when there is none."""
    path = Path(path)
    if path.is_file() and path.name == METRICS_FILE:
        path = path.parent
    if (path / METRICS_FILE).is_file():
        return [path]
    if not path.is_dir():
        raise CompareError(f"{path / METRICS_FILE}: no metrics.json (is {path} a finished train/eval run directory?)")
    runs = []
    for root, dirs, files in os.walk(path):
        if METRICS_FILE in files and Path(root, METRICS_FILE).is_file():
            runs.append(Path(root))
            dirs.clear()  # a run is a leaf: its csv/, checkpoints/ hold no other runs
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    if not runs:
        raise CompareError(f"{path / METRICS_FILE}: no metrics.json, and no run directory (holding one) below {path}")
    return sorted(runs, key=lambda p: _natural_key(str(p.relative_to(path))))


def discover_all(paths: Iterable[Path]) -> list[Path]:
    """Runs of every argument in argument order, each run once even if named twice (a sweep and one of its jobs)."""
    seen: set[Path] = set()
    runs = []
    for path in paths:
        for run in discover_runs(path):
            if run.resolve() not in seen:
                seen.add(run.resolve())
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


def config_value(cfg: Any, key: str, run_dir: Path) -> Any:
    """The value of a dotted ``key``; resolved when possible, else the raw ``${...}`` text; missing: an error."""
    register_resolvers()  # the project's own (point_channels, ...), so values do not depend on what ran before
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            raise CompareError(f"run {run_dir}: config key '{key}' not in {Path(run_dir) / CONFIG_FILE}")
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


def group_runs(runs: Sequence[Path], keys: Sequence[str]) -> dict[str, list[Path]]:
    """``{"k1=v1,k2=v2": [runs]}``, groups in order of their values (numbers numerically)."""
    groups: dict[tuple[str, ...], tuple[list[Any], list[Path]]] = {}
    for run in runs:
        cfg = read_config(run)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m selfsup_pcd.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="run directory (holding metrics.json) or a directory with runs below it (a sweep)")
    parser.add_argument("--group-by", action="append", default=None, metavar="KEY",
                        help="dotted key of .hydra/config.yaml; runs with equal values form one column (repeatable)")
    parser.add_argument("--metric", action="append", default=None, metavar="NAME",
                        help="keep metrics whose name contains this (repeatable)")
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE",
                        help="also write the table as Markdown here")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help='also write {column: {metric: {"mean", "std", "n"}}} here')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_dirs = discover_all(args.paths)
        metrics = {run: read_metrics(run) for run in run_dirs}
        if args.group_by:
            groups = {label: [metrics[r] for r in members]
                      for label, members in group_runs(run_dirs, args.group_by).items()}
        else:
            runs = dict(zip(run_labels(run_dirs), metrics.values()))
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.group_by:
        header, rows = ["metric", *groups], grouped_rows(groups, args.metric)
        summary = {label: {name: stat.as_json() for name, stat in stats.items()}
                   for label, stats in aggregate(groups, args.metric).items()}
    else:
        header, rows = ["metric", *runs], metric_rows(runs, args.metric)
        # one run per column: every metric as written (a _std too), nothing aggregated, hence no std over runs
        summary = {label: {name: Stat(value, None, 1).as_json() for name, value in sorted(m.items())
                           if _is_wanted(name, args.metric)} for label, m in runs.items()}
    print(format_table(header, rows))
    if args.markdown:
        args.markdown.write_text(format_table(header, rows, markdown=True) + "\n")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
