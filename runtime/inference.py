"""Inference with a trained module: an inference-only ONNX model over the bundle's frozen backbone.

`export_inference` turns a task's eval graph into a model of its own: the trained module's tensors
become initializers, `labels` and the loss are pruned away, `logits` is the one output. The frozen
weights stay stored once: the model's external data points at one copy of backbone.bin in the output
folder (a hard link to the bundle's where the file system allows, so no second copy on disk). With
int8, ONNX Runtime's dynamic quantization (per channel, signed weights) rewrites MatMul/Gemm and the
embedding Gathers, and the result is one self-contained file: the int8 backbone is its only copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.manifest import EVAL_MODEL, TOKENIZER_FILE
from fedyolo.runtime.ort_import import load_ort
from fedyolo.runtime.wire import ModuleWeights, check_module

MODEL_FILE = "model.onnx"
BACKBONE_COPY = "backbone.bin"
INFO_FILE = "inference.json"


@dataclass(frozen=True)
class InferenceExport:
    """What `export_inference` wrote."""

    out: Path
    model_bytes: int
    backbone_bytes: int  # 0 when the model holds its weights itself (int8)
    linked: bool  # backbone.bin is a hard link to the bundle's (no second copy on disk)


def _prune(graph: Any, keep_outputs: list[str]) -> None:
    """Drop every node, input and initializer that `keep_outputs` do not depend on."""
    producer = {out: node for node in graph.node for out in node.output}
    needed, stack, live = set(keep_outputs), list(keep_outputs), set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        for name in node.input:
            if name and name not in needed:
                needed.add(name)
                stack.append(name)
        for attr in node.attribute:  # subgraphs (If/Loop) read outer names too
            for sub in [attr.g, *attr.graphs]:
                for inner in sub.node:
                    for name in inner.input:
                        if name not in needed:
                            needed.add(name)
                            stack.append(name)
    kept = [n for n in graph.node if id(n) in live]
    del graph.node[:]
    graph.node.extend(kept)
    for field in (graph.input, graph.initializer):
        kept_items = [x for x in field if x.name in needed]
        del field[:]
        field.extend(kept_items)
    outputs = [o for o in graph.output if o.name in keep_outputs]
    del graph.output[:]
    graph.output.extend(outputs)


def _link_or_copy(src: Path, dst: Path) -> bool:
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copyfile(src, dst)
        return False


def export_inference(
    bundle: Bundle, task_id: str, weights: ModuleWeights, out: Path, int8: bool = False
) -> InferenceExport:
    """Write an inference-only ONNX model of `task_id` with `weights` into `out` (see module doc)."""
    import onnx
    from onnx import numpy_helper

    task = bundle.task(task_id)
    check_module(weights, task)
    if out.exists() and any(out.iterdir()):
        raise FedyoloError(f"--out {out} is not empty; give a new folder, or remove it first")
    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(bundle.task_file(task_id, EVAL_MODEL)), load_external_data=False)
    graph = model.graph
    trainable = {t.name for t in task.trainable}
    inputs = [i for i in graph.input if i.name not in trainable]
    del graph.input[:]
    graph.input.extend(inputs)
    graph.initializer.extend(
        numpy_helper.from_array(np.asarray(weights[n], np.float32), n) for n in sorted(trainable)
    )
    _prune(graph, [task.logits_output])
    for tensor in graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = BACKBONE_COPY
    info = {
        "task": task_id,
        "labels": list(task.labels),
        "inputs": [i.name for i in graph.input],
        "max_length": task.input.max_length,
        "input_kind": task.input.kind,
        "int8": int8,
    }
    linked = _link_or_copy(bundle.backbone_path, out / BACKBONE_COPY)
    onnx.save(model, str(out / MODEL_FILE))
    if int8:
        _quantize(out)
        linked = False
    if bundle.manifest.tokenizer is not None:
        shutil.copyfile(bundle.root / TOKENIZER_FILE, out / TOKENIZER_FILE)
    (out / INFO_FILE).write_text(json.dumps(info, indent=2))
    backbone = out / BACKBONE_COPY
    return InferenceExport(
        out=out,
        model_bytes=(out / MODEL_FILE).stat().st_size,
        backbone_bytes=backbone.stat().st_size if backbone.exists() else 0,
        linked=linked,
    )


def _quantize(out: Path) -> None:
    """Replace out/model.onnx (+ backbone.bin) with one int8 file: dynamic, per channel, QInt8 weights."""
    load_ort()  # ORT imported without torch before its quantization tools import it
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the tool warns on the root logger to run its pre-processing first
    try:
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            quantized = Path(tmp) / MODEL_FILE
            quantize_dynamic(
                out / MODEL_FILE,
                quantized,
                op_types_to_quantize=["MatMul", "Gemm", "Gather"],
                per_channel=True,
                weight_type=QuantType.QInt8,
            )
            os.replace(quantized, out / MODEL_FILE)
    finally:
        root.setLevel(level)
    (out / BACKBONE_COPY).unlink()


class InferenceModel:
    """An exported inference model: logits for a batch of token ids (or pixels), on ONNX Runtime."""

    def __init__(self, folder: Path, threads: int = 0) -> None:
        if not (folder / INFO_FILE).is_file():
            raise FedyoloError(
                f"{folder} is not an inference export (no {INFO_FILE}); make one with "
                "`fedyolo export onnx-inference BUNDLE --task T --module m.safetensors --out DIR`"
            )
        self.info: dict[str, Any] = json.loads((folder / INFO_FILE).read_text())
        self.labels: tuple[str, ...] = tuple(self.info["labels"])
        C = load_ort()
        from onnxruntime import InferenceSession

        options = C.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session = InferenceSession(
            str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]

    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Logits [batch, num_labels]."""
        feed = {
            n: np.ascontiguousarray(batch[n], np.float32 if n == "pixel_values" else np.int64)
            for n in self._inputs
        }
        logits: np.ndarray = self._session.run(None, feed)[0]
        return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    """Scores that sum to one over the labels, row by row."""
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    scores: np.ndarray = shifted / shifted.sum(-1, keepdims=True)
    return scores
