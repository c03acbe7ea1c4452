"""Module weights on the wire: fp16 when the manifest says so, half the bytes, float32 again on arrival."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedyolo.export.pipeline import export_onnx
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.ort_trainer import OrtTrainer
from fedyolo.runtime.wire import decode_module, encode_module


def test_float16_wire_halves_the_bytes_and_round_trips(tmp_path: Path) -> None:
    # Prepare
    export_onnx(tmp_path / "b", "t", ["a", "b"], backbone="tiny-bert", module="lora", wire_dtype="float16",
                show_progress=False)  # fmt: skip
    bundle = open_bundle(tmp_path / "b")
    task = bundle.task("t")
    weights = OrtTrainer(bundle, "t").get_module()

    # Execute
    body = encode_module(weights, task)
    back = decode_module(body, task)

    # Assert
    assert task.wire_dtype == "float16"
    assert task.wire_bytes == task.module_bytes // 2
    header = 8 + int.from_bytes(body[:8], "little")  # safetensors: u64 header length, JSON header, data
    assert len(body) - header == task.wire_bytes
    for name, value in weights.items():
        assert back[name].dtype == np.float32
        np.testing.assert_allclose(back[name], value, rtol=1e-3, atol=1e-4)
