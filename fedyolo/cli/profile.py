"""`fedyolo profile`: will it fit, and how fast is it, on this device? Every backend present, measured.

Each case (backend × batch × sequence × threads) runs in a fresh process (runtime/profiler.py); the
GEMM rate that gives the compute floor is measured here, in the same run. Torch-free: the base install.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedyolo.runtime.backends import BACKENDS
from fedyolo.runtime.bundle import Bundle, open_bundle
from fedyolo.runtime.capacity import check_backend, check_fits, check_sequence, task_backends
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.profiler import Case, run_case
from fedyolo.runtime.wire import encode_module

MB = 2**20


def int_list(text: str, what: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; anything else is a one-line error naming the option."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0 or (what != "--threads" and min(values) < 1):
        raise FedyoloError(
            f"{what} {text!r} is not a comma-separated list of positive integers; e.g. {what} 1,8,32"
        )
    return values


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, load, versions."""
    import onnxruntime

    import fedyolo

    model = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "arch": platform.machine(),
        "nproc": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "fedyolo": fedyolo.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def sizes(bundle: Bundle, task_id: str) -> dict[str, Any]:
    """Bytes on disk (backbone once, each task's own files) and bytes a round moves each way."""
    task = bundle.task(task_id)
    zeros = {t.name: np.zeros(t.shape, np.float32) for t in task.trainable}
    wire = {
        dtype: len(encode_module(zeros, replace(task, wire_dtype=dtype))) for dtype in ("float32", "float16")
    }
    return {
        "backbone_bytes": bundle.manifest.backbone.file.bytes,
        "task_bytes": {
            tid: sum(f.bytes for f in spec.files.values()) for tid, spec in bundle.manifest.tasks.items()
        },
        # a round downloads the global module and uploads the update: the same tensors each way
        "round_bytes_each_way": wire,
        "round_wire_dtype": task.wire_dtype,
    }


def derive(row: dict[str, Any], gemm: dict[int, float]) -> dict[str, Any]:
    """Per-token, per-example and per-thread figures, and the compute floor, of one measured case."""
    case = row["case"]
    tokens = case["batch"] * case["seq"]
    threads = case["threads"] or os.cpu_count() or 1
    median = row["step_ms_median"]
    row |= {
        "examples_per_s": 1e3 * case["batch"] / median,
        "ms_per_example": median / case["batch"],
        "ms_per_token": median / tokens,
        "examples_per_s_per_thread": 1e3 * case["batch"] / median / threads,
    }
    if "step_flops" in row:
        rate = gemm[case["threads"]]
        row["gemm_gflops"] = rate
        row["floor_ms"] = row["step_flops"] / (rate * 1e9) * 1e3
        row["step_over_floor"] = median / row["floor_ms"]
    return row


def drift(step_ms: list[float]) -> dict[str, float]:
    """Sustained mode: the median of the first and the last tenth of the steps, and their ratio."""
    k = max(1, len(step_ms) // 10)
    first, last = float(np.median(step_ms[:k])), float(np.median(step_ms[-k:]))
    return {
        "first_tenth_ms": first,
        "last_tenth_ms": last,
        "last_over_first": last / first,
        "steps": len(step_ms),
    }


def plan_backends(
    bundle: Bundle, task_id: str, wanted: list[str] | None
) -> tuple[list[str], list[dict[str, str]]]:
    """The backends to measure and those skipped, each with its reason."""
    task = bundle.task(task_id)
    if wanted:
        unknown = [b for b in wanted if b not in BACKENDS]
        if unknown:
            raise FedyoloError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
        for name in wanted:
            check_backend(task, name)
    run, skipped = [], []
    for name in wanted or list(BACKENDS):
        reason = BACKENDS[name].absent(bundle, task_id)
        if reason is None:
            run.append(name)
        else:
            skipped.append({"backend": name, "reason": reason})
    if not run:
        have = ", ".join(task_backends(task)) or "none"
        why = "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped)
        raise FedyoloError(f"no backend here can run task {task_id!r} (exported for: {have}; {why})")
    return run, skipped


def profile_command(
    bundle_dir: Path,
    task_id: str,
    backends: list[str] | None,
    batches: list[int],
    seqs: list[int],
    threads: list[int],
    steps: int,
    duration_s: float,
    json_out: Path | None,
    plot: Path | None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Measure every case, print a table, write JSON and a PNG; returns the report."""
    console = console or Console()
    if plot is not None:
        from fedyolo.cli.extras import require

        require("--plot", "plot")  # before the measuring, not after it
    bundle = open_bundle(bundle_dir, tasks=[task_id])
    manifest = bundle.manifest
    run, skipped = plan_backends(bundle, task_id, backends)
    text = bundle.task(task_id).input.kind == "text"
    if not text:
        seqs = [1]
    for seq in seqs if text else []:
        check_sequence(manifest, seq)
    estimates = {(b, s): check_fits(manifest, b, s).total for b in batches for s in seqs}
    cases = [
        Case(backend, b, s, t, steps=steps, duration_s=duration_s)
        for backend in run
        for t in threads
        for b in batches
        for s in seqs
    ]
    report: dict[str, Any] = {"machine": machine(), "bundle": str(bundle_dir), "task": task_id}
    report |= {"sizes": sizes(bundle, task_id), "skipped": skipped}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("GEMM rate", total=len(threads) + len(cases))
        from fedyolo.runtime.compute_floor import best_gemm_rate

        gemm = {t: best_gemm_rate(t) for t in threads}
        progress.advance(bar, len(threads))
        rows = []
        for case in cases:
            progress.update(
                bar,
                description=f"{case.backend} batch {case.batch} x {case.seq}, {case.threads or 'all'} threads",
            )
            row = derive(run_case(bundle_dir, task_id, case), gemm)
            row["estimated_bytes"] = estimates[(case.batch, case.seq)]
            rows.append(row)
            progress.advance(bar)
    report["gemm_gflops"] = {str(t): r for t, r in gemm.items()}
    report["rows"] = rows
    if duration_s > 0:
        report["drift"] = [drift(r["step_ms"]) | {"case": r["case"]} for r in rows]
    for t in tables(report):
        console.print(t)
    for s in skipped:
        console.print(f"skipped {s['backend']}: {s['reason']}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {json_out}")
    if plot is not None:
        from fedyolo.cli.profile_plot import plot_report

        plot_report(report, plot)
        console.print(f"wrote {plot}")
    return report


def tables(report: dict[str, Any]) -> tuple[Table, Table]:
    """The people's view, one row per case: time, then memory and bytes."""
    m, s = report["machine"], report["sizes"]
    wire = s["round_bytes_each_way"]
    time_table = Table(
        title=f"task {report['task']} on {m['cpu']} ({m['nproc']} cores, load {m['load_avg'][0]}): time",
        title_justify="left",
    )
    for name in ("backend", "batch×seq", "thr", "load s", "1st ms", "median", "p95", "p99", "ex/s",
                 "ms/tok", "floor", "×floor", "infer/ex"):  # fmt: skip
        time_table.add_column(name, justify="left" if name == "backend" else "right")
    memory_table = Table(
        title=f"memory (MiB resident at peak) and bytes: backbone {s['backbone_bytes'] / MB:.1f} MiB on disk once, "
        f"task {s['task_bytes'][report['task']] / 1e3:.0f} KB; a round moves {wire['float32'] / 1e3:.0f} KB "
        f"each way (fp16 {wire['float16'] / 1e3:.0f} KB)",
        title_justify="left",
    )
    for name in (
        "backend",
        "batch×seq",
        "thr",
        "peak",
        "backbone",
        "module+opt",
        "activations",
        "runtime",
        "estimate",
    ):
        memory_table.add_column(name, justify="left" if name == "backend" else "right")
    for r in report["rows"]:
        c, rss = r["case"], r["rss"]
        key = (c["backend"], f"{c['batch']}×{c['seq']}", str(c["threads"] or "all"))
        floor = (f"{r['floor_ms']:.1f}", f"{r['step_over_floor']:.2f}") if "floor_ms" in r else ("-", "-")
        time_table.add_row(
            *key, f"{r['load_s']:.2f}", f"{r['first_step_ms']:.0f}", f"{r['step_ms_median']:.1f}",
            f"{r['step_ms_p95']:.1f}", f"{r['step_ms_p99']:.1f}", f"{r['examples_per_s']:.1f}",
            f"{r['ms_per_token']:.3f}", *floor, f"{r['infer_ms_per_example']:.2f}",
        )  # fmt: skip
        memory_table.add_row(
            *key, *(f"{rss[k] / MB:.0f}" for k in ("peak", "backbone", "module_optimizer", "activations", "runtime")),
            f"≥{r['estimated_bytes'] / MB:.0f}",
        )  # fmt: skip
    drifts = [
        f"sustained, {d['case']['batch']}×{d['case']['seq']} on {d['case']['threads'] or 'all'} threads: "
        f"{d['steps']} steps, first tenth {d['first_tenth_ms']:.1f} ms, last tenth {d['last_tenth_ms']:.1f} ms "
        f"({d['last_over_first']:.2f}×)"
        for d in report.get("drift", [])
    ]
    time_table.caption = "\n".join(drifts) or None
    return time_table, memory_table
