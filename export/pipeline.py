"""The export as named stages: load_backbone → attach_module → export_onnx → write_bundle."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fedyolo.export.backbone_store import build_blob, plan_layout
from fedyolo.export.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from fedyolo.export.bundle_writer import TaskExport, check_out, check_stored_backbone, write_task
from fedyolo.export.classifier import TaskModel
from fedyolo.export.int8_backbone import check_backbone_dtype, quantize_arrays
from fedyolo.export.modules import get_kind, make_config
from fedyolo.export.onnx_export import OPTIMIZERS, export_training_artifacts
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.manifest import Manifest, check_task_id
from fedyolo.runtime.wire import WIRE_DTYPES

log = logging.getLogger(__name__)


def build_task_model(
    backbone: Backbone,
    module: str,
    labels: Sequence[str],
    options: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[TaskModel, dict[str, Any]]:
    """Backbone + head + module, with only the module and head trainable. Returns the model and the
    module's config as plain JSON-able data (what the manifest records)."""
    kind = get_kind(module)
    config = make_config(kind, options)
    torch.manual_seed(seed)
    model = TaskModel(backbone, len(labels))
    kind.attach(model, config)
    return model, {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def export_onnx(
    out: str | Path,
    task_id: str,
    labels: Sequence[str],
    backbone: str = DEFAULT_BACKBONE,
    module: str = "lora",
    options: dict[str, Any] | None = None,
    optimizer: str = "adamw",
    max_length: int = 32,
    seed: int = 0,
    force: bool = False,
    show_progress: bool = True,
    wire_dtype: str = "float32",
    backbone_dtype: str = "float32",
) -> Manifest:
    """Export one task into the bundle at `out` (created, or extended with the backbone reused).

    wire_dtype: how module weights travel between clients and server (float32 or float16).
    backbone_dtype: how the frozen backbone is stored and run: float32, or int8 (int8_backbone.py).
    """
    check_task_id(task_id)
    check_backbone_dtype(backbone_dtype)
    if wire_dtype not in WIRE_DTYPES:
        raise FedyoloError(f"unknown wire dtype {wire_dtype!r}; choose one of: {', '.join(WIRE_DTYPES)}")
    if len(labels) < 2:
        raise FedyoloError(f"task {task_id!r} has {len(labels)} label(s); a classifier needs at least 2")
    if optimizer not in OPTIMIZERS:
        raise FedyoloError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    get_kind(module)  # an unknown kind fails before the backbone loads
    out = Path(out)
    existing = check_out(out, task_id, force)  # a bad --out fails before the slow export, too
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    console = Console()
    # A transient bar shows nothing when stdout is not a terminal, but still prints a blank line.
    with Progress(
        *columns, console=console, disable=not (show_progress and console.is_terminal), transient=True
    ) as progress:
        step = progress.add_task(f"loading backbone {backbone}", total=4)
        # The backbone never depends on `seed` (it seeds the module): tasks over a tiny backbone share it.
        bb = load_backbone(backbone)
        layout = plan_layout(bb.model)
        arrays = quantize_arrays(layout.arrays) if backbone_dtype == "int8" else layout.arrays
        blob = build_blob(arrays)  # built and hashed once per export: 90 MB for MiniLM
        if existing is not None:
            check_stored_backbone(out, existing, blob)
        progress.update(step, advance=1, description=f"attaching {module} module")
        model, config = build_task_model(bb, module, labels, options, seed)
        progress.update(step, advance=1, description="exporting ONNX training graphs")
        with tempfile.TemporaryDirectory(prefix="fedyolo-export-") as tmp:
            task_tmp = Path(tmp) / task_id
            task_tmp.mkdir()
            artifacts = export_training_artifacts(model, task_tmp, optimizer, max_length, bb.image_shape)
            progress.update(step, advance=1, description=f"writing bundle {out}")
            task = TaskExport(task_id, module, config, tuple(labels), optimizer, max_length, wire_dtype)
            manifest = write_task(out, bb, layout, blob, model, artifacts, task, force=force)
        progress.update(step, advance=1)
    spec = manifest.tasks[task_id]
    log.info(
        "task %s: %s module, %d trainable values (%.1f KB) over %s (%.1f MB, stored once)",
        task_id,
        module,
        spec.module_numel,
        spec.module_bytes / 1e3,
        manifest.backbone.id,
        manifest.backbone.file.bytes / 1e6,
    )
    return manifest
