"""`fedyolo predict` and `fedyolo export onnx-inference`: use a trained module on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fedyolo.runtime.bundle import Bundle, initial_module, open_bundle
from fedyolo.runtime.capacity import check_backend
from fedyolo.runtime.data import TextEncoder
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.inference import INFO_FILE, InferenceModel, export_inference, softmax
from fedyolo.runtime.manifest import MANIFEST_NAME, TOKENIZER_FILE
from fedyolo.runtime.wire import ModuleWeights, decode_module


def _module(bundle: Bundle, task_id: str, path: Path | None) -> ModuleWeights:
    if path is None:
        return initial_module(bundle, task_id)
    if not path.is_file():
        raise FedyoloError(
            f"--module {path}: no such file; give the safetensors `fedyolo train --save` wrote"
        )
    return decode_module(path.read_bytes(), bundle.task(task_id))


def _text_task(bundle: Bundle, task_id: str) -> None:
    if bundle.task(task_id).input.kind != "text":
        raise FedyoloError(f"task {task_id!r} takes images; `fedyolo predict` classifies texts")


def predict_command(
    model: Path,
    texts: list[str],
    task_id: str | None,
    module: Path | None,
    top: int,
    console: Console | None = None,
) -> list[list[tuple[str, float]]]:
    """Print the top labels and scores of each text; returns them."""
    console = console or Console()
    if (model / INFO_FILE).is_file():  # an inference export
        if module is not None:
            raise FedyoloError("--module is for a bundle; an inference export already holds its module")
        inference = InferenceModel(model)
        labels, length = inference.labels, int(inference.info["max_length"])
        encoded = TextEncoder(model / TOKENIZER_FILE).encode(texts, length)
        logits = inference.predict(encoded)
    elif (model / MANIFEST_NAME).is_file():
        if task_id is None:
            raise FedyoloError(
                "--task is missing; name the task of the bundle to predict with, e.g. --task topics"
            )
        from fedyolo.runtime.ort_trainer import OrtTrainer

        bundle = open_bundle(model, tasks=[task_id])
        _text_task(bundle, task_id)
        check_backend(bundle.task(task_id), "ort")
        trainer = OrtTrainer(bundle, task_id)
        trainer.set_module(_module(bundle, task_id, module))
        labels, length = trainer.task.labels, trainer.task.input.max_length
        encoded = TextEncoder(bundle.tokenizer_path).encode(texts, length)
        logits = trainer.predict(encoded)
    else:
        raise FedyoloError(
            f"{model} is neither a bundle ({MANIFEST_NAME}) nor an inference export ({INFO_FILE}); "
            "give one of those folders"
        )
    scores = softmax(np.asarray(logits, np.float64))
    table = Table("text", "label", "score")
    answers = []
    for text, row, mask in zip(texts, scores, encoded["attention_mask"], strict=True):
        order = np.argsort(-row)[:top]
        answers.append([(labels[i], float(row[i])) for i in order])
        cut = f" (cut to {length} tokens)" if mask[-1] else ""  # the text filled every position
        for rank, i in enumerate(order):
            table.add_row(text + cut if rank == 0 else "", labels[i], f"{row[i]:.3f}")
    console.print(table)
    return answers


def export_inference_command(
    bundle_dir: Path, task_id: str, out: Path, module: Path | None, int8: bool
) -> None:
    """Write the inference model and say what it holds."""
    bundle = open_bundle(bundle_dir, tasks=[task_id])
    check_backend(bundle.task(task_id), "ort")
    written = export_inference(bundle, task_id, _module(bundle, task_id, module), out, int8)
    if int8:
        where = f"int8 weights inside model.onnx ({written.model_bytes / 1e6:.1f} MB, one file)"
    else:
        how = "a hard link to the bundle's, no second copy" if written.linked else "a copy"
        where = f"model.onnx {written.model_bytes / 1e3:.0f} KB + backbone.bin {written.backbone_bytes / 1e6:.1f} MB ({how})"
    print(f"wrote the inference model of task {task_id!r} to {out}: {where}")
