"""A synthetic bundle for tests and load benchmarks: a real manifest, random frozen backbone bytes, a
module of chosen shapes. The server never runs the graphs, so it needs nothing more.

The backbone file holds a float32 embedding table [vocab, hidden]: a numpy test trainer can use it
as a frozen feature extractor (mean of the token embeddings) under a trainable linear head.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save as st_save

from fedyolo.runtime.manifest import (
    BACKBONE_FILE,
    MANIFEST_NAME,
    MODULE_WEIGHTS,
    BackboneSpec,
    InputSpec,
    Manifest,
    TaskSpec,
    TensorSpec,
    file_entry,
)

# About 320 KB of fp32: a bottleneck adapter 384→96→384 plus a 21-label head, the load benchmark's size.
ADAPTER_MODULE: dict[str, tuple[int, ...]] = {
    "adapter.down": (384, 96),
    "adapter.up": (96, 384),
    "head.weight": (21, 384),
    "head.bias": (21,),
}


def head_module(hidden: int, labels: int) -> dict[str, tuple[int, ...]]:
    """A linear head over `hidden` features: what the numpy test trainer trains."""
    return {"head.weight": (labels, hidden), "head.bias": (labels,)}


def build_bundle(
    root: str | os.PathLike[str],
    tasks: dict[str, dict[str, tuple[int, ...]]] | None = None,
    labels: int = 21,
    vocab: int = 512,
    hidden: int = 384,
    max_length: int = 16,
    seed: int = 0,
) -> Path:
    """Write a bundle under `root` whose tasks have the given trainable tensors; returns `root`."""
    out = Path(root)
    rng = np.random.default_rng(seed)
    tasks = tasks if tasks is not None else {"topics": ADAPTER_MODULE}
    (out / "backbone").mkdir(parents=True, exist_ok=True)
    embeddings = rng.standard_normal((vocab, hidden)).astype(np.float32)
    (out / BACKBONE_FILE).write_bytes(embeddings.tobytes())
    backbone = BackboneSpec(
        id="synthetic-embeddings",
        architecture="text",
        model_type="synthetic",
        hidden_size=hidden,
        num_layers=0,
        file=file_entry(out / BACKBONE_FILE),
        tensors=(TensorSpec("embeddings", (vocab, hidden), offset=0, length=embeddings.nbytes),),
        full_model_bytes=embeddings.nbytes,
    )
    specs = {}
    for task_id, shapes in tasks.items():
        task_dir = out / "tasks" / task_id
        task_dir.mkdir(parents=True, exist_ok=True)
        n_labels = shapes["head.bias"][0] if "head.bias" in shapes else labels
        weights = {
            name: (0.02 * rng.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()
        }
        (task_dir / MODULE_WEIGHTS).write_bytes(st_save(weights))
        specs[task_id] = TaskSpec(
            task_id=task_id,
            module_kind="head" if set(shapes) <= {"head.weight", "head.bias"} else "adapter",
            module_config={},
            labels=tuple(f"label_{i}" for i in range(n_labels)),
            input=InputSpec(kind="text", names=("input_ids", "attention_mask"), max_length=max_length),
            trainable=tuple(TensorSpec(name, shape) for name, shape in shapes.items()),
            optimizer="sgd",
            files={MODULE_WEIGHTS: file_entry(task_dir / MODULE_WEIGHTS)},
        )
    manifest = Manifest(backbone=backbone, tasks=specs, fedyolo_version="synthetic")
    (out / MANIFEST_NAME).write_text(manifest.to_json())
    return out
