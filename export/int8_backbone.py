"""An int8 frozen backbone: the linear weights and the word embeddings stored as int8, the module in fp32.

Why int8 and which kernel (measured, benchmarks/README.md "reduced-precision backbone"): ORT 1.19's
`DynamicQuantizeMatMul` (A quantized per tensor to uint8 on the fly, B int8 per output column) ran the
MiniLM GEMM shapes 1.7–1.9× faster than fp32 `MatMul` on one AVX2 core, where `MatMulNBits` (int4) was
no faster than fp32. Stock `DequantizeLinear` + `MatMul` pays the dequantization every step instead.

Layout in backbone.bin, for a linear weight stored as `NAME` = W [in, out] in the fp32 bundle:
- `NAME`: int8 [in, out], symmetric per output column, values in [-63, 63]: 7 bits, because MLAS's AVX2
  u8·s8 kernel sums pairs of products in int16 (`vpmaddubsw`) and 255·127·2 overflows it (measured: 16%
  error at 8 bits, 1% at 7).
- `NAME.T8`: the same int8 values as [out, in]: the backward's operand (dX = dY · Wᵀ).
- `NAME.scale`: fp32 [out], W ≈ NAME · scale.
The forward `MatMul(X, NAME)` becomes `DynamicQuantizeMatMul(X, NAME, NAME.scale)`; the input gradient
`FusedMatMul(dY, NAME, transB=1)` becomes `DynamicQuantizeMatMul(dY · scale, NAME.T8, 1)`: the exact
gradient of the int8 forward, up to the dynamic quantization of dY · scale. Word embeddings are int8
per row (`NAME`, `NAME.scale` [vocab]) and dequantized after the `Gather`: only the looked-up rows.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fedyolo.export.backbone_store import TRANSPOSED_SUFFIX
from fedyolo.runtime.errors import FedyoloError

BACKBONE_DTYPES = ("float32", "int8")
SCALE_SUFFIX = ".scale"
BACKWARD_SUFFIX = ".T8"
LINEAR_LEVELS = 63  # 7 bits: see the module docstring
EMBEDDING_LEVELS = 127  # no GEMM reads the embeddings: full 8 bits
_ONE = "fedyolo.int8.one"


def _symmetric(w: np.ndarray, levels: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and fp32 scales with w ≈ q * scale, one scale per slice along `axis`."""
    amax = np.abs(w).max(axis=axis)
    scale = np.where(amax > 0, amax / levels, 1.0).astype(np.float32)
    q = np.rint(w / np.expand_dims(scale, axis)).clip(-levels, levels).astype(np.int8)
    return q, scale


def is_word_embedding(name: str) -> bool:
    return name.endswith("word_embeddings.weight")


def quantize_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The int8 backbone.bin's arrays from the fp32 ones (names as `plan_layout` stores them)."""
    out: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        if name.endswith(TRANSPOSED_SUFFIX) and a.ndim == 2:  # a linear weight, [in, out]
            q, scale = _symmetric(a, LINEAR_LEVELS, axis=0)
            out[name], out[name + BACKWARD_SUFFIX], out[name + SCALE_SUFFIX] = (
                q,
                np.ascontiguousarray(q.T),
                scale,
            )
        elif is_word_embedding(name) and a.ndim == 2:
            out[name], out[name + SCALE_SUFFIX] = _symmetric(a, EMBEDDING_LEVELS, axis=1)
        else:
            out[name] = a
    return out


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else float(helper.get_attribute_value(found))


def _is_input_gradient(node: onnx.NodeProto) -> bool:
    """FusedMatMul(dY, W, transB=1): dY · Wᵀ and nothing else (no alpha, no other transposes)."""
    flags = {k: _attr(node, k, 0.0) for k in ("transA", "transBatchA", "transBatchB")}
    return (
        node.op_type == "FusedMatMul"
        and _attr(node, "transB", 0.0) == 1.0
        and not any(flags.values())
        and (_attr(node, "alpha", 1.0) == 1.0)
    )


def rewrite_graph(graph: onnx.GraphProto, dtypes: dict[str, str]) -> dict[str, int]:
    """Point every reader of an int8 backbone tensor at an int8 kernel; count the rewrites by kind.

    dtypes: stored name -> dtype of backbone.bin's tensors. A reader no int8 kernel covers gets the
    tensor dequantized to fp32 each run (correct, slower): counted as "dequantized".
    """
    int8 = {n for n, d in dtypes.items() if d == "int8" and not n.endswith(BACKWARD_SUFFIX)}
    counts = {"forward": 0, "input_gradient": 0, "embedding": 0, "dequantized": 0}
    nodes: list[onnx.NodeProto] = []
    dequantized: dict[str, str] = {}

    def dequantize(name: str) -> str:
        if name not in dequantized:
            out = f"{name}/fp32"
            axis_scale = name + SCALE_SUFFIX
            if is_word_embedding(name):  # per row: scale [vocab] -> [vocab, 1]
                nodes.append(
                    helper.make_node("Unsqueeze", [axis_scale, f"{name}/axes"], [f"{axis_scale}/col"])
                )
                graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), f"{name}/axes"))
                axis_scale = f"{axis_scale}/col"
            nodes.append(helper.make_node("Cast", [name], [f"{name}/f"], to=TensorProto.FLOAT))
            nodes.append(helper.make_node("Mul", [f"{name}/f", axis_scale], [out]))
            dequantized[name] = out
            counts["dequantized"] += 1
        return dequantized[name]

    for node in graph.node:
        weight = node.input[1] if len(node.input) > 1 and node.input[1] in int8 else None
        table = node.input[0] if node.input and node.input[0] in int8 else None
        tag = node.name or node.output[0]
        if weight and node.op_type == "MatMul" and not is_word_embedding(weight):
            nodes.append(
                helper.make_node(
                    "DynamicQuantizeMatMul", [node.input[0], weight, weight + SCALE_SUFFIX], list(node.output),
                    name=f"{tag}/int8", domain="com.microsoft",
                )
            )  # fmt: skip
            counts["forward"] += 1
        elif weight and _is_input_gradient(node) and not is_word_embedding(weight):
            scaled = f"{tag}/dY_scaled"
            nodes.append(helper.make_node("Mul", [node.input[0], weight + SCALE_SUFFIX], [scaled]))
            nodes.append(
                helper.make_node(
                    "DynamicQuantizeMatMul", [scaled, weight + BACKWARD_SUFFIX, _ONE], list(node.output),
                    name=f"{tag}/int8", domain="com.microsoft",
                )
            )  # fmt: skip
            counts["input_gradient"] += 1
        elif (
            table and node.op_type == "Gather" and is_word_embedding(table) and _attr(node, "axis", 0.0) == 0
        ):
            rows, row_scale = f"{tag}/rows_int8", f"{tag}/row_scale"
            nodes.append(helper.make_node("Gather", [table, node.input[1]], [rows], axis=0))
            nodes.append(
                helper.make_node("Gather", [table + SCALE_SUFFIX, node.input[1]], [row_scale], axis=0)
            )
            nodes.append(
                helper.make_node("Unsqueeze", [row_scale, f"{table}/axes_last"], [f"{row_scale}/col"])
            )
            nodes.append(helper.make_node("Cast", [rows], [f"{rows}/f"], to=TensorProto.FLOAT))
            nodes.append(helper.make_node("Mul", [f"{rows}/f", f"{row_scale}/col"], list(node.output)))
            if not any(i.name == f"{table}/axes_last" for i in graph.initializer):
                graph.initializer.append(
                    numpy_helper.from_array(np.array([-1], np.int64), f"{table}/axes_last")
                )
            counts["embedding"] += 1
        else:
            for i, name in enumerate(node.input):
                if name in int8:
                    node.input[i] = dequantize(name)
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    if counts["input_gradient"]:
        graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), _ONE))
    return counts


def add_ms_domain(model: onnx.ModelProto) -> None:
    """DynamicQuantizeMatMul lives in ORT's com.microsoft domain, version 1."""
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def check_backbone_dtype(dtype: str) -> None:
    if dtype not in BACKBONE_DTYPES:
        raise FedyoloError(f"unknown backbone dtype {dtype!r}; choose one of: {', '.join(BACKBONE_DTYPES)}")
