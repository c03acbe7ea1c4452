"""The real all-MiniLM-L6-v2 with LoRA (r=8 on q,v + head), trained on-device (ONNX Runtime, torch-free
runtime) on the deduplicated `topics` task, beats the linear-probe bar of DESIGN.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedyolo.export.pipeline import export_onnx
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.local import encode_examples, fit
from fedyolo.runtime.ort_trainer import OrtTrainer
from fedyolo.tasks import load_task

PROBE_BAR = 0.795  # logistic-regression probe on frozen MiniLM embeddings (DESIGN.md)
EPOCHS, LR, BATCH = 4, 2e-3, 16


@pytest.mark.slow
def test_lora_on_topics_reaches_the_linear_probe_bar(tmp_path: Path) -> None:
    # Prepare
    task = load_task("topics")
    export_onnx(tmp_path / "bundle", "topics", task.labels, module="lora", show_progress=False)
    bundle = open_bundle(tmp_path / "bundle")
    spec = bundle.task("topics")
    train, test = encode_examples(bundle, spec, task.train), encode_examples(bundle, spec, task.test)
    trainer = OrtTrainer(bundle, "topics", lr=LR)
    before = trainer.evaluate([test]).accuracy

    # Execute
    logs = fit(trainer, train, test, EPOCHS, BATCH, seed=0, lr=LR)

    # Assert
    accuracy = [log.test.accuracy for log in logs if log.test is not None]
    print(f"held-out accuracy per epoch: {[f'{a:.3f}' for a in accuracy]} (before training {before:.3f})")
    assert logs[-1].train_loss < logs[0].train_loss
    assert accuracy[-1] >= PROBE_BAR, accuracy
