"""How fast does a phone's browser train? The page's trainer (onnxruntime-web's training build, in Debian's
chromium, 360-px mobile emulation) against native ONNX Runtime, in the same run, on the default case:
MiniLM-L6 + LoRA r=8 on q,v + linear head, batch 8, sequence 32, real `topics` sentences. The browser runs
with one wasm thread and, cross-origin isolated (the server sends COOP/COEP), with wasm threads; native
ORT with one thread and its default. Also the page's memory and its bundle download + session load.

    python benchmarks/web_step.py [--steps 20] [--bundle DIR] [--out benchmarks/results/web_step.json]

Needs node, chromium and `make web` (android_demo/web/node_modules).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from step import WARMUP, batches, peak_rss_mb, timed_steps, timings, versions

ROOT = Path(__file__).resolve().parents[1]
KEY = "web-step-benchmark-enrollment-key-0123"
LR = 1e-3


def worker_native(bundle_dir: str, task: str, steps: int, threads: int) -> dict[str, Any]:
    """Native ORT steps on the same batches, `threads` intra-op threads (0: ORT's default)."""
    from fedyolo.runtime.bundle import open_bundle
    from fedyolo.runtime.ort_trainer import OrtTrainer

    data = batches(bundle_dir, task, steps)
    trainer = OrtTrainer(open_bundle(bundle_dir, tasks=[task]), task, lr=LR, threads=threads)
    times, losses = timed_steps(trainer, data, steps)
    return {**timings(times), "peak_rss_mb": peak_rss_mb(), "losses": losses, "threads": threads}


def native_run(bundle: str, steps: int, threads: int) -> dict[str, Any]:
    """`worker_native` in a fresh interpreter: its peak RSS is its own."""
    cmd = [sys.executable, __file__, "--steps", str(steps), "--worker", bundle, "topics", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"native worker failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def browser(bundle_dir: str, task: str, steps: int, threads: list[int]) -> list[dict[str, Any]]:
    """The page's step times with each thread count, against a real server serving the bundle."""
    from fedyolo.fedserver.config import ServerConfig
    from fedyolo.fedserver.serve import serve_in_thread
    from fedyolo.runtime.plan import FederationPlan

    data = [{k: v.tolist() for k, v in b.items()} for b in batches(bundle_dir, task, steps)[: WARMUP + steps]]
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
                "bench": [{"task": task, "lr": LR, "threads": n, "batches": data} for n in threads],
            }
            done = subprocess.run(
                ["node", str(ROOT / "tests" / "web" / "drive.mjs")],
                input=json.dumps(job),
                capture_output=True,
                text=True,
                timeout=1800,
            )
    if done.returncode != 0:
        raise SystemExit(f"the browser run failed:\n{done.stderr[-3000:]}")
    runs = json.loads(done.stdout)["bench"]
    for run in runs:
        run.update(timings([t / 1000 for t in run.pop("times_ms")[WARMUP:]]))
    return list(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--bundle", help="existing bundle with task topics (lora); default: export one")
    parser.add_argument("--out", default="benchmarks/results/web_step.json")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        bundle, task, threads = args.worker
        print(json.dumps(worker_native(bundle, task, args.steps, int(threads))))
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
        print("measuring: native ORT (1 thread, default), the page (1 thread, threaded) ...", flush=True)
        load_before = list(os.getloadavg())
        native = {n: native_run(bundle, args.steps, n) for n in (1, 0)}
        pages = browser(bundle, "topics", args.steps, [1, 0])
    one, threaded = pages
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_average_at_start": load_before,
            "load_average_at_end": list(os.getloadavg()),
            "chromium": subprocess.run(
                ["chromium", "--version"], capture_output=True, text=True
            ).stdout.strip(),
            "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
        },
        "versions": {**versions(), "onnxruntime-web": "1.19.2"},
        "case": {"backbone": "MiniLM-L6 (default)", "module": "lora r=8 q,v + head", "batch": 8, "seq": 32},
        "native_1_thread": native[1],
        "native_default_threads": native[0],
        "browser_1_thread": one,
        "browser_threaded": threaded,
        "ratios": {
            "browser_1_thread / native_1_thread": one["median_ms"] / native[1]["median_ms"],
            "browser_1_thread / native_default": one["median_ms"] / native[0]["median_ms"],
            "browser_threaded / native_default": threaded["median_ms"] / native[0]["median_ms"],
        },
        "first_loss_browser_minus_native": one["losses"][0] - native[1]["losses"][0],
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("machine", "ratios")}, indent=2))
    for name in ("native_1_thread", "native_default_threads", "browser_1_thread", "browser_threaded"):
        r = result[name]
        print(f"{name:24s} median {r['median_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms")


if __name__ == "__main__":
    main()
