"""Shared by the real-data pretraining tests: the few-label SVM table over pretraining seeds."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence


def few_label_table(results: Mapping[str, Mapping[int, Mapping[str, float]]], seeds: Sequence[int],
                    shots: Sequence[int] = (1, 2)) -> tuple[list[str], dict[tuple[str, int], float]]:
    """Markdown lines (per seed: mean ± std over draws; then mean ± std over seeds) and the per-(kind, shots)
    means over seeds, from ``results[kind][seed]`` = an eval run's metrics.json."""
    lines = ["| init | shots | " + " | ".join(f"seed {s}: macc (mean ± std over draws)" for s in seeds)
             + " | over seeds |", "|---|---|" + "---|" * (len(seeds) + 1)]
    means: dict[tuple[str, int], float] = {}
    for kind, per_kind in results.items():
        for k in shots:
            per_seed = [per_kind[s][f"test/{k}shot_macc_mean"] for s in seeds]
            stds = [per_kind[s][f"test/{k}shot_macc_std"] for s in seeds]
            means[kind, k] = statistics.mean(per_seed)
            cells = " | ".join(f"{100 * m:.1f} ± {100 * d:.1f}" for m, d in zip(per_seed, stds))
            spread = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
            lines.append(f"| {kind} | {k} | {cells} | {100 * means[kind, k]:.1f} ± {100 * spread:.1f} |")
    return lines, means
