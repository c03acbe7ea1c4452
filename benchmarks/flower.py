"""Flower's simulation engine against `fedyolo simulate`: accuracy, wall time, peak memory, bytes a round.

Both commands run the same federation (same clients, Dirichlet split, seeds, plan, cohort draw), each in
its own process tree sampled by psutil every 0.2 s for the sum of resident memory over the tree (Flower
runs Ray: a GCS server, a raylet and one worker per actor beside the driver). Accuracy is the held-out
accuracy of each round's committed module; the final modules are compared bit for bit.

Bytes on the wire: what Flower serialises per round (`records.wire_bytes`: every object of the message
tree a node pulls or pushes) for the module, against an ArrayRecord of the whole model (backbone +
module: what full fine-tuning would send) measured the same way.

    python benchmarks/flower.py --backbone tiny-bert --clients 100 --rounds 3
    python benchmarks/flower.py --backbone minilm --clients 100 --fraction 0.1 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil


def run_measured(cmd: list[str], log: Path) -> dict[str, float]:
    """Run `cmd`; its wall time and the peak of the summed RSS of its process tree."""
    start = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak / 2**20}


def full_model_bytes(bundle_dir: Path, task_id: str) -> tuple[int, int]:
    """(module, backbone + module) as Flower ArrayRecords on the wire."""
    from flwr.app import Array, ArrayRecord

    from fedyolo.flower.records import module_record, wire_bytes
    from fedyolo.runtime.bundle import initial_module, open_bundle

    bundle = open_bundle(bundle_dir)
    task = bundle.task(task_id)
    module = initial_module(bundle, task_id)
    raw = np.fromfile(bundle.backbone_path, dtype=np.uint8)
    full = dict(module_record(module, task))
    for t in bundle.manifest.backbone.tensors:
        full[t.name] = Array(raw[t.offset : t.offset + t.length].view(np.float32).reshape(t.shape).copy())
    return wire_bytes(module_record(module, task)), wire_bytes(ArrayRecord(full))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="tiny-bert")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-per-task", type=int, default=0)
    parser.add_argument("--test-per-task", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("flower_bench"))
    args = parser.parse_args()
    common = [
        f"--clients={args.clients}",
        f"--fraction={args.fraction}",
        f"--rounds={args.rounds}",
        f"--backbone={args.backbone}",
        f"--train-per-task={args.train_per_task}",
        f"--test-per-task={args.test_per_task}",
        "--eval-every=1",
    ]
    cli = [sys.executable, "-m", "fedyolo.cli"]
    args.out.mkdir(parents=True, exist_ok=True)
    # Export once, outside the timed runs: both commands reuse a bundle made from the same recipe.
    sim_out, flower_out = args.out / "simulate", args.out / "flower"
    warm = [*cli, "simulate", *common[:-1], "--rounds=1", "--fraction=0.01", f"--out={sim_out}"]
    subprocess.run(warm, check=True, capture_output=True)
    flower_out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(sim_out / "bundle", flower_out / "bundle", dirs_exist_ok=True)
    shutil.copy(sim_out / "bundle.recipe.json", flower_out / "bundle.recipe.json")

    sim = run_measured([*cli, "simulate", *common, f"--out={sim_out}"], args.out / "simulate.log")
    flw = run_measured([*cli, "flower", "simulate", *common, f"--out={flower_out}"], args.out / "flower.log")

    sim_rounds = json.loads((sim_out / "simulate.json").read_text())["tasks"]["topics"]["rounds"]
    flw_rounds = json.loads((flower_out / "topics" / "history.json").read_text())["rounds"]
    module, full = full_model_bytes(flower_out / "bundle", "topics")
    per_round_up = [r["upload_bytes"] / len(r["clients"]) for r in flw_rounds]
    result: dict[str, Any] = {
        "machine": {
            "cpus": psutil.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {p: _version(p) for p in ("flwr", "ray", "onnxruntime-training", "numpy")},
        "settings": vars(args) | {"out": str(args.out)},
        "fedyolo_simulate": sim | {"accuracy": [r["accuracy"] for r in sim_rounds]},
        "flower_simulation": flw | {"accuracy": [r["accuracy"] for r in flw_rounds]},
        "accuracy_gap": [
            None if a["accuracy"] is None else b["accuracy"] - a["accuracy"]
            for a, b in zip(sim_rounds, flw_rounds, strict=True)
        ],
        "bytes": {
            "module_record_initial": module,  # identical zero tensors (LoRA B) are sent once
            "full_model_record": full,
            "ratio_to_initial_module": full / module,
            "ratio_to_trained_upload": full / float(np.median(per_round_up)),
            "flower_upload_per_client": per_round_up,
            "flower_round_upload": [r["upload_bytes"] for r in flw_rounds],
            "flower_round_download": [r["download_bytes"] for r in flw_rounds],
            "simulate_round_upload_safetensors": [r["upload_bytes"] for r in sim_rounds],
        },
    }
    (args.out / "flower_bench.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


if __name__ == "__main__":
    main()
