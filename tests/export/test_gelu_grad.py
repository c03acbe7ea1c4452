"""The GELU backward as stock ops (export/gelu_grad.py): the same numbers as ORT's fused kernel, and
what every exported training graph runs (the parity tests check the whole step against PyTorch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fedyolo.export.gelu_grad import decompose_gelu_grad
from fedyolo.export.pipeline import export_onnx
from fedyolo.runtime.ort_import import load_ort
from tests.export.test_parity import LABELS

SHAPE = [4, 8, 48]


def run(graph: onnx.GraphProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    load_ort()
    from onnxruntime import InferenceSession

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 9
    return np.asarray(
        InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    )


def test_the_decomposed_gelu_backward_equals_the_fused_kernel() -> None:
    # Prepare: one BiasGeluGrad_dX and one GeluGrad, inputs spanning the GELU's curved range
    rng = np.random.default_rng(0)
    feeds = {
        "dY": rng.standard_normal(SHAPE).astype(np.float32),
        "X": (3 * rng.standard_normal(SHAPE)).astype(np.float32),
    }
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, SHAPE) for n in ("dY", "X", "out")]
    bias = numpy_helper.from_array(rng.standard_normal(SHAPE[-1]).astype(np.float32), "bias")
    for op, inputs in (("BiasGeluGrad_dX", ["dY", "X", "bias"]), ("GeluGrad", ["dY", "X"])):
        node = helper.make_node(op, inputs, ["out"], domain="com.microsoft")
        fused = helper.make_graph([node], "g", values[:2], values[2:], [bias])
        rewritten = helper.make_graph([node], "g", values[:2], values[2:], [bias])

        # Execute
        replaced = decompose_gelu_grad(rewritten)

        # Assert
        assert replaced == 1 and all(n.domain == "" for n in rewritten.node)
        np.testing.assert_allclose(run(rewritten, feeds), run(fused, feeds), rtol=1e-5, atol=1e-6, err_msg=op)


def test_exported_training_graphs_have_no_single_threaded_gelu_backward(tmp_path: Path) -> None:
    export_onnx(tmp_path / "b", "t", LABELS, backbone="tiny-bert", show_progress=False)
    graph = onnx.load(
        str(tmp_path / "b" / "tasks" / "t" / "training_model.onnx"), load_external_data=False
    ).graph
    ops = {n.op_type for n in graph.node}
    assert "Erf" in ops and not ops & {"BiasGeluGrad_dX", "GeluGrad"}
