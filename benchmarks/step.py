"""How fast and how small is one training step on this CPU? ONNX Runtime (torch-free) against PyTorch
eager and ExecuTorch (when the 'executorch' extra is installed), in the same run, on the default case: MiniLM-L6 + LoRA r=8 on q,v + linear head, batch 8,
sequence 32, real `topics` sentences. Also: peak RSS with one and with two tasks resident, module
bytes against full-model bytes, and the fp32 compute floor from the measured MLAS sgemm peak.

    python benchmarks/step.py [--steps 30] [--out benchmarks/results/step.json]

Each backend runs in its own fresh interpreter, so peak RSS is that backend's alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BATCH, SEQ, WARMUP = 8, 32, 5


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that across fork + exec, so a
    worker would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timings(values: list[float]) -> dict[str, float]:
    ms = np.array(values) * 1000
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "n": len(ms)}


def batches(bundle_dir: str, task: str, steps: int) -> list[dict[str, np.ndarray]]:
    from fedyolo.runtime.bundle import open_bundle
    from fedyolo.runtime.local import encode_examples
    from fedyolo.tasks import load_task

    bundle = open_bundle(bundle_dir, tasks=[task], verify=False)
    arrays = encode_examples(bundle, bundle.task(task), load_task("topics").train[: BATCH * (steps + WARMUP)])
    for k in ("input_ids", "attention_mask"):
        arrays[k] = arrays[k][:, :SEQ]
    n = len(arrays["labels"]) // BATCH
    return [{k: v[i * BATCH : (i + 1) * BATCH] for k, v in arrays.items()} for i in range(n)]


def sgemm_peak_gflops(threads: int = 2, n: int = 2048) -> float:
    """ONNX Runtime's MLAS sgemm on n x n, `threads` threads: the best fp32 GEMM on this CPU."""
    from onnx import TensorProto, helper

    from fedyolo.runtime.ort_import import load_ort

    C = load_ort()
    from onnxruntime.capi.onnxruntime_inference_collection import InferenceSession

    vi = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "g", vi[:2], vi[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    options = C.SessionOptions()
    options.intra_op_num_threads = threads
    session = InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    session.run(None, {"a": a, "b": a})
    times = []
    for _ in range(5):
        t = time.perf_counter()
        session.run(None, {"a": a, "b": a})
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times)) / 1e9


def timed_steps(trainer: Any, data: list[Any], steps: int) -> tuple[list[float], list[float]]:
    """WARMUP untimed steps, then `steps` timed ones over `data`: (seconds per timed step, every loss)."""
    times, losses = [], []
    for i, batch in enumerate(data[: WARMUP + steps]):
        t = time.perf_counter()
        losses.append(trainer.step(batch))
        if i >= WARMUP:
            times.append(time.perf_counter() - t)
    return times, losses


def worker_ort(
    bundle_dir: str, task: str, steps: int, backend: str = "ort", bucketing: bool = True
) -> dict[str, Any]:
    """The runtime's trainer on `backend` (ort or executorch); bucketing=False pads every batch to SEQ."""
    from fedyolo.runtime import executorch_trainer, ort_trainer
    from fedyolo.runtime.backends import make_trainer
    from fedyolo.runtime.bundle import open_bundle

    if not bucketing:  # the lever's other arm: every batch at the padded length, as before it
        ort_trainer.trim_padding = executorch_trainer.trim_padding = lambda batch, *_: batch

    data = batches(bundle_dir, task, steps)
    trainer = make_trainer(open_bundle(bundle_dir, tasks=[task]), task, backend, lr=1e-3)
    times, losses = timed_steps(trainer, data, steps)
    return {
        **timings(times),
        "peak_rss_mb": peak_rss_mb(),
        "torch_loaded": "torch" in sys.modules,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def worker_tasks(bundle_dir: str, tasks: list[str], steps: int, share: bool) -> dict[str, Any]:
    """Peak RSS while training `tasks` alternately, one backbone shared (or one per task)."""
    from fedyolo.runtime.bundle import open_bundle
    from fedyolo.runtime.ort_trainer import OrtTrainer, SharedBackbone

    bundle = open_bundle(bundle_dir, tasks=tasks)
    shared = SharedBackbone(bundle) if share else None
    trainers = [
        OrtTrainer(bundle, t, backbone=shared if share else SharedBackbone(bundle, mmap=False)) for t in tasks
    ]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        for tr in trainers:
            n = len(tr.task.labels)
            tr.step(
                {
                    "input_ids": rng.integers(1000, 20000, (BATCH, SEQ)),
                    "attention_mask": np.ones((BATCH, SEQ), np.int64),
                    "labels": rng.integers(0, n, BATCH),
                }
            )
    return {
        "tasks": tasks,
        "shared_backbone": share,
        "peak_rss_mb": peak_rss_mb(),
        "torch_loaded": "torch" in sys.modules,
    }


def worker_torch(bundle_dir: str, task: str, steps: int, bucketing: bool = False) -> dict[str, Any]:
    import torch

    from fedyolo.export.backbones import load_backbone
    from fedyolo.export.pipeline import build_task_model
    from fedyolo.runtime.bucketing import trim_padding
    from fedyolo.runtime.manifest import read_manifest

    torch.set_num_threads(2)
    spec = read_manifest(bundle_dir).tasks[task]
    model, _ = build_task_model(load_backbone("minilm"), "lora", spec.labels)
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times, losses = [], []
    for i, batch in enumerate(batches(bundle_dir, task, steps)[: WARMUP + steps]):
        if bucketing:  # the same lever in PyTorch: like for like
            batch = trim_padding(batch)
        t = time.perf_counter()
        logits = model(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"]))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["labels"]))
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss))
        if i >= WARMUP:
            times.append(time.perf_counter() - t)
    return {
        **timings(times),
        "peak_rss_mb": peak_rss_mb(),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "torch_version": torch.__version__,
    }


def step_gflop(manifest: Any) -> float:
    """Matmul FLOPs of one step: forward plus the input-gradient backward (the frozen weights need no
    weight gradient), i.e. about twice the forward; LoRA and head add < 1%."""
    bb = manifest.backbone
    h, layers = bb.hidden_size, bb.num_layers
    inter = next(t.shape[-1] for t in bb.tensors if "intermediate" in t.name and len(t.shape) == 2)
    tokens = BATCH * SEQ
    forward = layers * (2 * tokens * (4 * h * h + 2 * h * inter) + 2 * 2 * BATCH * SEQ * SEQ * h)
    return 2 * forward / 1e9


def run_worker(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("onnxruntime-training", "torch", "transformers", "peft", "onnx", "numpy", "executorch")
    return {p: version(p) for p in names if importlib.util.find_spec(p.split("-")[0]) is not None}


def executorch_side_by_side(
    bundle: str, ort: dict[str, Any], ort_padded: dict[str, Any], kernels: str
) -> dict[str, Any] | None:
    """The ExecuTorch step on the same task and batches, its program added to the bundle if missing (the
    speed rewrites of fedyolo/export/executorch_rewrites.py on); None without the 'executorch' extra."""
    if importlib.util.find_spec("executorch") is None:
        return None
    from fedyolo.runtime.et_kernels import program_needs_kernels
    from fedyolo.runtime.executorch_files import PROGRAM
    from fedyolo.runtime.manifest import read_manifest

    spec = read_manifest(bundle).tasks["topics"]
    export_seconds = float("nan")
    if PROGRAM not in spec.files:
        from fedyolo.export.executorch_bundle import export_executorch

        t = time.perf_counter()
        export_executorch(
            bundle, "topics", spec.labels, module="lora", batch=BATCH, show_progress=False, kernels=kernels
        )
        export_seconds = time.perf_counter() - t
    et = run_worker(["executorch", bundle, "topics"])
    return {
        **et,
        "export_seconds": export_seconds,
        "program_batch": read_manifest(bundle).tasks["topics"].executorch_batch,
        "program_uses_fedyolo_kernels": program_needs_kernels(Path(bundle) / "tasks" / "topics" / PROGRAM),
        "step_over_ort": et["median_ms"] / ort["median_ms"],
        "step_over_ort_padded": et["median_ms"] / ort_padded["median_ms"],
        "peak_rss_over_ort": et["peak_rss_mb"] / ort["peak_rss_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--bundle", help="existing bundle with tasks topics (lora) and language; default: export one"
    )
    parser.add_argument("--out", default="benchmarks/results/step.json")
    parser.add_argument(
        "--executorch-kernels",
        default="fedyolo",
        help="kernels of the ExecuTorch program exported when the bundle has none: fedyolo or executorch",
    )
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, bundle, *rest = args.worker
        if kind in ("ort", "executorch"):
            result = worker_ort(bundle, rest[0], args.steps, backend=kind, bucketing=rest[1:] != ["padded"])
        elif kind == "torch":
            result = worker_torch(bundle, rest[0], args.steps, bucketing=rest[1:] == ["bucketed"])
        elif kind == "sgemm":
            result = {"gflops": sgemm_peak_gflops(), "torch_loaded": "torch" in sys.modules}
        else:
            result = worker_tasks(bundle, rest[1:], 10, share=rest[0] == "shared")
        print(json.dumps(result))
        return

    from fedyolo.runtime.manifest import read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            from fedyolo.export.pipeline import export_onnx
            from fedyolo.tasks import load_task

            bundle = str(Path(tmp) / "bundle")
            t = time.perf_counter()
            export_onnx(bundle, "topics", load_task("topics").labels, module="lora", show_progress=False)
            export_seconds = time.perf_counter() - t
            export_onnx(
                bundle, "language", load_task("language").labels, module="adapter", show_progress=False
            )
        else:
            export_seconds = float("nan")
        manifest = read_manifest(bundle)
        print("measuring: sgemm peak, ORT step, PyTorch step, one and two tasks resident ...", flush=True)
        sgemm = run_worker(["sgemm", bundle])
        ort = run_worker(["ort", bundle, "topics"])
        eager = run_worker(["torch", bundle, "topics"])
        ort_padded = run_worker(["ort", bundle, "topics", "padded"])
        eager_bucketed = run_worker(["torch", bundle, "topics", "bucketed"])
        executorch = executorch_side_by_side(bundle, ort, ort_padded, args.executorch_kernels)
        one = run_worker(["tasks", bundle, "shared", "topics"])
        two = run_worker(["tasks", bundle, "shared", "topics", "language"])
        two_unshared = run_worker(["tasks", bundle, "private", "topics", "language"])
        spec = manifest.tasks["topics"]
        full_bytes = manifest.backbone.full_model_bytes + spec.module_bytes
        flop = step_gflop(manifest)
        floor_ms = flop / sgemm["gflops"] * 1000
        result = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {
                "load_average_at_end": list(os.getloadavg()),
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
            },
            "versions": versions(),
            "case": {
                "backbone": manifest.backbone.id,
                "module": "lora r=8 q,v + head",
                "batch": BATCH,
                "seq": SEQ,
            },
            "export_seconds": export_seconds,
            "ort": ort,  # length bucketing on (the runtime's default)
            "pytorch_eager": eager,  # padded to 32, as before
            "ort_padded": ort_padded,  # bucketing off
            "pytorch_eager_bucketed": eager_bucketed,
            "executorch": executorch,
            "sgemm_peak_gflops": sgemm["gflops"],
            "step_gflop_estimate": flop,
            "fp32_floor_ms": floor_ms,
            "ratios": {
                "ort_over_pytorch_step": ort["median_ms"] / eager["median_ms"],
                "ort_padded_over_pytorch_step": ort_padded["median_ms"] / eager["median_ms"],
                "ort_over_pytorch_bucketed_step": ort["median_ms"] / eager_bucketed["median_ms"],
                "ort_bucketed_over_padded_step": ort["median_ms"] / ort_padded["median_ms"],
                "ort_over_fp32_floor": ort["median_ms"] / floor_ms,
                "module_over_full_model_bytes": spec.module_bytes / full_bytes,
                "module_fp16_wire_over_full_model_bytes": 2 * spec.module_numel / full_bytes,
            },
            "bytes": {
                "module": spec.module_bytes,
                "full_model": full_bytes,
                "backbone_file": manifest.backbone.file.bytes,
            },
            "resident": {"one_task": one, "two_tasks_shared": two, "two_tasks_unshared": two_unshared},
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    r = result["ratios"]
    print(
        f"ORT step   median {ort['median_ms']:.1f} ms  p95 {ort['p95_ms']:.1f} ms  peak RSS {ort['peak_rss_mb']:.0f} MB"
        f"  torch loaded: {ort['torch_loaded']}"
    )
    print(
        f"PyTorch    median {eager['median_ms']:.1f} ms  p95 {eager['p95_ms']:.1f} ms  peak RSS {eager['peak_rss_mb']:.0f} MB"
    )
    print(
        f"ratio ORT/PyTorch {r['ort_over_pytorch_step']:.2f} (target <= 0.6); ORT/fp32 floor {r['ort_over_fp32_floor']:.2f}"
        f" (floor {floor_ms:.1f} ms = {flop:.1f} GFLOP at {sgemm['gflops']:.0f} GFLOP/s; target <= 1.3)"
    )
    print(
        f"module {spec.module_bytes / 1e3:.1f} KB vs full model {full_bytes / 1e6:.1f} MB: 1/{1 / r['module_over_full_model_bytes']:.0f}"
        " (target <= 1/300)"
    )
    print(
        f"  with --wire-dtype float16: {2 * spec.module_numel / 1e3:.1f} KB per transfer, "
        f"1/{1 / r['module_fp16_wire_over_full_model_bytes']:.0f}"
    )
    print(
        f"peak RSS: one task {one['peak_rss_mb']:.0f} MB, two tasks {two['peak_rss_mb']:.0f} MB shared backbone, "
        f"{two_unshared['peak_rss_mb']:.0f} MB one backbone each"
    )
    print(
        f"length bucketing: ORT {ort['median_ms']:.1f} ms vs {ort_padded['median_ms']:.1f} ms padded "
        f"({r['ort_bucketed_over_padded_step']:.2f}x); PyTorch bucketed {eager_bucketed['median_ms']:.1f} ms; "
        f"ORT padded / PyTorch {r['ort_padded_over_pytorch_step']:.2f}, ORT / PyTorch bucketed "
        f"{r['ort_over_pytorch_bucketed_step']:.2f}"
    )
    if executorch is not None:
        print(
            f"ExecuTorch median {executorch['median_ms']:.1f} ms  p95 {executorch['p95_ms']:.1f} ms  peak RSS "
            f"{executorch['peak_rss_mb']:.0f} MB: {executorch['step_over_ort']:.2f}x ORT's step (target <= 2), "
            f"{executorch['step_over_ort_padded']:.2f}x ORT's padded to 32 tokens, "
            f"{executorch['peak_rss_over_ort']:.2f}x its RSS (target <= 1.5)"
        )
    print(f"export of one task (ONNX): {export_seconds:.1f} s; results in {args.out}")


if __name__ == "__main__":
    main()
