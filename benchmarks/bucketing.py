"""Length bucketing, measured with the arms interleaved step by step in one process, so that a
change of load on a shared machine hits them alike: ORT steps on real `topics` batches padded to the
task's 32 tokens; the same batches cut to their longest text (the runtime's default); and the same
examples grouped by length before batching (each batch then cut), which the runtime does not do yet:
it changes which examples share a batch.

    python benchmarks/bucketing.py BUNDLE [--steps 40] [--out benchmarks/results/bucketing.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fedyolo.cli.profile import machine
from fedyolo.runtime import ort_trainer
from fedyolo.runtime.bucketing import trim_padding
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.local import encode_examples
from fedyolo.runtime.ort_trainer import OrtTrainer, SharedBackbone
from fedyolo.tasks import load_task

BATCH, WARMUP = 8, 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bucketing.json"))
    args = parser.parse_args()
    start_machine = machine()
    bundle = open_bundle(args.bundle, tasks=["topics"])
    task = bundle.task("topics")
    arrays = encode_examples(bundle, task, load_task("topics").train[: BATCH * (args.steps + WARMUP)])
    batches = [
        {k: v[i : i + BATCH] for k, v in arrays.items()} for i in range(0, len(arrays["labels"]), BATCH)
    ]
    order = np.argsort(arrays["attention_mask"].sum(1), kind="stable")
    grouped = [{k: v[order[i : i + BATCH]] for k, v in arrays.items()} for i in range(0, len(order), BATCH)]
    backbone = SharedBackbone(bundle)
    trainers = {name: OrtTrainer(bundle, "topics", backbone) for name in ("padded", "bucketed", "grouped")}
    times: dict[str, list[float]] = {name: [] for name in trainers}
    losses: dict[str, list[float]] = {name: [] for name in trainers}
    for i in range(len(batches)):
        names = list(trainers) if i % 2 == 0 else list(trainers)[::-1]  # alternate which arm goes first
        for name in names:
            ort_trainer.trim_padding = trim_padding if name != "padded" else (lambda b: b)
            batch = grouped[i] if name == "grouped" else batches[i]
            t = time.perf_counter()
            losses[name].append(trainers[name].step(batch))
            if i >= WARMUP:
                times[name].append(time.perf_counter() - t)
    ort_trainer.trim_padding = trim_padding
    lengths = [trim_padding(b)["input_ids"].shape[1] for b in batches[WARMUP:]]
    ratios = np.array(times["bucketed"]) / np.array(times["padded"])
    report = {
        "command": "python benchmarks/bucketing.py " + " ".join(f"{k}={v}" for k, v in vars(args).items()),
        "machine": start_machine,
        "load_avg_at_end": machine()["load_avg"],
        "case": {
            "backbone": bundle.manifest.backbone.id,
            "module": task.module_kind,
            "batch": BATCH,
            "padded_to": task.input.max_length,
        },
        "bucketed_length": {"median": float(np.median(lengths)), "min": min(lengths), "max": max(lengths)},
        **{
            name: {
                "median_ms": 1e3 * float(np.median(t)),
                "p95_ms": 1e3 * float(np.percentile(t, 95)),
                "n": len(t),
            }
            for name, t in times.items()
        },
        "bucketed_over_padded": {
            "median_of_paired_ratios": float(np.median(ratios)),
            "p95": float(np.percentile(ratios, 95)),
        },
        "grouped_length": {
            "median": float(np.median([trim_padding(b)["input_ids"].shape[1] for b in grouped]))
        },
        "grouped_over_padded_total_time": sum(times["grouped"]) / sum(times["padded"]),
        "max_abs_loss_diff": float(np.max(np.abs(np.array(losses["padded"]) - np.array(losses["bucketed"])))),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
