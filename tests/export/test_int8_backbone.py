"""The int8 backbone (`--backbone-dtype int8`): fewer bytes, the same model up to int8 rounding.

The reference is PyTorch eager over the SAME int8 weights (dequantized): what remains between the two is
the int8 kernels' dynamic quantization of activations and gradients, which the tolerances below bound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedyolo.export.backbone_store import TRANSPOSED_SUFFIX, plan_layout
from fedyolo.export.backbones import load_backbone
from fedyolo.export.int8_backbone import SCALE_SUFFIX, is_word_embedding, quantize_arrays
from fedyolo.export.pipeline import build_task_model, export_onnx
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.errors import BundleError
from fedyolo.runtime.ort_trainer import OrtTrainer
from tests.export.test_parity import LABELS, fixed_batch, perturbed_module, pytorch_step


def dequantized_backbone(name: str) -> object:
    """The backbone with every linear weight and word embedding replaced by its int8 value × scale."""
    bb = load_backbone(name)
    stored = quantize_arrays(plan_layout(bb.model).arrays)
    with torch.no_grad():
        for pname, p in bb.model.named_parameters():
            if pname + TRANSPOSED_SUFFIX in stored:  # [in, out] int8, scale per out
                key = pname + TRANSPOSED_SUFFIX
                p.copy_(torch.from_numpy((stored[key] * stored[key + SCALE_SUFFIX]).T.copy()))
            elif is_word_embedding(pname):
                p.copy_(torch.from_numpy(stored[pname] * stored[pname + SCALE_SUFFIX][:, None]))
    return bb


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-vit"])
def test_int8_step_matches_pytorch_over_the_same_int8_weights(tmp_path: Path, backbone: str) -> None:
    # Prepare: an int8 bundle and an fp32 one; PyTorch over the dequantized int8 weights, same module
    export_onnx(tmp_path / "b8", "t", LABELS, backbone=backbone, backbone_dtype="int8", show_progress=False)
    export_onnx(tmp_path / "b32", "t", LABELS, backbone=backbone, show_progress=False)
    bundle = open_bundle(tmp_path / "b8")
    trainer = OrtTrainer(bundle, "t", lr=3e-3)
    weights = perturbed_module(trainer.get_module(), seed=1)
    trainer.set_module(weights)
    model, _ = build_task_model(dequantized_backbone(backbone), "lora", LABELS)  # type: ignore[arg-type]
    batch = fixed_batch(bundle.manifest.backbone.architecture)

    # Execute
    ort_loss, ort_grads = trainer.gradients(batch)
    torch_loss, torch_grads = pytorch_step(model, weights, list(bundle.task("t").input.names), batch)
    losses = [trainer.step(batch) for _ in range(10)]

    # Assert: the backbone's bytes (a tiny ViT is mostly biases, norms and 64-byte alignment: MiniLM's
    # file is 0.38x, benchmarks/README.md); loss within 1% and every gradient pointing the same way (cosine
    # ≥ 0.99, norm within 5%) as PyTorch's over the same int8 weights; and the module learns
    fp32_bytes = open_bundle(tmp_path / "b32").manifest.backbone.file.bytes
    assert bundle.manifest.backbone.dtype == "int8"
    assert bundle.manifest.backbone.file.bytes <= (0.5 if backbone == "tiny-bert" else 0.75) * fp32_bytes
    assert (
        tmp_path / "b8" / "backbone" / "backbone.bin"
    ).stat().st_size == bundle.manifest.backbone.file.bytes
    assert ort_loss == pytest.approx(torch_loss, rel=1e-2)
    assert set(ort_grads) == set(torch_grads)
    for name, grad in ort_grads.items():
        expected = torch_grads[name]
        if np.linalg.norm(expected) < 1e-8:
            continue
        assert cosine(grad, expected) >= 0.99, name
        assert np.linalg.norm(grad) == pytest.approx(np.linalg.norm(expected), rel=0.05), name
    assert losses[-1] < 0.97 * losses[0], losses


def test_an_int8_task_cannot_join_an_fp32_bundle(tmp_path: Path) -> None:
    # Prepare
    export_onnx(tmp_path / "b", "t", LABELS, backbone="tiny-bert", show_progress=False)
    before = (tmp_path / "b" / "manifest.json").read_bytes()

    # Execute / Assert: refused with the fix named, the bundle untouched
    with pytest.raises(BundleError, match="--backbone-dtype float32"):
        export_onnx(
            tmp_path / "b", "u", LABELS, backbone="tiny-bert", backbone_dtype="int8", show_progress=False
        )
    assert (tmp_path / "b" / "manifest.json").read_bytes() == before


def test_an_unknown_backbone_dtype_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unknown backbone dtype 'int4'; choose one of: float32, int8"):
        export_onnx(
            tmp_path / "b", "t", LABELS, backbone="tiny-bert", backbone_dtype="int4", show_progress=False
        )
    assert not (tmp_path / "b").exists()


def test_executorch_refuses_an_int8_bundle_before_adding_any_task(tmp_path: Path) -> None:
    from fedyolo.export.executorch_bundle import export_executorch

    # Prepare
    export_onnx(tmp_path / "b", "t", LABELS, backbone="tiny-bert", backbone_dtype="int8", show_progress=False)
    before = (tmp_path / "b" / "manifest.json").read_bytes()

    # Execute / Assert: a new task is refused for the ExecuTorch reason, not an ONNX export's dtype clash
    with pytest.raises(BundleError, match="ExecuTorch backend trains over a float32 backbone only"):
        export_executorch(tmp_path / "b", "u", LABELS, backbone="tiny-bert", show_progress=False)
    assert (tmp_path / "b" / "manifest.json").read_bytes() == before
