"""The GEMMs of the default case alone: ExecuTorch's kernels against fedyolo's kernel library and ONNX
Runtime's MLAS, the arms interleaved call by call in one process so that a loaded host slows them alike.

    python benchmarks/executorch_gemm.py [--repeats 30] [--threads 2] [--out benchmarks/results/executorch_gemm.json]

Shapes: MiniLM with batch 8, sequence 32 (M = 256 rows): the forward `linear(x, W)` (x·Wᵀ, W stored
[out, in]) and the backward `mm(dY, W)` of each frozen weight shape. Needs the `executorch` extra, g++
(the kernel library is built if missing) and onnx.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine

M = 256
SHAPES = [(384, 384), (384, 1536), (1536, 384)]  # (in, out) of MiniLM's linears


def et_program(kind: str, fedyolo: bool, tmp: Path) -> Path:
    """A one-op program: `linear(x, W)` or `mm(dY, W)`, on ExecuTorch's kernels or fedyolo's."""
    import torch
    from executorch.exir import EdgeCompileConfig, to_edge

    from fedyolo.export.executorch_kernels import use_fedyolo_kernels
    from fedyolo.export.executorch_rewrites import PRESERVED_OPS

    class Op(torch.nn.Module):
        def forward(self, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(a, w) if kind == "linear" else torch.mm(a, w)

    ep = torch.export.export(Op(), example_inputs[kind])
    if fedyolo:
        use_fedyolo_kernels(ep.graph_module)
    edge = to_edge(ep, compile_config=EdgeCompileConfig(preserve_ops=list(PRESERVED_OPS)))
    path = tmp / f"{kind}_{'fedyolo' if fedyolo else 'executorch'}_{len(list(tmp.iterdir()))}.pte"
    path.write_bytes(edge.to_executorch().buffer)
    return path


example_inputs: dict[str, tuple[Any, ...]] = {}


def ort_session(w_t: np.ndarray, threads: int) -> Any:
    """ONNX Runtime's MatMul(x, Wᵀ) with Wᵀ an initializer (as the ORT training graph stores it)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, n = w_t.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, n])],
        [numpy_helper.from_array(w_t, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/executorch_gemm.json")
    args = parser.parse_args()
    import torch
    from executorch.extension.pybindings._C import _load_for_executorch

    from fedyolo.runtime import et_kernels

    if not et_kernels.library_path().is_file():
        et_kernels.build()
    et_kernels.load(args.threads)
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for k, n in SHAPES:
            w = rng.standard_normal((n, k), dtype=np.float32)
            x = rng.standard_normal((M, k), dtype=np.float32)
            dy = rng.standard_normal((M, n), dtype=np.float32)
            for kind, a, ref in (("linear", x, x @ w.T), ("mm", dy, dy @ w)):
                inputs = (torch.from_numpy(a), torch.from_numpy(w))
                example_inputs[kind] = inputs
                arms: dict[str, Any] = {
                    name: _load_for_executorch(str(et_program(kind, name == "fedyolo", tmp)))
                    for name in ("executorch", "fedyolo")
                }
                # ORT: linear is x·Wᵀ with Wᵀ stored; the backward mm(dY, W) reads W as it is
                session = ort_session(np.ascontiguousarray(w.T) if kind == "linear" else w, args.threads)
                errors = {
                    name: float(np.abs(p.forward(inputs)[0].numpy() - ref).max()) for name, p in arms.items()
                }
                calls = {
                    name: (lambda p=p, i=inputs: p.run_method("forward", i, clone_outputs=False))
                    for name, p in arms.items()
                }
                calls["ort_mlas"] = lambda s=session, a=a: s.run(None, {"x": a})
                times: dict[str, list[float]] = {name: [] for name in calls}
                for _ in range(args.repeats):
                    for name, call in calls.items():
                        t = time.perf_counter()
                        call()
                        times[name].append(time.perf_counter() - t)
                gflop = 2 * M * k * n / 1e9
                row = {
                    "op": kind,
                    "shape": f"{M}x{a.shape[1]} . {a.shape[1]}x{ref.shape[1]}",
                    "max_abs_error_vs_numpy": errors,
                    **{
                        name: {
                            "median_ms": float(np.median(v) * 1e3),
                            "p95_ms": float(np.percentile(v, 95) * 1e3),
                            "min_ms": float(np.min(v) * 1e3),
                            "gflops_at_median": gflop / float(np.median(v)),
                        }
                        for name, v in times.items()
                    },
                }
                rows.append(row)
                print(
                    f"{kind:6s} {row['shape']:22s} "
                    + "  ".join(f"{name} {row[name]['median_ms']:.2f} ms (min {row[name]['min_ms']:.2f}, {row[name]['gflops_at_median']:.0f} GFLOP/s)" for name in times),
                    flush=True,
                )  # fmt: skip
    from importlib.metadata import version

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "versions": {p: version(p) for p in ("executorch", "torch", "onnxruntime-training", "numpy")},
        "threads": args.threads,
        "blas": et_kernels.blas_path(),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
