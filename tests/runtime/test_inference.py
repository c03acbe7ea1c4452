"""The inference export: the trained module over the frozen backbone, stored once, as ONNX Runtime runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedyolo.runtime.bundle import initial_module, open_bundle
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.inference import InferenceModel, export_inference
from fedyolo.runtime.ort_trainer import OrtTrainer
from fedyolo.runtime.profiler import synthetic_batch


def trained_like(bundle_dir: Path) -> dict[str, np.ndarray]:
    """The initial module moved well away from zero (LoRA's B starts at zero), as training would."""
    rng = np.random.default_rng(3)
    module = initial_module(open_bundle(bundle_dir, verify=False), "topics")
    return {k: v + 0.2 * rng.standard_normal(v.shape).astype(np.float32) for k, v in module.items()}


def test_the_fp32_export_gives_the_trainers_logits_and_stores_the_backbone_once(
    tiny_bert_bundle: Path, tmp_path: Path
) -> None:
    # Prepare
    bundle = open_bundle(tiny_bert_bundle)
    weights = trained_like(tiny_bert_bundle)
    trainer = OrtTrainer(bundle, "topics")
    trainer.set_module(weights)
    batch = synthetic_batch(bundle.manifest, trainer.task, 6, 24)
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    # Execute
    written = export_inference(bundle, "topics", weights, tmp_path / "infer")
    logits = InferenceModel(tmp_path / "infer").predict(inputs)

    # Assert: the same logits, the module inside a small graph, the backbone one file (a hard link here)
    np.testing.assert_allclose(logits, trainer.predict(inputs), atol=1e-5)
    assert written.model_bytes < bundle.manifest.backbone.file.bytes / 10
    assert (tmp_path / "infer" / "backbone.bin").stat().st_ino == bundle.backbone_path.stat().st_ino
    assert written.linked


def test_the_int8_export_is_one_smaller_file_close_to_fp32(tiny_bert_bundle: Path, tmp_path: Path) -> None:
    bundle = open_bundle(tiny_bert_bundle)
    weights = trained_like(tiny_bert_bundle)
    fp32 = export_inference(bundle, "topics", weights, tmp_path / "fp32")
    int8 = export_inference(bundle, "topics", weights, tmp_path / "int8", int8=True)
    batch = synthetic_batch(bundle.manifest, bundle.task("topics"), 16, 24)
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    a = InferenceModel(tmp_path / "fp32").predict(inputs)
    b = InferenceModel(tmp_path / "int8").predict(inputs)

    assert int8.backbone_bytes == 0 and not (tmp_path / "int8" / "backbone.bin").exists()
    assert int8.model_bytes < (fp32.model_bytes + fp32.backbone_bytes) / 2.5
    # int8 weights of a random 32-wide model: close in the large, not bit for bit (correlation 0.97-0.99
    # measured; a broken quantization gives ~0). MiniLM's accuracy: benchmarks/inference.py
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9
    assert np.abs(b - a).mean() < 0.2 * np.abs(a).mean()
    assert not np.array_equal(a, b)  # it really is another model


def test_an_export_into_a_folder_in_use_is_refused(tiny_bert_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    bundle = open_bundle(tiny_bert_bundle)
    with pytest.raises(FedyoloError, match="is not empty; give a new folder"):
        export_inference(bundle, "topics", initial_module(bundle, "topics"), tmp_path / "used")
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["notes.txt"]
