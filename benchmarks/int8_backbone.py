"""The int8 frozen backbone (`fedyolo export onnx --backbone-dtype int8`) against fp32 and PyTorch eager.

Default case (MiniLM-L6 + LoRA r=8 on q,v + head, batch 8, sequence 32, real `topics` batches, AdamW,
length bucketing on in every arm). Each round runs, each in a fresh interpreter (step.py's workers):
ORT over the fp32 bundle, ORT over the int8 bundle, PyTorch eager with the same bucketing (like for
like) and PyTorch eager padded to 32 (step.py's reference). Rounds interleave the arms, so a change in
the host's load hits every arm. Also: backbone bytes, peak RSS, the fp32 compute floor (step FLOPs over
the best MLAS sgemm rate measured in the same run), and with --epochs N held-out accuracy on `topics`
after N epochs of `fedyolo train` on each bundle.

    python benchmarks/int8_backbone.py [--rounds 3] [--steps 20] [--epochs 3] [--b32 B --b8 B]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step  # the workers, FLOP estimate and sgemm probe are step.py's
from machine import machine

RESULTS = Path(__file__).parent / "results" / "int8_backbone.json"
ARMS = {
    "ort_fp32": lambda b32, b8: ["ort", b32, "topics"],
    "ort_int8": lambda b32, b8: ["ort", b8, "topics"],
    "pytorch_bucketed": lambda b32, b8: ["torch", b32, "topics", "bucketed"],
    "pytorch_padded": lambda b32, b8: ["torch", b32, "topics"],
}


def export_pair(root: Path) -> tuple[str, str]:
    from fedyolo.export.pipeline import export_onnx
    from fedyolo.tasks import load_task

    labels = load_task("topics").labels
    for name, dtype in (("b32", "float32"), ("b8", "int8")):
        export_onnx(root / name, "topics", labels, module="lora", backbone_dtype=dtype, show_progress=False)
    return str(root / "b32"), str(root / "b8")


def accuracy(bundle: str, epochs: int) -> dict[str, Any]:
    """`fedyolo train` on `topics`: held-out accuracy and the loss per epoch, as the CLI prints them."""
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "fedyolo.cli", "train", bundle, "--task", "topics", "--epochs", str(epochs)],
        capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    found = re.search(r"held-out accuracy after \d+ epochs: ([\d.]+)%", out.stdout)
    if found is None:
        raise RuntimeError(f"no accuracy in `fedyolo train`'s output:\n{out.stdout[-2000:]}")
    return {"accuracy_percent": float(found.group(1)), "seconds": time.perf_counter() - t}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "median_ms": statistics.median(r["median_ms"] for r in runs),
        "p95_ms": statistics.median(r["p95_ms"] for r in runs),
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        "first_loss": runs[0]["first_loss"],
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per arm per round")
    parser.add_argument("--epochs", type=int, default=0, help="also train N epochs on each bundle")
    parser.add_argument("--b32", help="an fp32 bundle with task topics (lora); default: export one")
    parser.add_argument("--b8", help="the same task exported with --backbone-dtype int8")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fedyolo-int8-") as tmp:
        b32, b8 = (args.b32, args.b8) if args.b32 and args.b8 else export_pair(Path(tmp))
        load_start = list(os.getloadavg())
        sgemm = [step.run_worker(["sgemm", b32])["gflops"]]
        runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
        for r in range(args.rounds):
            for arm, argv in ARMS.items():
                result = step.run_worker([*argv(b32, b8), "--steps", str(args.steps)])
                runs[arm].append(result)
                print(f"round {r} {arm:17s} median {result['median_ms']:7.1f} ms  p95 {result['p95_ms']:7.1f}"
                      f"  RSS {result['peak_rss_mb']:4.0f} MB  first loss {result['first_loss']:.5f}", flush=True)  # fmt: skip
        sgemm.append(step.run_worker(["sgemm", b32])["gflops"])
        load_end = list(os.getloadavg())
        trained = (
            {"fp32": accuracy(b32, args.epochs), "int8": accuracy(b8, args.epochs)} if args.epochs else None
        )

        from fedyolo.runtime.manifest import read_manifest

        m32, m8 = read_manifest(b32), read_manifest(b8)
    arms = {arm: summary(v) for arm, v in runs.items()}
    flop = step.step_gflop(m32)
    floor_ms = flop / max(sgemm) * 1000
    int8, fp32 = arms["ort_int8"]["median_ms"], arms["ort_fp32"]["median_ms"]
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(load_start, load_average_after_timing=load_end),
        "versions": step.versions(),
        "case": {
            "backbone": m32.backbone.id,
            "module": "lora r=8 q,v + head",
            "batch": step.BATCH,
            "seq": step.SEQ,
        },
        "arms": arms,
        "sgemm_gflops_start_end": sgemm,
        "step_gflop_estimate": flop,
        "fp32_floor_ms": floor_ms,
        "backbone_bytes": {"fp32": m32.backbone.file.bytes, "int8": m8.backbone.file.bytes},
        "ratios": {
            "int8_over_fp32_step": int8 / fp32,
            "int8_over_pytorch_bucketed": int8 / arms["pytorch_bucketed"]["median_ms"],
            "int8_over_pytorch_padded": int8 / arms["pytorch_padded"]["median_ms"],
            "fp32_over_pytorch_bucketed": fp32 / arms["pytorch_bucketed"]["median_ms"],
            "int8_over_fp32_floor": int8 / floor_ms,
            "backbone_bytes_int8_over_fp32": m8.backbone.file.bytes / m32.backbone.file.bytes,
            "peak_rss_int8_over_fp32": arms["ort_int8"]["peak_rss_mb"] / arms["ort_fp32"]["peak_rss_mb"],
        },
        "accuracy": trained,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"ratios": result["ratios"], "fp32_floor_ms": floor_ms, "accuracy": trained}, indent=2))


if __name__ == "__main__":
    main()
