"""The exact GELU's backward as stock elementwise ops, which ORT runs on every core.

ORT's training graph computes the GELU's input gradient with one fused kernel (`BiasGeluGrad_dX`, or
`GeluGrad` without a bias) that runs on ONE thread: on 8 × 32 × 1536 it took 2.05 ms with 1 thread and
with 2, where the same formula as Add/Mul/Erf/Exp nodes took 1.0 ms on 2 threads (MLAS's vectorized erf
and exp, each node parallel; largest difference 9.5e-7, 2e-7 relative; benchmarks/README.md). MiniLM's
step has six of them. The math is unchanged:

    x = X + bias;  dX = dY · (Φ(x) + x·φ(x)),  Φ(x) = ½(1 + erf(x/√2)),  φ(x) = exp(-x²/2)/√(2π)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

_FUSED = {"BiasGeluGrad_dX", "GeluGrad"}
_CONSTANTS = {
    "fedyolo.gelu.rsqrt2": 1 / np.sqrt(2.0),
    "fedyolo.gelu.one": 1.0,
    "fedyolo.gelu.half": 0.5,
    "fedyolo.gelu.rsqrt2pi": 1 / np.sqrt(2 * np.pi),
}


def _decomposed(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    tag = f"{node.name or node.output[0]}/gelu_grad"
    dy, x = node.input[0], node.input[1]
    nodes = []
    if node.op_type == "BiasGeluGrad_dX":
        nodes.append(helper.make_node("Add", [x, node.input[2]], [f"{tag}/x"]))
        x = f"{tag}/x"
    ops = [
        ("Mul", [x, "fedyolo.gelu.rsqrt2"], "xs"),  # x/√2
        ("Erf", ["xs"], "erf"),
        ("Add", ["erf", "fedyolo.gelu.one"], "erf1"),
        ("Mul", ["erf1", "fedyolo.gelu.half"], "cdf"),  # Φ(x)
        ("Mul", ["xs", "xs"], "sq"),  # x²/2
        ("Neg", ["sq"], "nsq"),
        ("Exp", ["nsq"], "exp"),
        ("Mul", ["exp", x], "xexp"),
        ("Mul", ["xexp", "fedyolo.gelu.rsqrt2pi"], "xpdf"),  # x·φ(x)
        ("Add", ["cdf", "xpdf"], "slope"),
    ]
    local = {name for _, _, name in ops}
    for op, inputs, out in ops:
        named = [f"{tag}/{i}" if i in local else i for i in inputs]
        nodes.append(helper.make_node(op, named, [f"{tag}/{out}"]))
    nodes.append(helper.make_node("Mul", [dy, f"{tag}/slope"], [node.output[0]]))
    return nodes


def decompose_gelu_grad(graph: onnx.GraphProto) -> int:
    """Replace every fused GELU backward node (com.microsoft) in `graph`; the number replaced."""
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        if node.op_type in _FUSED and node.domain == "com.microsoft":
            nodes.extend(_decomposed(node))
            count += 1
        else:
            nodes.append(node)
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        known = {i.name for i in graph.initializer}
        graph.initializer.extend(
            numpy_helper.from_array(np.array(v, np.float32), name)
            for name, v in _CONSTANTS.items()
            if name not in known
        )
    return count
