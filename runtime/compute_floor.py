"""The compute floor of a step: its matrix-multiply FLOPs ÷ the best fp32 GEMM rate of this machine.

FLOPs are counted from the shapes the step really ran with: ONNX Runtime's profiler records every
node's input and output shapes, and a step's MatMul / Gemm / FusedMatMul (/ DynamicQuantizeMatMul) nodes (forward and backward of
the generated training graph) are summed. The GEMM rate is measured with an ORT MatMul session (MLAS,
the kernels the step runs on), best of many repeats, in the same run as the step it is compared with.
"""

from __future__ import annotations

import gc
import glob
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.manifest import CHECKPOINT, TRAINING_MODEL
from fedyolo.runtime.ort_import import load_ort
from fedyolo.runtime.ort_trainer import SharedBackbone, cpu_device
from fedyolo.runtime.trainer import Batch

# DynamicQuantizeMatMul: the int8 backbone's GEMMs (export/int8_backbone.py), counted at the same FLOPs
# against the fp32 rate: an int8 step below 1x the floor is faster than fp32 hardware can be.
GEMM_OPS = ("MatMul", "Gemm", "FusedMatMul", "DynamicQuantizeMatMul")


@dataclass(frozen=True)
class StepFlops:
    """Matrix-multiply work of one step, and the share of kernel time it took."""

    flops: float
    gemm_nodes: int
    gemm_ms: float
    kernel_ms: float


def matmul_flops(a: list[int], out: list[int]) -> float:
    """2·M·K·N (batched) of a matmul from its first input's and its output's shapes.

    K is the dim of A's last two that is not the output's rows (transposed or not); if both match,
    they are equal and either is K.
    """
    if not out:
        return 0.0
    if len(a) == 1:
        k = a[0]
    else:
        rows = out[-2] if len(out) >= 2 else 1
        k = a[-1] if a[-2] == rows else a[-2]
    return 2.0 * float(np.prod(out)) * k


def flops_from_profile(events: list[dict[str, Any]]) -> StepFlops:
    """Sum the GEMM work of ORT profiler events (one step)."""
    flops, nodes, gemm_us, total_us = 0.0, 0, 0.0, 0.0
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        total_us += float(e.get("dur", 0))
        if args.get("op_name") not in GEMM_OPS:
            continue
        shapes = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
        out = [next(iter(s.values())) for s in args.get("output_type_shape", [])]
        if shapes and out:
            flops += matmul_flops(shapes[0], out[0])
            nodes += 1
            gemm_us += float(e.get("dur", 0))
    return StepFlops(flops, nodes, gemm_us / 1e3, total_us / 1e3)


def step_flops(bundle: Bundle, task_id: str, batch: Batch, threads: int = 0) -> StepFlops:
    """Run one ORT training step with the profiler on and count its GEMM FLOPs.

    The training graph alone gets a session here: two sessions sharing one profile prefix, started in
    the same second, write the same file.
    """
    C = load_ort()
    task_dir = bundle.task_dir(task_id)
    with tempfile.TemporaryDirectory(prefix="fedyolo-prof-") as tmp:
        prefix = os.path.join(tmp, "step")
        backbone = SharedBackbone(bundle)  # must outlive the session: it owns the mapped weights
        options = backbone.session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = prefix
        state = C.load_checkpoint(str(task_dir / CHECKPOINT))
        module = C.Module(str(task_dir / TRAINING_MODEL), state, None, cpu_device(), options)
        names = list(module.input_names(True))
        feed = [
            np.ascontiguousarray(batch[n], np.float32 if n == "pixel_values" else np.int64) for n in names
        ]
        module.train_step(feed, C.OrtValueVector())
        # ORT writes a session's profile when the session is destroyed; users before what they use
        del module, state, backbone
        gc.collect()
        events: list[dict[str, Any]] = []
        for path in glob.glob(prefix + "*.json"):
            with open(path) as f:
                events += json.load(f)
    return flops_from_profile(events)


def _matmul_model(n: int) -> bytes:
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8  # ORT 1.19 reads up to IR 10; 8 is what opset 15 needs
    return bytes(model.SerializeToString())


def best_gemm_rate(threads: int = 0, n: int = 1024, repeats: int = 20, seconds: float = 3.0) -> float:
    """Best fp32 GFLOP/s of an n×n ORT MatMul (MLAS) over `repeats` runs (fewer if `seconds` runs out)."""
    C = load_ort()
    options = C.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    from onnxruntime import InferenceSession

    session = InferenceSession(_matmul_model(n), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"a": rng.standard_normal((n, n), np.float32), "b": rng.standard_normal((n, n), np.float32)}
    session.run(None, feed)  # warm-up: thread pool and packing
    best = float("inf")
    deadline = time.perf_counter() + seconds
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return 2.0 * n**3 / best / 1e9
