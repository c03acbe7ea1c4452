"""Measure one task on one backend as a device sees it: load, first step, steady steps, inference, memory.

Each case runs in a fresh interpreter (`python -m fedyolo.runtime.profiler`, a JSON case on stdin, a
JSON result on stdout), so its memory figures are its own. How memory is split, from /proc/self:
- runtime: resident set after importing the backend, before any bundle file is read;
- backbone: resident pages of the memory-mapped backbone file (its `Rss` in /proc/self/smaps), at peak;
- module + optimizer: what opening the task added (graphs, sessions, checkpoint state, AdamW moments),
  less the backbone pages opening touched;
- activations: the peak (VmHWM) less all of the above: the steps' working memory and arena.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.manifest import Manifest, TaskSpec
from fedyolo.runtime.trainer import Batch


@dataclass(frozen=True)
class Case:
    """One measurement: a backend, a batch shape, a thread count, and how long to run."""

    backend: str
    batch: int
    seq: int
    threads: int
    steps: int = 20
    warmup: int = 3
    duration_s: float = 0.0  # > 0: step for this long instead of `steps` (sustained mode)
    infer_repeats: int = 10
    floor: bool = True  # count the step's FLOPs (one more profiled step, after the peak is read)


def status_kb() -> dict[str, int]:
    """The kB fields of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile, ...), read at one instant."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.endswith(" kB"):
            fields[key] = int(value.split()[0])
    return fields


def rss_bytes() -> int:
    """Resident set size now."""
    return 1024 * status_kb().get("VmRSS", 0)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM)."""
    return 1024 * status_kb().get("VmHWM", 0)


def mapped_rss_bytes(path: Path) -> int:
    """Resident bytes of every mapping of `path` in this process (/proc/self/smaps)."""
    target, total, inside = str(path.resolve()), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            # a mapping's header line: address-range perms offset dev inode path
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip("\n").endswith(target)
            elif inside and first == "Rss:":
                total += 1024 * int(line.split()[1])
    return total


def synthetic_batch(manifest: Manifest, task: TaskSpec, batch: int, seq: int, seed: int = 0) -> Batch:
    """Random inputs of the task's kind: token ids from the vocabulary, or normal pixels; random labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(task.labels), batch, dtype=np.int64)
    if task.input.kind == "image":
        pixels = rng.standard_normal((batch, *task.input.image_shape), dtype=np.float32)
        return {"pixel_values": pixels, "labels": labels}
    vocab = next(
        (t.shape[0] for t in manifest.backbone.tensors if t.name.endswith("word_embeddings.weight")), 1000
    )
    ids = rng.integers(min(1000, vocab - 1), vocab, (batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones((batch, seq), np.int64), "labels": labels}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def measure(bundle_dir: str, task_id: str, case: Case) -> dict[str, Any]:
    """Run `case` in this process (a fresh one: see `run_case`) and return its figures."""
    from fedyolo.runtime.backends import make_trainer
    from fedyolo.runtime.bundle import open_bundle

    if case.backend == "ort":
        from fedyolo.runtime.ort_import import load_ort

        load_ort()
    rss_runtime = rss_bytes()
    start = time.perf_counter()
    bundle = open_bundle(bundle_dir, tasks=[task_id], verify=False)  # the caller verified it once
    trainer = make_trainer(bundle, task_id, case.backend, threads=case.threads)
    load_s = time.perf_counter() - start
    rss_loaded = rss_bytes()
    backbone_at_load = mapped_rss_bytes(bundle.backbone_path)
    batch = synthetic_batch(bundle.manifest, trainer.task, case.batch, case.seq)

    start = time.perf_counter()
    losses = [trainer.step(batch)]
    first_step_s = time.perf_counter() - start
    for _ in range(case.warmup):
        losses.append(trainer.step(batch))
    times: list[float] = []
    began = time.perf_counter()
    sustained = case.duration_s > 0
    while (time.perf_counter() - began < case.duration_s) if sustained else (len(times) < case.steps):
        start = time.perf_counter()
        losses.append(trainer.step(batch))
        times.append(time.perf_counter() - start)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    trainer.predict(inputs)
    infer: list[float] = []
    for _ in range(case.infer_repeats):
        start = time.perf_counter()
        trainer.predict(inputs)
        infer.append(time.perf_counter() - start)
    peak = peak_rss_bytes()
    backbone = mapped_rss_bytes(bundle.backbone_path)
    module = max(0, rss_loaded - rss_runtime - backbone_at_load)
    out: dict[str, Any] = {
        "case": asdict(case),
        "load_s": load_s,
        "first_step_ms": 1e3 * first_step_s,
        "step_ms": [1e3 * t for t in times],
        "step_ms_median": 1e3 * float(np.median(times)),
        "step_ms_p95": 1e3 * _percentile(times, 95),
        "step_ms_p99": 1e3 * _percentile(times, 99),
        "infer_ms_per_example": 1e3 * float(np.median(infer)) / case.batch,
        "losses_finite": bool(np.isfinite(losses).all()),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "rss": {
            "peak": peak,
            "runtime": rss_runtime,
            "backbone": backbone,
            "module_optimizer": module,
            "activations": max(0, peak - rss_runtime - backbone - module),
        },
    }
    del trainer
    if case.floor and case.backend == "ort":
        from fedyolo.runtime.compute_floor import step_flops

        flops = step_flops(bundle, task_id, batch, case.threads)
        out["step_flops"] = flops.flops
        out["gemm_share_of_kernel_time"] = flops.gemm_ms / flops.kernel_ms if flops.kernel_ms else None
    return out


def run_case(bundle_dir: Path, task_id: str, case: Case, timeout_s: float | None = None) -> dict[str, Any]:
    """`measure` in a fresh interpreter; a failure there is one FedyoloError here."""
    request = json.dumps({"bundle": str(bundle_dir), "task": task_id, "case": asdict(case)})
    done = subprocess.run(
        [sys.executable, "-m", "fedyolo.runtime.profiler"],
        input=request,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=os.environ.copy(),
    )
    lines = done.stdout.strip().splitlines()
    try:
        answer: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        answer = {}
    if done.returncode != 0 or "error" in answer or not answer:
        why = answer.get("error") or (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise FedyoloError(
            f"profiling {case.backend} at batch {case.batch} x {case.seq} tokens, {case.threads or 'all'} "
            f"threads failed: {why}"
        )
    return answer


def main() -> None:
    """Worker entry: a JSON request on stdin, one JSON line on stdout."""
    request = json.loads(sys.stdin.read())
    try:
        result = measure(request["bundle"], request["task"], Case(**request["case"]))
    except FedyoloError as e:
        print(json.dumps({"error": " ".join(str(e).split())}))
        sys.exit(2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
