"""Module weights on the wire: fp16 when the manifest says so, half the bytes, float32 again on arrival."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from fedyolo.export.pipeline import export_onnx
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.errors import ModuleWeightsError
from fedyolo.runtime.ort_trainer import OrtTrainer
from fedyolo.runtime.wire import all_finite, decode_module, encode_module, module_views
from tests.synthetic import ADAPTER_MODULE, build_bundle


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


def test_module_views_read_back_a_stored_body_without_copying(tmp_path: Path) -> None:
    # Prepare: the synthetic bundle's task, its module on the wire as float32 and as float16
    task = open_bundle(build_bundle(tmp_path / "b", tasks={"t": ADAPTER_MODULE})).task("t")
    rng = np.random.default_rng(0)
    weights = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in task.trainable}
    body = encode_module(weights, task)
    half = encode_module(weights, replace(task, wire_dtype="float16"))

    # Execute
    views = module_views(body, task)
    widened = module_views(half, replace(task, wire_dtype="float16"))

    # Assert: the same arrays decode_module gives, the float32 ones views of the body itself
    for name, value in decode_module(body, task).items():
        assert np.array_equal(views[name], value) and views[name].dtype == np.float32
        assert np.shares_memory(views[name], np.frombuffer(body, np.uint8))
    for name, value in decode_module(half, replace(task, wire_dtype="float16")).items():
        assert np.array_equal(widened[name], value) and widened[name].dtype == np.float32


@pytest.mark.parametrize("other", [{"adapter.down": (96, 384)}, {"extra": (2,)}, {"adapter.down": None}])
def test_module_views_refuse_a_body_the_manifest_does_not_describe(tmp_path: Path, other: dict) -> None:
    # Prepare: a body whose tensors differ from the task's (a shape swapped, one too many, one missing)
    task = open_bundle(build_bundle(tmp_path / "b", tasks={"t": ADAPTER_MODULE})).task("t")
    shapes = {name: shape for name, shape in (ADAPTER_MODULE | other).items() if shape is not None}
    body = save({name: np.zeros(shape, np.float32) for name, shape in shapes.items()})

    # Execute / Assert
    with pytest.raises(ModuleWeightsError, match="does not match task 't'"):
        module_views(body, task)


@pytest.mark.parametrize(
    ("values", "finite"),
    [
        ([1.0, -2.0], True),
        ([], True),
        ([1.0, np.nan], False),
        ([np.inf, 0.0], False),
        ([0.0, -np.inf], False),
    ],
)
def test_all_finite_finds_nan_and_inf_anywhere(values: list[float], finite: bool) -> None:
    for dtype in (np.float32, np.float16):
        assert all_finite(np.array(values, dtype=dtype)) is finite
