"""Stage 3 of the export: the task model → ONNX Runtime training artifacts (training, eval and
optimizer graphs + a checkpoint of the trainable tensors only).

Pitfalls this file works around (DESIGN.md): opset 15 (17's LayerNormalization breaks ORT 1.19's
gradient builder); TRAINING mode with zero dropout so the legacy exporter keeps every initializer
distinct; a check that the exported trainable tensors equal PyTorch's `requires_grad` ones.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from fedyolo.export.classifier import TaskModel
from fedyolo.runtime.manifest import CHECKPOINT, EVAL_MODEL, OPTIMIZER_MODEL, TRAINING_MODEL

log = logging.getLogger(__name__)

OPSET = 15
OPTIMIZERS = ("adamw", "sgd")


@contextmanager
def native_logs_quiet() -> Iterator[None]:
    """Hold back what the exporter and ORT's gradient builder print (hundreds of INFO lines and tracer
    warnings written straight to fd 2); replay it if the export fails, so nothing useful is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read()[-20000:].decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class ExportMismatchError(RuntimeError):
    """The exported graph's trainable tensors differ from PyTorch's: an internal error, never silent."""


@dataclass(frozen=True)
class OnnxArtifacts:
    """Raw ORT training artifacts in `directory`, before the backbone is moved out of them."""

    directory: Path
    input_names: tuple[str, ...]
    trainable: dict[str, tuple[int, ...]]  # name -> shape, in PyTorch order
    frozen: tuple[str, ...]  # graph names of frozen backbone parameters


def dummy_inputs(
    model: TaskModel, batch: int, max_length: int, image_shape: tuple[int, ...]
) -> tuple[tuple[torch.Tensor, ...], tuple[str, ...], dict[str, dict[int, str]]]:
    """Example inputs, their names and dynamic axes for the exporter."""
    if model.architecture == "text":
        ids = torch.randint(1000, 2000, (batch, max_length), dtype=torch.int64)
        mask = torch.ones(batch, max_length, dtype=torch.int64)
        mask[0, max_length // 2 :] = 0
        axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
        return (ids, mask), ("input_ids", "attention_mask"), {**axes, "logits": {0: "batch"}}
    pixels = torch.randn(batch, *image_shape)
    return (pixels,), ("pixel_values",), {"pixel_values": {0: "batch"}, "logits": {0: "batch"}}


def export_forward(
    model: TaskModel, path: Path, max_length: int, image_shape: tuple[int, ...]
) -> tuple[str, ...]:
    """torch.onnx legacy export of the forward graph, in TRAINING mode, all dropout zero."""
    args, names, axes = dummy_inputs(model, 2, max_length, image_shape)
    model.train()
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.TRAINING,
            dynamo=False,
        )
    return names


def check_trainable(proto: onnx.ModelProto, model: TaskModel) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Trainable and frozen parameter names as the graph has them; raise if they differ from PyTorch's."""
    inits = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    trainable = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and n in inits]
    missing = [n for n in trainable if n not in inits]
    wrong = [n for n, s in trainable.items() if n in inits and inits[n] != s]
    if missing or wrong:
        raise ExportMismatchError(
            f"the ONNX graph lost or reshaped trainable tensors: missing {missing[:5]}, wrong shape {wrong[:5]} "
            f"({len(missing)} of {len(trainable)}); the exporter merged or renamed initializers"
        )
    return trainable, frozen


def export_training_artifacts(
    model: TaskModel,
    out_dir: Path,
    optimizer: str = "adamw",
    max_length: int = 32,
    image_shape: tuple[int, ...] = (),
) -> OnnxArtifacts:
    """Training, eval and optimizer graphs plus a full checkpoint, written into `out_dir`."""
    from onnxruntime.training import artifacts

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    with native_logs_quiet():
        with tempfile.TemporaryDirectory() as tmp:
            forward = Path(tmp) / "forward.onnx"
            names = export_forward(model, forward, max_length, image_shape)
            proto = onnx.load(str(forward))
        trainable, frozen = check_trainable(proto, model)
        log.info("exported forward graph: %d trainable, %d frozen tensors", len(trainable), len(frozen))
        optim = artifacts.OptimType.AdamW if optimizer == "adamw" else artifacts.OptimType.SGD
        artifacts.generate_artifacts(
            proto,
            requires_grad=list(trainable),
            frozen_params=frozen,
            loss=artifacts.LossType.CrossEntropyLoss,
            optimizer=optim,
            artifact_directory=str(out_dir),
            additional_output_names=["logits"],
        )
    for name in (TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL, CHECKPOINT):
        if not (out_dir / name).exists():
            raise ExportMismatchError(f"onnxruntime did not write {name}")
    return OnnxArtifacts(out_dir, names, trainable, tuple(frozen))
