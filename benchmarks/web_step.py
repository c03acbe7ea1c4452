"""How fast does a phone's browser train? The page's trainer (onnxruntime-web's training build, in Debian's
chromium, 360-px mobile emulation) against native ONNX Runtime on the default case: MiniLM-L6 + LoRA r=8
on q,v + linear head, batch 8, sequence 32, real `topics` sentences. Step by step: a native `OrtTrainer`
process steps on a batch, then the page on the same batch, so a shared host's load hits both alike. Arms:
one thread each (the page with and without length bucketing, native likewise), and threads (the page
cross-origin isolated with wasm threads, native ORT's default). Also the page's memory and its bundle
download + session load.

    python benchmarks/web_step.py [--steps 20] [--rounds 2] [--bundle DIR] [--out FILE.json]

Needs node, chromium and `make web` (android_demo/web/node_modules).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine
from step import WARMUP, batches, peak_rss_mb, timings, versions

ROOT = Path(__file__).resolve().parents[1]
KEY = "web-step-benchmark-enrollment-key-0123"
LR = 1e-3


# Arms: (the page's wasm threads, 0 = its default; extra query; native ORT's threads, 0 = its default;
# native length bucketing). In each arm a native trainer steps on a batch just before the page steps on
# the same one, so both see the same moment of a shared host. bucketing=0 pads every batch to 32 tokens
# on both sides, as the page did before it trimmed padding.
ARMS = {
    "1_thread": (1, "", 1, True),
    "1_thread_padded": (1, "&bucketing=0", 1, False),
    "threaded": (0, "", 0, True),
}


def load_native(
    bundle_dir: str, task: str, steps: int, threads: int, bucketing: bool
) -> tuple[Any, list[Any]]:
    """Native `OrtTrainer` on the benchmark's batches, `threads` intra-op threads (0: ORT's default)."""
    from fedyolo.runtime import ort_trainer
    from fedyolo.runtime.bundle import open_bundle
    from fedyolo.runtime.ort_trainer import OrtTrainer

    if not bucketing:  # every batch at the padded length, as the page ran before it trimmed padding
        ort_trainer.trim_padding = lambda batch: batch
    data = batches(bundle_dir, task, steps)
    return OrtTrainer(open_bundle(bundle_dir, tasks=[task]), task, lr=LR, threads=threads), data


def serve_native(bundle_dir: str, task: str, steps: int, threads: int, bucketing: bool) -> None:
    """Step on batch i for each line i on stdin, a JSON line {ms, loss} back; at the end, peak RSS."""
    trainer, data = load_native(bundle_dir, task, steps, threads, bucketing)
    print(json.dumps({"threads": threads, "bucketing": bucketing}), flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        loss = trainer.step(data[int(line)])
        print(json.dumps({"ms": (time.perf_counter() - start) * 1000, "loss": loss}), flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)


def paired(bundle_dir: str, task: str, steps: int, rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Every arm `rounds` times: the page and native ORT step by step, against a real server."""
    from fedyolo.fedserver.config import ServerConfig
    from fedyolo.fedserver.serve import serve_in_thread
    from fedyolo.runtime.plan import FederationPlan

    data = [{k: v.tolist() for k, v in b.items()} for b in batches(bundle_dir, task, steps)[: WARMUP + steps]]
    bench = []
    for _ in range(rounds):
        for threads, query, native_threads, bucketing in ARMS.values():
            native = [sys.executable, __file__, "--steps", str(steps), "--serve", bundle_dir, task]
            native += [str(native_threads), str(int(bucketing))]
            bench.append(
                {
                    "task": task,
                    "lr": LR,
                    "threads": threads,
                    "query": query,
                    "batches": data,
                    "native": native,
                }
            )
    with tempfile.TemporaryDirectory() as state:
        config = ServerConfig(
            bundle_dir=Path(bundle_dir), state_dir=Path(state), plan=FederationPlan(), enroll_key=KEY
        )
        with serve_in_thread(config) as url:
            job = {
                "url": url,
                "key": KEY,
                "chromium": shutil.which("chromium"),
                "shots": state,
                "bench": bench,
            }
            done = subprocess.run(
                ["node", str(ROOT / "tests" / "web" / "drive.mjs")],
                input=json.dumps(job),
                capture_output=True,
                text=True,
                timeout=3600,
            )
    if done.returncode != 0:
        raise SystemExit(f"the browser run failed:\n{done.stderr[-3000:]}")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ARMS}
    for i, run in enumerate(json.loads(done.stdout)["bench"]):
        runs[list(ARMS)[i % len(ARMS)]].append(run)
    return runs


def arm_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One arm over its rounds: browser and native median / p95 of every timed step, and their ratio."""

    def side(times: list[list[float]]) -> dict[str, Any]:
        timed = [t for run in times for t in run[WARMUP:]]
        return {
            **timings([t / 1000 for t in timed]),
            "round_medians_ms": [float(np.median(r[WARMUP:])) for r in times],
        }

    page = side([r["times_ms"] for r in runs])
    native = side([r["native"]["times_ms"] for r in runs])
    per_step = [
        b / n
        for r in runs
        for b, n in zip(r["times_ms"][WARMUP:], r["native"]["times_ms"][WARMUP:], strict=True)
    ]
    first = runs[0]
    return {
        "browser": {**page, **{k: first[k] for k in ("memory", "download_s", "load_s", "isolated", "query", "threads")}},
        "native": {**native, "threads": first["native"]["threads"], "peak_rss_mb": first["native"]["peak_rss_mb"]},
        "ratio_of_medians": page["median_ms"] / native["median_ms"],
        "median_of_paired_ratios": float(np.median(per_step)),
        "first_loss_browser_minus_native": first["losses"][0] - first["native"]["losses"][0],
        "losses_max_abs_difference": max(abs(a - b) for a, b in zip(first["losses"], first["native"]["losses"], strict=True)),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--bundle", help="existing bundle with task topics (lora); default: export one")
    parser.add_argument("--out", default="benchmarks/results/web_step.json")
    parser.add_argument("--rounds", type=int, default=1, help="every arm this many times, in turn")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        bundle, task, threads, bucketing = args.serve
        serve_native(bundle, task, args.steps, int(threads), bucketing == "1")
        return
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            bundle = str(Path(tmp) / "bundle")
            subprocess.run(
                [sys.executable, "-c", "from fedyolo.export.pipeline import export_onnx; "
                 "from fedyolo.tasks import load_task; "
                 f"export_onnx({bundle!r}, 'topics', load_task('topics').labels, module='lora', "
                 "show_progress=False)"],
                check=True,
            )  # fmt: skip
        print(f"measuring arms {', '.join(ARMS)}, the page and native ORT step by step ...", flush=True)
        load_before = list(os.getloadavg())
        runs = paired(bundle, "topics", args.steps, args.rounds)
    arms = {name: arm_figures(r) for name, r in runs.items()}
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(
            load_before,
            chromium=subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip(),
            node=subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
        ),
        "versions": {**versions(), "onnxruntime-web": "1.19.2"},
        "case": {"backbone": "MiniLM-L6 (default)", "module": "lora r=8 q,v + head", "batch": 8, "seq": 32},
        "rounds": args.rounds,
        "arms": arms,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["machine"], indent=2))
    for name, a in arms.items():
        b, n = a["browser"], a["native"]
        print(
            f"{name:16s} browser {b['median_ms']:7.1f} / {b['p95_ms']:7.1f} ms  native {n['median_ms']:7.1f} / "
            f"{n['p95_ms']:7.1f} ms  ratio {a['ratio_of_medians']:.2f} (paired {a['median_of_paired_ratios']:.2f})"
        )


if __name__ == "__main__":
    main()
