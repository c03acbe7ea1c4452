"""The ExecuTorch step against ORT's, step by step in turn: one worker process per backend, each holding
its trainer, the parent asking each for one step in turn, so that a loaded host slows all of them alike
(`step.py` runs the backends one after the other: on a shared host their contention differs by 2×).

    python benchmarks/executorch_vs_ort.py BUNDLE [--steps 20] [--out benchmarks/results/executorch_vs_ort.json]
        [--baseline CHECKOUT]   # a fourth arm: the executorch backend of another fedyolo checkout

BUNDLE holds task `topics` (lora) with its ExecuTorch program (`step.py` adds one). Arms: each backend
as the runtime runs it (length bucketing on: a batch runs at its longest text), and each padded to 32
tokens (bucketing off; what a program exported before its length was dynamic computes). Same batches
(step.py's), same AdamW; each worker in its own interpreter, so peak RSS and "torch loaded" are that
backend's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine
from step import WARMUP, batches, peak_rss_mb, timings, versions

ARMS = {
    "ort": ["ort", "bucketed"],
    "ort_padded": ["ort", "padded"],
    "executorch": ["executorch", "bucketed"],
    "executorch_padded": ["executorch", "padded"],
}


def worker(bundle: str, backend: str, bucketing: bool, steps: int) -> None:
    """Answers each line `i` on stdin with `seconds loss` of one step on batch i."""
    from fedyolo.runtime import executorch_trainer, ort_trainer
    from fedyolo.runtime.backends import make_trainer
    from fedyolo.runtime.bundle import open_bundle

    if not bucketing:
        ort_trainer.trim_padding = executorch_trainer.trim_padding = lambda batch, *_: batch
    data = batches(bundle, "topics", steps)
    trainer = make_trainer(open_bundle(bundle, tasks=["topics"]), "topics", backend, lr=1e-3)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "done":
            break
        t = time.perf_counter()
        loss = trainer.step(data[int(line)])
        print(f"{time.perf_counter() - t} {loss}", flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "torch_loaded": "torch" in sys.modules}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/executorch_vs_ort.json")
    parser.add_argument("--gap-ms", type=float, default=50, help="idle time before each worker's step")
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="also step the executorch backend of the fedyolo checkout at CHECKOUT (e.g. main, before a "
        "change) in the same turn, as arm executorch_baseline",
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.bundle, args.worker[0], args.worker[1] == "bucketed", args.steps)
        return
    arms_run, env = dict(ARMS), {}
    if args.baseline:
        arms_run["executorch_baseline"] = ARMS["executorch"]
        env["executorch_baseline"] = {**os.environ, "PYTHONPATH": str(Path(args.baseline).resolve())}
    procs = {
        name: subprocess.Popen(
            [sys.executable, __file__, args.bundle, "--steps", str(args.steps), "--worker", *arm],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env.get(name),
        )
        for name, arm in arms_run.items()
    }

    def ask(p: subprocess.Popen[str], line: str) -> str:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(line + "\n")
        p.stdin.flush()
        return p.stdout.readline().strip()

    for name, p in procs.items():
        assert p.stdout is not None
        while (line := p.stdout.readline().strip()) != "ready":
            if not line and p.poll() is not None:
                raise RuntimeError(f"worker {name} failed")
    times: dict[str, list[float]] = {n: [] for n in procs}
    losses: dict[str, list[float]] = {n: [] for n in procs}
    for i in range(WARMUP + args.steps):
        for name, p in procs.items():
            # ORT's idle threads spin a while after its step: without a pause, into the next arm's step
            time.sleep(args.gap_ms / 1000)
            seconds, loss = ask(p, str(i)).split()
            losses[name].append(float(loss))
            if i >= WARMUP:
                times[name].append(float(seconds))
    arms: dict[str, Any] = {}
    for name, p in procs.items():
        tail = json.loads(ask(p, "done"))
        p.wait()
        arms[name] = {
            **timings(times[name]),
            **tail,
            "first_loss": losses[name][0],
            "last_loss": losses[name][-1],
        }
    et = arms["executorch"]
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "versions": versions(),
        "arms": arms,
        "ratios": {
            "executorch_over_ort_step": et["median_ms"] / arms["ort"]["median_ms"],
            "executorch_over_ort_padded_step": et["median_ms"] / arms["ort_padded"]["median_ms"],
            "executorch_padded_over_ort_padded_step": arms["executorch_padded"]["median_ms"] / arms["ort_padded"]["median_ms"],
            "executorch_over_ort_peak_rss": et["peak_rss_mb"] / arms["ort"]["peak_rss_mb"],
            # per step, then the median: each pair ran back to back
            "median_of_paired_executorch_over_ort": float(np.median(np.array(times["executorch"]) / np.array(times["ort"]))),
        },
    }  # fmt: skip
    if args.baseline:
        base = arms["executorch_baseline"]
        commit = subprocess.run(
            ["git", "-C", args.baseline, "rev-parse", "HEAD"], capture_output=True, text=True
        )
        result["baseline"] = {"checkout": args.baseline, "commit": commit.stdout.strip()}
        result["ratios"].update(
            executorch_over_baseline_step=et["median_ms"] / base["median_ms"],
            executorch_over_baseline_peak_rss=et["peak_rss_mb"] / base["peak_rss_mb"],
            baseline_over_ort_peak_rss=base["peak_rss_mb"] / arms["ort"]["peak_rss_mb"],
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for name, a in arms.items():
        print(f"{name:17s} median {a['median_ms']:.1f} ms  p95 {a['p95_ms']:.1f}  peak RSS {a['peak_rss_mb']:.0f} MB  "
              f"loss {a['first_loss']:.5f} -> {a['last_loss']:.5f}")  # fmt: skip
    r = result["ratios"]
    print(f"ExecuTorch / ORT {r['executorch_over_ort_step']:.2f} (paired median {r['median_of_paired_executorch_over_ort']:.2f}), "
          f"/ ORT padded {r['executorch_over_ort_padded_step']:.2f}; RSS {r['executorch_over_ort_peak_rss']:.2f}; results in {args.out}")  # fmt: skip
    if args.baseline:
        print(f"ExecuTorch / baseline: step {r['executorch_over_baseline_step']:.2f}, RSS {r['executorch_over_baseline_peak_rss']:.2f} "
              f"(baseline RSS / ORT {r['baseline_over_ort_peak_rss']:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
