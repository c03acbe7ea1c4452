"""Where a browser training step's time goes: every operator of the page's training graph timed in
onnxruntime-web's training wasm (the page's build, in Debian's chromium) beside native ONNX Runtime.

onnxruntime-web's wasm build has no file system, so its profiler cannot write (`enableProfiling` is
accepted, the file goes nowhere) and its wasm has no name section (a CPU profile shows only
`wasm-function[N]`). So: native ORT's profiler gives each node's input shapes and in-step time for one
training step of the browser form (frozen weights as inputs, as the page has them) and of the bundle's
own form (frozen weights as initializers, as `OrtTrainer` has them); then each profiled node runs alone,
as a one-node graph on those shapes, 1 thread, graph optimisations off, in both runtimes: op type,
native ms, wasm ms, ratio. Plus an n x n MatMul in both: the GEMM rate that bounds the step.

    python benchmarks/web_ops.py --bundle BUNDLE [--seq 32] [--out benchmarks/results/web_ops.json]

Needs node and `make web` (android_demo/web/node_modules).
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine
from step import batches, versions

from fedyolo.export.web_form import WEB_CHECKPOINT, WEB_PARAMS, WEB_TRAINING_MODEL
from fedyolo.runtime.bundle import Bundle, open_bundle
from fedyolo.runtime.manifest import CHECKPOINT, MODULE_WEIGHTS, TRAINING_MODEL
from fedyolo.runtime.ort_import import load_ort
from fedyolo.runtime.ort_trainer import SharedBackbone, cpu_device

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float": TensorProto.FLOAT, "int64": TensorProto.INT64, "bool": TensorProto.BOOL,
          "int32": TensorProto.INT32}  # fmt: skip
STEPS = 4  # profiled steps; the first is warm-up
REPEATS = 7  # runs of each one-node graph; the median counts
GEMM_N = 512


def web_buffer(bundle: Bundle, task_dir: Path) -> np.ndarray:
    """Every parameter in web.json's order, as the page assembles it (backbone.bin slices, module)."""
    from safetensors.numpy import load_file

    layout = json.loads((task_dir / WEB_PARAMS).read_text())
    backbone = np.fromfile(bundle.backbone_path, dtype=np.uint8)
    module = load_file(str(task_dir / MODULE_WEIGHTS))
    return np.concatenate(
        [
            backbone[p["offset"] : p["offset"] + p["length"]].view(np.float32)
            if p["from"] == "backbone"
            else module[p["name"]].ravel()
            for p in layout["params"]
        ]
    )


def profile_steps(bundle: Bundle, task: str, batch: dict[str, np.ndarray], web: bool) -> dict[str, Any]:
    """Native ORT's profile of STEPS training steps (1 thread): per node, median in-step ms and shapes."""
    C = load_ort()
    task_dir = bundle.task_dir(task)
    with tempfile.TemporaryDirectory(prefix="fedyolo-webops-") as tmp:
        backbone = SharedBackbone(bundle)  # outlives the session: it owns the mapped weights
        options = C.SessionOptions() if web else backbone.session_options(1)
        options.intra_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "step")
        state = C.load_checkpoint(str(task_dir / (WEB_CHECKPOINT if web else CHECKPOINT)))
        graph = str(task_dir / (WEB_TRAINING_MODEL if web else TRAINING_MODEL))
        module = C.Module(graph, state, None, cpu_device(), options)
        if web:
            buffer = web_buffer(bundle, task_dir)
            module.copy_buffer_to_parameters(C.OrtValue.ortvalue_from_numpy(buffer, cpu_device()), False)
        feed = [np.ascontiguousarray(batch[n], np.int64) for n in module.input_names(True)]
        walls = []
        for _ in range(STEPS):
            start = time.perf_counter()
            module.train_step(feed, C.OrtValueVector())
            walls.append(time.perf_counter() - start)
        del module, state, backbone  # ORT writes the profile when the session is destroyed
        gc.collect()
        events: list[dict[str, Any]] = []
        for path in glob.glob(options.profile_file_prefix + "*.json"):
            events += json.loads(Path(path).read_text())
    runs: dict[str, list[float]] = defaultdict(list)
    nodes: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        runs[name].append(float(e["dur"]) / 1e3)
        args = e["args"]
        nodes[name] = {
            "op": args["op_name"],
            "inputs": [next(iter(s.items())) for s in args["input_type_shape"]],
        }
    for name, times in runs.items():
        nodes[name]["ms"] = float(np.median(times[1:] if len(times) > 1 else times))
    return {"nodes": nodes, "step_ms": float(np.median(walls[1:]) * 1e3)}


def non_float_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every integer or boolean tensor of one forward/backward run (shapes, indices, masks), natively."""
    C = load_ort()
    from onnxruntime import InferenceSession

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for out in node.output:
            if out and out not in known:
                m.graph.output.append(helper.make_empty_tensor_value_info(out))
                known.add(out)
    options = C.SessionOptions()
    options.graph_optimization_level = C.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return {n: v for n, v in zip(names, session.run(names, feeds), strict=True) if v.dtype != np.float32}


def one_node_models(
    bundle: Bundle, task: str, batch: dict[str, np.ndarray], nodes: dict[str, Any], out: Path
) -> list[dict[str, Any]]:
    """Write a one-node graph and its feeds for every profiled node of the browser form's training graph."""
    task_dir = bundle.task_dir(task)
    model = onnx.load(str(task_dir / WEB_TRAINING_MODEL))
    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    for i in graph.input:
        dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
        if i.name in batch:
            feeds[i.name] = np.ascontiguousarray(batch[i.name], np.int64)
        elif i.name == "lazy_reset_grad":
            feeds[i.name] = np.array([True])
        else:
            feeds[i.name] = (rng.standard_normal(dims) * 0.05).astype(np.float32)
    values = non_float_values(model, feeds)
    jobs: list[dict[str, Any]] = []
    for k, node in enumerate(graph.node):
        prof = nodes.get(node.name)
        if prof is None:
            continue
        shapes = iter(prof["inputs"])
        inputs, inits, blobs = [], [], []
        for name in node.input:
            if not name:
                continue
            dtype, shape = next(shapes)
            if name in consts:
                inits.append(consts[name])
                continue
            value = values.get(name)
            if value is None or list(value.shape) != shape:
                value = (
                    (rng.standard_normal(shape) * 0.05).astype(np.float32)
                    if dtype == "float"
                    else np.zeros(shape, {"int64": np.int64, "bool": np.bool_, "int32": np.int32}[dtype])
                )
            if value.dtype == np.float32:
                # Resident, as weights and activations are inside a step: not copied into wasm per run.
                inits.append(numpy_helper.from_array(value, name))
                continue
            inputs.append(helper.make_tensor_value_info(name, DTYPES[dtype], shape))
            blobs.append(
                {
                    "name": name,
                    "dtype": str(value.dtype),
                    "dims": list(value.shape),
                    "file": f"{k}_{len(blobs)}.bin",
                }
            )
            value.tofile(out / blobs[-1]["file"])
        # The graph returns only each output's shape: the node still runs, and no run pays for copying
        # its outputs back to JS or numpy (which would swamp elementwise ops).
        shapes = [helper.make_node("Shape", [o], [f"{o}.shape"]) for o in node.output if o]
        outputs = [helper.make_tensor_value_info(n.output[0], TensorProto.INT64, None) for n in shapes]
        one = helper.make_model(
            helper.make_graph([node, *shapes], "one", inputs, outputs, inits),
            opset_imports=model.opset_import,
        )
        one.ir_version = model.ir_version
        (out / f"{k}.onnx").write_bytes(one.SerializeToString())
        jobs.append(
            {
                "node": node.name,
                "op": prof["op"],
                "model": f"{k}.onnx",
                "feeds": blobs,
                "outputs": [o for o in node.output if o],
            }
        )
    return jobs


def reference_jobs(out: Path) -> list[dict[str, Any]]:
    """An n x n MatMul (each runtime's GEMM rate on one thread) and an Identity on one float (a call's cost)."""
    one = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    ident = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [one],
        [helper.make_empty_tensor_value_info("y")],
    )
    (out / "identity.onnx").write_bytes(
        helper.make_model(
            ident, opset_imports=[helper.make_opsetid("", 15)], ir_version=8
        ).SerializeToString()
    )
    np.ones(1, np.float32).tofile(out / "identity_x.bin")
    identity = {"node": "identity", "op": "Identity [1]", "model": "identity.onnx", "outputs": ["y"],
                "feeds": [{"name": "x", "dtype": "float32", "dims": [1], "file": "identity_x.bin"}]}  # fmt: skip
    vi = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [GEMM_N, GEMM_N]) for x in "ab"]
    nodes = [helper.make_node("MatMul", ["a", "b"], ["c"]), helper.make_node("Shape", ["c"], ["s"])]
    graph = helper.make_graph(nodes, "gemm", vi, [helper.make_tensor_value_info("s", TensorProto.INT64, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    (out / "gemm.onnx").write_bytes(model.SerializeToString())
    blobs = []
    for name in "ab":
        np.random.default_rng(1).standard_normal((GEMM_N, GEMM_N)).astype(np.float32).tofile(
            out / f"gemm_{name}.bin"
        )
        blobs.append({"name": name, "dtype": "float32", "dims": [GEMM_N, GEMM_N], "file": f"gemm_{name}.bin"})
    gemm = {
        "node": "gemm",
        "op": f"MatMul {GEMM_N}x{GEMM_N}",
        "model": "gemm.onnx",
        "feeds": blobs,
        "outputs": ["c"],
    }
    return [gemm, identity]


def time_native(jobs: list[dict[str, Any]], out: Path) -> dict[str, float]:
    """Median ms of each one-node graph in native ORT: 1 thread, no graph optimisation, as in node."""
    C = load_ort()
    from onnxruntime import InferenceSession

    options = C.SessionOptions()
    options.graph_optimization_level = C.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    # In the page the weights are inputs, never prepacked; here they are initializers: no prepacking.
    options.add_session_config_entry("session.disable_prepacking", "1")
    times: dict[str, float] = {}
    for job in jobs:
        try:
            session = InferenceSession(str(out / job["model"]), options, providers=["CPUExecutionProvider"])
            feed = {
                f["name"]: np.fromfile(out / f["file"], f["dtype"]).reshape(f["dims"]) for f in job["feeds"]
            }
            session.run(None, feed)
            runs = []
            for _ in range(REPEATS):
                start = time.perf_counter()
                session.run(None, feed)
                runs.append(time.perf_counter() - start)
            times[job["node"]] = float(np.median(runs) * 1e3)
        except Exception as e:  # a node that cannot run alone (data-dependent input) is reported, not timed
            print(
                f"native: {job['node']} ({job['op']}) skipped: {str(e).splitlines()[0][:120]}",
                file=sys.stderr,
            )
    return times


def time_wasm(jobs: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """The same one-node graphs in onnxruntime-web's training wasm in chromium (benchmarks/web_ops.mjs)."""
    job = {"dir": str(out), "chromium": shutil.which("chromium"), "repeats": REPEATS, "jobs": jobs}
    done = subprocess.run(["node", str(ROOT / "benchmarks" / "web_ops.mjs")], input=json.dumps(job),
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the wasm run failed:\n{done.stderr[-3000:]}")
    sys.stderr.write(done.stderr[-3000:])
    return dict(json.loads(done.stdout))


def table(
    jobs: list[dict[str, Any]], prof: dict[str, Any], native: dict[str, float], wasm: dict[str, float]
) -> list[dict[str, Any]]:
    """Per op type: in-step native ms (the profile), one-node native and wasm ms, wasm / native."""
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for job in jobs:
        name = job["node"]
        if name not in native or name not in wasm or name not in prof:
            continue
        row = rows[job["op"]]
        row["nodes"] += 1
        row["in_step_native_ms"] += prof[name]["ms"]
        row["native_ms"] += native[name]
        row["wasm_ms"] += wasm[name]
    out = [
        {
            "op": op,
            **{k: round(v, 3) for k, v in r.items()},
            "ratio": round(r["wasm_ms"] / max(r["native_ms"], 1e-6), 2),
        }
        for op, r in rows.items()
    ]
    return sorted(out, key=lambda r: -r["wasm_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bundle", required=True, help="a bundle with task topics (lora) and its browser form"
    )
    parser.add_argument("--seq", type=int, default=32, help="sequence length of the profiled batch")
    parser.add_argument("--out", default="benchmarks/results/web_ops.json")
    args = parser.parse_args()
    load_before = list(os.getloadavg())
    bundle = open_bundle(args.bundle, tasks=["topics"])
    batch = {
        k: v[:, : args.seq] if v.ndim == 2 else v for k, v in batches(args.bundle, "topics", 1)[0].items()
    }
    web = profile_steps(bundle, "topics", batch, web=True)
    own = profile_steps(bundle, "topics", batch, web=False)
    with tempfile.TemporaryDirectory(prefix="fedyolo-webops-") as tmp:
        out = Path(tmp)
        jobs = one_node_models(bundle, "topics", batch, web["nodes"], out)
        jobs += reference_jobs(out)
        native = time_native(jobs, out)
        wasm = time_wasm(jobs, out)
    rows = table(jobs, web["nodes"], native, wasm["ms"])
    gflop = 2 * GEMM_N**3 / 1e9
    covered = {k: sum(r[k] for r in rows) for k in ("in_step_native_ms", "native_ms", "wasm_ms")}
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(
            load_before,
            node=subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
            browser=wasm["userAgent"],
        ),
        "versions": {**versions(), "onnxruntime-web": "1.19.2"},
        "case": {"batch": int(batch["input_ids"].shape[0]), "seq": int(batch["input_ids"].shape[1]), "threads": 1},
        "native_step_ms": {"browser_form": web["step_ms"], "bundle_form": own["step_ms"]},
        "native_kernel_ms": {
            "browser_form": sum(n["ms"] for n in web["nodes"].values()),
            "bundle_form": sum(n["ms"] for n in own["nodes"].values()),
        },
        "profiled_nodes": len(web["nodes"]),
        "timed_alone": len(rows and [j for j in jobs if j["node"] in native and j["node"] in wasm["ms"]]),
        "covered_ms": covered,
        "call_overhead_ms": {"native": native.get("identity"), "wasm": wasm["overhead_ms"]},
        "gemm_gflops": {"native": gflop / (native["gemm"] / 1e3), "wasm": gflop / (wasm["ms"]["gemm"] / 1e3), "n": GEMM_N},
        "by_op": [r for r in rows if r["op"] not in (f"MatMul {GEMM_N}x{GEMM_N}", "Identity [1]")],
        "top_nodes": sorted(
            [{"node": j["node"], "op": j["op"], "native_ms": native[j["node"]], "wasm_ms": wasm["ms"][j["node"]]}
             for j in jobs if j["node"] in native and j["node"] in wasm["ms"] and j["node"] not in ("gemm", "identity")],
            key=lambda r: -r["wasm_ms"],
        )[:15],
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'op':28s} {'nodes':>5s} {'in-step':>8s} {'native':>8s} {'wasm':>8s} {'ratio':>6s}")
    for r in result["by_op"]:
        print(
            f"{r['op']:28s} {int(r['nodes']):5d} {r['in_step_native_ms']:8.2f} {r['native_ms']:8.2f} {r['wasm_ms']:8.2f} {r['ratio']:6.2f}"
        )
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "native_step_ms",
                    "native_kernel_ms",
                    "covered_ms",
                    "gemm_gflops",
                    "call_overhead_ms",
                    "machine",
                )
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
