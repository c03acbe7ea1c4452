"""`fedyolo export peft`: PeftModel.from_pretrained loads the folder and gives the runtime's logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.numpy import save_file

from fedyolo.export.peft_export import base_model_for, export_peft
from fedyolo.export.pipeline import export_onnx
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.ort_trainer import OrtTrainer


def test_trained_lora_module_loads_in_peft_with_same_logits(tmp_path: Path) -> None:
    # Prepare: a bundle, a module trained a few steps with the runtime
    export_onnx(
        tmp_path / "b", "t", ["x", "y", "z"], backbone="tiny-bert", module="lora", show_progress=False
    )
    trainer = OrtTrainer(open_bundle(tmp_path / "b"), "t", lr=1e-2)
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(1000, 3000, (4, 16)),
        "attention_mask": np.ones((4, 16), dtype=np.int64),
        "labels": np.array([0, 1, 2, 1]),
    }
    for _ in range(5):
        trainer.step(batch)
    save_file(trainer.get_module(), str(tmp_path / "trained.safetensors"))

    # Execute
    export_peft(tmp_path / "b", "t", tmp_path / "peft", tmp_path / "trained.safetensors")
    model = PeftModel.from_pretrained(base_model_for(tmp_path / "b", "t"), str(tmp_path / "peft"))
    model.eval()
    with torch.no_grad():
        peft_logits = model(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"]))

    # Assert
    assert (tmp_path / "peft" / "adapter_config.json").is_file()
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    np.testing.assert_allclose(peft_logits.numpy(), trainer.predict(batch), rtol=1e-4, atol=1e-5)


def test_peft_export_refuses_a_kind_peft_cannot_hold(tmp_path: Path) -> None:
    export_onnx(tmp_path / "b", "t", ["x", "y"], backbone="tiny-bert", module="adapter", show_progress=False)
    with pytest.raises(FedyoloError, match="adapter"):
        export_peft(tmp_path / "b", "t", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
