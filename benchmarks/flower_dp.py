"""What do Flower's central DP (server-side fixed clipping + Gaussian noise) and secure aggregation (SecAgg+)
cost in accuracy and time on `topics`?

`fedyolo flower simulate` on the real MiniLM + LoRA, all of `topics` among 10 clients (Dirichlet alpha 1),
every client every round, FedAvg with the default bounds, lr 2e-3, batch 16, 1 local epoch a round; the
same run without DP, and wrapped in `DifferentialPrivacyServerSideFixedClipping` (each update clipped to
`--dp-clip`, then Gaussian noise of std `noise * dp_clip / clients` added to the aggregate) at each noise
multiplier; with `--secagg`, the same run under SecAgg+ (`privacy=secagg`: the server sees only the
round's mean change; clients clip themselves). Reported: held-out accuracy after each round, wall time,
and the median L2 norm of the clients' changes in the run without DP (what the clip bound is measured
against).

    python benchmarks/flower_dp.py --noise 0.5,1.0 --rounds 5
    python benchmarks/flower_dp.py --noise '' --secagg --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--noise", default="0.5,1.0")
    parser.add_argument("--dp-clip", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--secagg", action="store_true", help="add a run under SecAgg+")
    parser.add_argument("--out", type=Path, default=Path("flower_dp"))
    args = parser.parse_args()
    runs: dict[str, list[str]] = {"no DP": []}
    if args.secagg:
        runs["SecAgg+"] = ["--set=privacy=secagg"]
    for noise in filter(None, args.noise.split(",")):
        runs[f"server DP, noise {noise}"] = [
            "--set=privacy=server",
            f"--set=noise-multiplier={noise}",
            f"--set=dp-clip={args.dp_clip}",
        ]
    results = {}
    for i, (name, extra) in enumerate(runs.items()):
        out = args.out / f"run{i}"
        cmd = [sys.executable, "-m", "fedyolo.cli", "flower", "simulate", f"--clients={args.clients}",
               "--fraction=1.0", f"--rounds={args.rounds}", "--eval-every=1", f"--out={out}", *extra]  # fmt: skip
        if i > 0:  # reuse the first run's bundle
            out.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-r", str(args.out / "run0" / "bundle"), str(out)], check=True)
            subprocess.run(["cp", str(args.out / "run0" / "bundle.recipe.json"), str(out)], check=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        history = json.loads((out / "topics" / "history.json").read_text())
        results[name] = {
            "accuracy": [r["accuracy"] for r in history["rounds"]],
            "seconds": time.perf_counter() - start,
        }
        if i > 0:  # how far this run's final module is from the run without DP, value by value
            from safetensors.numpy import load_file

            clear = load_file(args.out / "run0" / "topics" / "module.safetensors")
            mine = load_file(out / "topics" / "module.safetensors")
            results[name]["max_abs_gap_to_no_dp"] = max(
                float(np.abs(mine[k] - clear[k]).max()) for k in clear
            )
        if i == 0:
            from fedyolo.fedserver.store import decode_state

            state = decode_state((out / "topics" / "state.safetensors").read_bytes())
            results[name]["median_update_norm"] = float(np.median(state.norms))
        print(name, results[name], flush=True)
    summary = {"settings": vars(args) | {"out": str(args.out)}, "runs": results}
    summary["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "load": os.getloadavg()}  # fmt: skip
    (args.out / "flower_dp.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
