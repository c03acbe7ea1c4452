"""Length bucketing: the ORT trainer drops the columns that are padding in every row of a batch, and
a user sees the same loss and gradients as PyTorch computes on the padded batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedyolo.export.backbones import load_backbone
from fedyolo.export.pipeline import build_task_model, export_onnx
from fedyolo.runtime.bucketing import trim_padding
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.ort_trainer import OrtTrainer
from tests.export.test_parity import LABELS, perturbed_module


def padded_batch() -> dict[str, np.ndarray]:
    """Six texts of 5 to 17 tokens, padded to 32 as the bundle's encoder pads them."""
    rng = np.random.default_rng(11)
    lengths = np.array([17, 5, 12, 9, 17, 3])
    mask = (np.arange(32)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1000, 3000, (6, 32)) * mask  # [PAD] is id 0
    return {"input_ids": ids, "attention_mask": mask, "labels": np.array([0, 1, 2, 1, 0, 2])}


def test_trim_padding_keeps_the_longest_text_and_nothing_else() -> None:
    batch = padded_batch()
    trimmed = trim_padding(batch)
    assert trimmed["input_ids"].shape == (6, 17) and trimmed["attention_mask"].shape == (6, 17)
    np.testing.assert_array_equal(trimmed["input_ids"], batch["input_ids"][:, :17])
    assert trimmed["labels"] is batch["labels"]
    full = {**batch, "attention_mask": np.ones((6, 32), np.int64)}
    assert trim_padding(full) is full
    pixels = {"pixel_values": np.zeros((2, 3, 4, 4), np.float32)}
    assert trim_padding(pixels) is pixels


@pytest.mark.parametrize("kind", ["lora", "prompt", "full"])
def test_a_trimmed_step_matches_pytorch_on_the_padded_batch(tmp_path: Path, kind: str) -> None:
    # Prepare
    export_onnx(tmp_path / "bundle", "t", LABELS, backbone="tiny-bert", module=kind, show_progress=False)
    trainer = OrtTrainer(open_bundle(tmp_path / "bundle"), "t")
    weights = perturbed_module(trainer.get_module(), seed=2)
    trainer.set_module(weights)
    model, _ = build_task_model(load_backbone("tiny-bert"), kind, LABELS)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(torch.from_numpy(value))
    batch = padded_batch()

    # Execute: ORT runs 17 columns, PyTorch all 32
    ort_loss, ort_grads = trainer.gradients(batch)
    model.train()
    logits = model(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"]))
    torch_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(batch["labels"]))
    torch_loss.backward()

    # Assert
    np.testing.assert_allclose(ort_loss, torch_loss.item(), rtol=1e-4, atol=1e-5)
    for name, grad in ort_grads.items():
        expected = params[name].grad
        assert expected is not None, name
        np.testing.assert_allclose(grad, expected.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
