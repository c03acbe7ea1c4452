"""Inference with a trained module: fp32 against int8 (ONNX Runtime dynamic quantization, per channel),
side by side in one run, on the built-in `topics` test split: accuracy, latency, bytes on disk.

    python benchmarks/inference.py BUNDLE --module m.safetensors [--out benchmarks/results/inference.json]

The module is one `fedyolo train BUNDLE --task topics --epochs 3 --save m.safetensors` wrote. The
trainer's own predict (the eval graph the runtime trains with) is the reference; fp32 must equal it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedyolo.cli.profile import machine
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.inference import InferenceModel, export_inference
from fedyolo.runtime.local import encode_examples
from fedyolo.runtime.ort_trainer import OrtTrainer
from fedyolo.runtime.wire import decode_module
from fedyolo.tasks import load_task

TASK = "topics"


def latencies(
    variants: dict[str, Any], inputs: dict[str, np.ndarray], batch: int, repeats: int
) -> dict[str, Any]:
    """Median and p95 ms per example of each variant, the variants interleaved call by call so that a
    change of load on a shared machine hits them alike."""
    n = len(inputs["input_ids"])
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(repeats + 2):
        start_row = (i * batch) % (n - batch)
        chunk = {k: v[start_row : start_row + batch] for k, v in inputs.items()}
        for name, predict in variants.items():
            start = time.perf_counter()
            predict(chunk)
            if i >= 2:  # two warm-up calls
                times[name].append((time.perf_counter() - start) * 1e3 / batch)
    return {
        name: {"median_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95)), "n": len(t)}
        for name, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--module", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference.json"))
    args = parser.parse_args()

    bundle = open_bundle(args.bundle, tasks=[TASK])
    task = bundle.task(TASK)
    weights = decode_module(args.module.read_bytes(), task)
    test = encode_examples(bundle, task, load_task(TASK).test, "topics test")
    inputs = {k: v for k, v in test.items() if k != "labels"}
    trainer = OrtTrainer(bundle, TASK)
    trainer.set_module(weights)
    report: dict[str, Any] = {
        "machine": machine(),
        "examples": len(test["labels"]),
        "max_length": task.input.max_length,
    }
    reference = np.concatenate(
        [
            trainer.predict({k: v[i : i + 64] for k, v in inputs.items()})
            for i in range(0, len(test["labels"]), 64)
        ]
    )
    variants: dict[str, Any] = {"trainer (eval graph)": trainer.predict}
    with tempfile.TemporaryDirectory() as tmp:
        for name, int8 in (("fp32", False), ("int8", True)):
            written = export_inference(bundle, TASK, weights, Path(tmp) / name, int8=int8)
            model = InferenceModel(Path(tmp) / name)
            variants[name] = model.predict
            report[name] = {"model_bytes": written.model_bytes, "backbone_bytes": written.backbone_bytes}
        for name, predict in variants.items():
            logits = np.concatenate(
                [
                    predict({k: v[i : i + 64] for k, v in inputs.items()})
                    for i in range(0, len(test["labels"]), 64)
                ]
            )
            row = report.setdefault(name, {})
            row["accuracy"] = float((logits.argmax(-1) == test["labels"]).mean())
            row["max_abs_logit_diff_vs_trainer"] = float(np.abs(logits - reference).max())
            row["agreement_with_trainer"] = float((logits.argmax(-1) == reference.argmax(-1)).mean())
        for batch in (1, 8):
            for name, figures in latencies(variants, inputs, batch, args.repeats).items():
                report[name][f"latency_batch{batch}"] = figures
    for name in ("int8",):
        report[f"{name}_over_fp32_latency_batch1"] = (
            report[name]["latency_batch1"]["median_ms"] / report["fp32"]["latency_batch1"]["median_ms"]
        )
        report[f"{name}_over_fp32_latency_batch8"] = (
            report[name]["latency_batch8"]["median_ms"] / report["fp32"]["latency_batch8"]["median_ms"]
        )
        report[f"{name}_accuracy_points_vs_fp32"] = 100 * (
            report[name]["accuracy"] - report["fp32"]["accuracy"]
        )
    report["machine_after"] = machine()["load_avg"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
