"""The browser form of a task: the graphs and a nominal checkpoint onnxruntime-web can train.

The bundle's graphs read the frozen backbone as external data in backbone.bin, which onnxruntime-web
cannot load (DESIGN.md, "stored once"). Here every such initializer becomes a graph input again, the
checkpoint is nominal (names and shapes only, a few KB), and `web.json` names every parameter in the
order `loadParametersBuffer(all, false)` takes them, each with where its bytes live: a slice of
backbone.bin or a tensor of the module. The page assembles the buffer from the files it cached, so
the server stores the backbone once and the browser downloads it once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.training import onnxblock

from fedyolo.runtime.manifest import EVAL_MODEL, TRAINING_MODEL, TensorSpec

WEB_TRAINING_MODEL = "web_training_model.onnx"
WEB_EVAL_MODEL = "web_eval_model.onnx"
WEB_CHECKPOINT = "web_checkpoint"
WEB_PARAMS = "web.json"
WEB_FILES = (WEB_TRAINING_MODEL, WEB_EVAL_MODEL, WEB_CHECKPOINT, WEB_PARAMS)


def _inputs_from_backbone(graph_path: Path, out_path: Path) -> list[str]:
    """Write `graph_path` with its backbone.bin initializers turned into float inputs; their names."""
    model = onnx.load(str(graph_path), load_external_data=False)
    graph = model.graph
    external = [i for i in graph.initializer if i.data_location == TensorProto.EXTERNAL]
    kept = [i for i in graph.initializer if i.data_location != TensorProto.EXTERNAL]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for init in external:
        graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.FLOAT, list(init.dims)))
    onnx.save(model, str(out_path))
    return [i.name for i in external]


def write_web_form(
    task_dir: Path, weights: dict[str, np.ndarray], trainable: list[str], tensors: dict[str, TensorSpec]
) -> None:
    """Write the browser form of the task in `task_dir` (graphs already pointing into backbone.bin).

    weights: the module's initial tensors; trainable: their names; tensors: backbone.bin's table.
    """
    frozen = _inputs_from_backbone(task_dir / TRAINING_MODEL, task_dir / WEB_TRAINING_MODEL)
    eval_frozen = _inputs_from_backbone(task_dir / EVAL_MODEL, task_dir / WEB_EVAL_MODEL)
    if set(eval_frozen) - set(frozen):
        raise ValueError(f"the eval graph reads backbone tensors the training graph does not: {eval_frozen}")
    # Nominal: only names, shapes and types are stored; the page loads every value afterwards.
    trainable_protos = [numpy_helper.from_array(weights[n].astype(np.float32), name=n) for n in trainable]
    frozen_protos = [_shape_only(tensors[n]) for n in frozen]
    path = task_dir / WEB_CHECKPOINT
    shutil.rmtree(path, ignore_errors=True)
    path.unlink(missing_ok=True)
    onnxblock.save_checkpoint((trainable_protos, frozen_protos), str(path), nominal_checkpoint=True)

    # ORT's Module orders its parameters as the training graph's inputs: that is the buffer's order.
    graph = onnx.load(str(task_dir / WEB_TRAINING_MODEL), load_external_data=False).graph
    params = set(trainable) | set(frozen)
    order: list[dict[str, Any]] = []
    for i in graph.input:
        if i.name in tensors and i.name in frozen:
            spec = tensors[i.name]
            order.append({"name": i.name, "from": "backbone", "offset": spec.offset, "length": spec.length})
        elif i.name in params:
            order.append({"name": i.name, "from": "module", "length": int(weights[i.name].size) * 4})
    user_inputs = [i.name for i in graph.input if i.name not in params and "grad" not in i.name]
    body = {"inputs": user_inputs, "params": order}
    (task_dir / WEB_PARAMS).write_text(json.dumps(body, indent=1) + "\n")


def _shape_only(spec: TensorSpec) -> TensorProto:
    return TensorProto(name=spec.name, data_type=TensorProto.FLOAT, dims=list(spec.shape))
