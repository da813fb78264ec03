"""Training-step throughput and peak memory: fused encoders vs. the straightforward reference nets.

One step = forward + backward + Adam step of encoder + linear classifier on the global feature with
cross-entropy, on random points (B, N, 3). Throughput is from the median step time; peak memory is
the growth of the peak RSS over the process's RSS before the first step. Each (model,
implementation) pair runs in a fresh subprocess so that its peak RSS is its own. Compare ratios
measured in one run, on a quiet machine: timings on shared 2-core machines drift between runs, and
2-thread OpenMP code slows down badly when another process holds one of the cores.

    python benchmarks/backbones.py --threads 2 --batch 32 --points 1024 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

MODELS = ("pointnet", "dgcnn")
# "reference-nothp": the reference without transparent huge pages, i.e. as the original code runs
# outside this package (selfsup_pcd turns THP on for torch's allocator when imported).
IMPLS = ("reference", "fused", "reference-nothp")


def _build(model: str, impl: str):
    """Encoder and the name of its global feature width."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference_models import ReferenceDGCNN, ReferencePointNet

    from selfsup_pcd.models.backbones import DGCNNEncoder, PointNetEncoder

    if model == "pointnet":
        kwargs = {"input_transform": True, "feature_transform": True}
        return (PointNetEncoder if impl == "fused" else ReferencePointNet)(**kwargs), 1024
    kwargs = {"k": 20, "pooling": "max_avg"}
    return (DGCNNEncoder if impl == "fused" else ReferenceDGCNN)(**kwargs), 2048


def _rss_kib() -> int:
    """Current resident set size (KiB), from /proc (Linux) or the peak so far elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(args: argparse.Namespace) -> dict:
    """Run in the subprocess: time ``args.steps`` training steps after ``args.warmup`` ones."""
    import importlib
    import resource
    import time

    importlib.import_module("selfsup_pcd")  # before torch: enables THP for torch's CPU allocator
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder, dim = _build(args.model, args.impl)
    head = torch.nn.Linear(dim, 40)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    points = torch.randn(args.batch, args.points, 3)
    labels = torch.randint(0, 40, (args.batch,))
    encoder.train()

    def step() -> None:
        out = encoder(points)
        feat = out[0] if isinstance(out, tuple) else out.global_feat
        loss = F.cross_entropy(head(feat), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    base = _rss_kib()  # everything the step allocates (activations, gradients, Adam state) counts
    for _ in range(max(1, args.warmup)):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    median = statistics.median(times)  # robust to other processes stealing a core for a while
    result = {
        "model": args.model,
        "impl": args.impl,
        "shapes_per_s": args.batch / median,
        "step_s": median,
        "step_min_s": min(times),
        "peak_mib": max(0, peak - base) / 1024,
    }
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        result["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile)
    return result


def _run_subprocess(args: argparse.Namespace, model: str, impl: str) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", "--model", model, "--impl", impl,
        "--batch", str(args.batch), "--points", str(args.points), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--threads", str(args.threads), "--profile", str(args.profile),
    ]  # fmt: skip
    env = dict(os.environ)
    if impl == "reference-nothp":
        env["THP_MEM_ALLOC_ENABLE"] = "0"
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{model}/{impl} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print_table(rows: list[list[str]], title: str) -> None:
    header = ["model", "impl", "shapes/s", "s/step (median, min)", "peak MiB", "speed-up / memory ratio"]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print(title)
        for r in [header, *rows]:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        return
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    Console(width=max(140, Console().width)).print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS[:2]))
    parser.add_argument("--profile", type=int, default=0, help="print the N most expensive ops per run")
    parser.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    results = {(m, i): _run_subprocess(args, m, i) for m in args.models for i in args.impls}
    rows = []
    for (model, impl), r in results.items():
        ratios = []
        for base in ("reference", "reference-nothp"):
            ref = results.get((model, base))
            if impl == "fused" and ref:
                speed = r["shapes_per_s"] / ref["shapes_per_s"]
                mem = r["peak_mib"] / max(ref["peak_mib"], 1e-9)
                ratios.append(f"{speed:.2f}x / {mem:.2f}x vs {base}")
        rows.append(
            [
                model,
                impl,
                f"{r['shapes_per_s']:.1f}",
                f"{r['step_s']:.2f}, {r['step_min_s']:.2f}",
                f"{r['peak_mib']:.0f}",
                "; ".join(ratios),
            ]
        )
        if r.get("profile"):
            print(f"--- {model}/{impl} profile ---\n{r['profile']}")
    title = (
        f"Training step (fwd+bwd+Adam), batch {args.batch} x {args.points} points, "
        f"{args.threads} threads, {args.steps} timed steps"
    )
    _print_table(rows, title)
    if args.json:
        print(json.dumps(list(results.values())))


if __name__ == "__main__":
    main()
