"""Side-by-side metrics of finished runs: ``python -m selfsup_pcd.compare RUN_DIR ... [--metric NAME ...]``.

Reads each run's ``metrics.json`` (written by ``train`` and ``eval``) and prints one row per metric, one column
per run. ``NAME_mean`` / ``NAME_std`` pairs are shown as one ``mean ± std`` cell; accuracies and IoUs (values in
[0, 1] under names the tasks use) are shown in percent. ``--markdown FILE`` also writes the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

PERCENT_HINTS = ("acc", "oa", "iou", "map")


class CompareError(RuntimeError):
    """A run directory without readable metrics."""


def read_metrics(run_dir: Path) -> dict[str, float]:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise CompareError(f"{path}: no metrics.json (is {run_dir} a finished train/eval run directory?)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CompareError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    if not isinstance(metrics, dict):
        raise CompareError(f"{path}: expected an object of metric name -> number")
    return {str(k): float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def _is_percent(name: str, values: Sequence[float]) -> bool:
    leaf = name.rsplit("/", 1)[-1].lower()
    return any(h in leaf for h in PERCENT_HINTS) and all(0.0 <= v <= 1.0 for v in values)


def metric_rows(runs: dict[str, dict[str, float]], wanted: Sequence[str] | None = None) -> list[list[str]]:
    """Rows ``[metric, cell per run]``; a ``_mean`` metric absorbs its ``_std`` partner."""
    names = sorted({n for m in runs.values() for n in m})
    if wanted:
        names = [n for n in names if any(w in n for w in wanted)]
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


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [header, *rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories holding metrics.json")
    parser.add_argument("--metric", action="append", default=None, help="keep metrics whose name contains this")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown here")
    args = parser.parse_args(argv)
    try:
        names = [run.name if [r.name for r in args.runs].count(run.name) == 1 else str(run) for run in args.runs]
        runs = {name: read_metrics(run) for name, run in zip(names, args.runs)}
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    header = ["metric", *runs]
    rows = metric_rows(runs, args.metric)
    print(format_table(header, rows))
    if args.markdown:
        args.markdown.write_text(format_table(header, rows, markdown=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
