"""`fedyolo export executorch`: add a task's ExecuTorch program to a bundle, over one shared backbone.

A task not yet in the bundle is first exported to ONNX (the bundle, its manifest and the task's
`module.safetensors` come from that one writer), so a bundle always holds both backends for a task and
both start from the same module. The program is then exported from the task model with the module's
initial weights loaded from `module.safetensors`, written to `tasks/<task>/program.pte`, and its
frozen tensors are merged into `backbone/backbone.ptd`: keyed by the backbone's own parameter names,
so every task and module kind reads the same entries, stored once (checked byte for byte, then by the
manifest's sha256).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedyolo.export.backbone_store import plan_layout
from fedyolo.export.backbones import DEFAULT_BACKBONE, load_backbone
from fedyolo.export.bundle_writer import _write_manifest
from fedyolo.export.executorch_export import ExecutorchArtifacts, check_kernels, export_program
from fedyolo.export.pipeline import build_task_model, export_onnx
from fedyolo.runtime.bundle import initial_module, open_bundle
from fedyolo.runtime.durable import write_atomic
from fedyolo.runtime.errors import BundleError, FedyoloError
from fedyolo.runtime.executorch_files import BACKBONE_DATA_FILE, PROGRAM
from fedyolo.runtime.manifest import MANIFEST_NAME, Manifest, file_entry, read_manifest

log = logging.getLogger(__name__)


def merge_data(existing: bytes | None, new: bytes) -> bytes | None:
    """The shared data file with `new`'s tensors added; None when `existing` already holds them all.

    A key present in both must hold the same bytes: two backbones never share one data file.
    """
    from executorch.exir._serialize._cord import Cord
    from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    serializer = FlatTensorSerializer()

    def entries(blob: bytes | None) -> dict[str, tuple[bytes, Any]]:
        if not blob:
            return {}
        payload = serializer.deserialize(Cord(blob))
        return {
            key: (bytes(payload.buffers[e.buffer_index]), e.tensor_layout)
            for key, e in payload.named_data.items()
        }

    have, add = entries(existing), entries(new)
    clash = [k for k in add if k in have and have[k][0] != add[k][0]]
    if clash:
        raise BundleError(
            f"{BACKBONE_DATA_FILE} holds other values for {clash[:3]}: it belongs to another backbone; "
            "export into a new --out folder"
        )
    if existing and set(add) <= set(have):
        return None
    merged = {**have, **add}
    keys = sorted(merged)
    payload = DataPayload(
        buffers=[merged[k][0] for k in keys],
        named_data={k: DataEntry(i, 64, merged[k][1]) for i, k in enumerate(keys)},
    )
    return bytes(serializer.serialize(payload))


def _load_module(model: torch.nn.Module, weights: dict[str, Any]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(torch.from_numpy(value.copy()))


def export_executorch(
    out: str | Path,
    task_id: str,
    labels: Sequence[str],
    backbone: str = DEFAULT_BACKBONE,
    module: str = "lora",
    options: dict[str, Any] | None = None,
    optimizer: str = "adamw",
    max_length: int = 32,
    batch: int = 8,
    seed: int = 0,
    force: bool = False,
    rewrite: bool = True,
    show_progress: bool = True,
    wire_dtype: str = "float32",
    kernels: str = "fedyolo",
) -> Manifest:
    """Add task `task_id`'s ExecuTorch program (batch `batch`) to the bundle at `out`."""
    if batch < 1:
        raise FedyoloError(f"--batch {batch} must be at least 1; e.g. --batch 8")
    check_kernels(kernels)  # before any export work
    out = Path(out)
    manifest = read_manifest(out) if (out / MANIFEST_NAME).exists() else None
    if manifest is not None and manifest.backbone.dtype != "float32":  # before export_onnx adds a task
        raise BundleError(
            f"{out} stores its backbone as {manifest.backbone.dtype}, and the ExecuTorch backend trains "
            "over a float32 backbone only; export ExecuTorch tasks into a bundle made without --backbone-dtype"
        )
    if manifest is None or task_id not in manifest.tasks or force:
        export_onnx(
            out, task_id, labels, backbone, module, options, optimizer, max_length, seed, force,
            show_progress, wire_dtype,
        )  # fmt: skip
    bundle = open_bundle(out, tasks=[task_id])
    spec = bundle.task(task_id)
    if spec.module_kind != module:
        raise BundleError(
            f"task {task_id!r} in {out} is a {spec.module_kind!r} module, not {module!r}; pass "
            f"--module {spec.module_kind}, or --force to replace the task"
        )
    bb = load_backbone(backbone)
    layout = plan_layout(bb.model)
    model, _ = build_task_model(bb, module, spec.labels, dict(spec.module_config) or options, seed)
    _load_module(model, initial_module(bundle, task_id))  # both backends start from the same module
    artifacts = export_program(
        model, layout, module, batch, spec.input.max_length, bb.image_shape, rewrite=rewrite, kernels=kernels
    )
    return write_program(out, bundle.manifest, task_id, artifacts, bb.id)


def write_program(
    out: Path, manifest: Manifest, task_id: str, artifacts: ExecutorchArtifacts, backbone_id: str
) -> Manifest:
    """program.pte into the task's folder, the frozen tensors into the shared data file, then the
    manifest: each file written atomically, the manifest last, so a failure leaves the old bundle."""
    if manifest.backbone.id != backbone_id:
        raise BundleError(
            f"{out} stores backbone {manifest.backbone.id!r}, not {backbone_id!r}; pass "
            f"--backbone {manifest.backbone.id}, or export into a new --out folder"
        )
    spec = manifest.task(task_id)
    names = [t.name for t in spec.trainable]
    if set(names) != set(artifacts.trainable):
        raise BundleError(
            f"the ExecuTorch program of task {task_id!r} trains other tensors than its ONNX graphs; "
            "re-export the task with --force"
        )
    data_path = out / BACKBONE_DATA_FILE
    existing = data_path.read_bytes() if data_path.is_file() else None
    merged = merge_data(existing, artifacts.data) if artifacts.data else None  # `full`: nothing frozen
    if merged is not None:
        write_atomic(data_path, merged, mode=0o644)
    program_path = out / "tasks" / task_id / PROGRAM
    write_atomic(program_path, artifacts.program, mode=0o644)
    files = {**spec.files, PROGRAM: file_entry(program_path)}
    backbone = manifest.backbone
    if data_path.is_file():
        backbone = dataclasses.replace(backbone, executorch_data=file_entry(data_path))
    new = dataclasses.replace(
        manifest,
        backbone=backbone,
        tasks={
            **manifest.tasks,
            task_id: dataclasses.replace(
                spec,
                files=files,
                executorch_batch=artifacts.batch,
                executorch_min_length=artifacts.min_length,
            ),
        },
    )
    _write_manifest(out, new)
    log.info(
        "task %s: ExecuTorch program %.1f KB, shared backbone data %.1f MB",
        task_id,
        len(artifacts.program) / 1e3,
        data_path.stat().st_size / 1e6 if data_path.is_file() else 0,
    )
    return new
