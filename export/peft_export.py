"""`fedyolo export peft`: a task's LoRA module as a PEFT adapter folder.

base = base_model_for(bundle_dir, task_id)          # backbone + head, as fedyolo builds it
model = PeftModel.from_pretrained(base, out_dir)    # LoRA + the trained head (modules_to_save)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from fedyolo.export.backbone_store import backbone_bytes, plan_layout
from fedyolo.export.backbones import DEFAULT_BACKBONE, TINY_BACKBONES, Backbone, load_backbone
from fedyolo.export.classifier import TaskModel
from fedyolo.export.modules.lora import lora_target_names
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.errors import BundleError, FedyoloError
from fedyolo.runtime.manifest import MODULE_WEIGHTS
from fedyolo.runtime.wire import check_module

PEFT_KINDS = ("lora",)


def _backbone_for(bundle_dir: Path, backbone: str | None) -> Backbone:
    manifest = open_bundle(bundle_dir, tasks=[]).manifest
    spec = backbone or (
        DEFAULT_BACKBONE if manifest.backbone.id == "all-MiniLM-L6-v2" else manifest.backbone.id
    )
    if backbone is None and spec not in TINY_BACKBONES | {DEFAULT_BACKBONE}:
        raise FedyoloError(
            f"the bundle's backbone is {manifest.backbone.id!r}; pass its folder with --backbone PATH"
        )
    bb = load_backbone(spec)
    blob, _ = backbone_bytes(plan_layout(bb.model).arrays)
    if hashlib.sha256(blob).hexdigest() != manifest.backbone.file.sha256:
        raise BundleError(
            f"backbone {spec!r} is not the one this bundle was exported from ({manifest.backbone.id}); "
            "pass the same backbone with --backbone"
        )
    return bb


def base_model_for(bundle_dir: str | Path, task_id: str, backbone: str | None = None) -> TaskModel:
    """The frozen backbone + a fresh head for `task_id`: the base that the PEFT adapter loads onto."""
    bundle_dir = Path(bundle_dir)
    task = open_bundle(bundle_dir, tasks=[task_id], verify=False).task(task_id)
    model = TaskModel(_backbone_for(bundle_dir, backbone), len(task.labels))
    model.eval()
    return model


def export_peft(
    bundle_dir: str | Path,
    task_id: str,
    out: str | Path,
    module_path: str | Path | None = None,
    backbone: str | None = None,
) -> Path:
    """Write the task's LoRA weights (bundle's initial or a trained module file) as a PEFT adapter."""
    from peft import LoraConfig, get_peft_model

    bundle_dir, out = Path(bundle_dir), Path(out)
    bundle = open_bundle(bundle_dir, tasks=[task_id])
    task = bundle.task(task_id)
    if task.module_kind not in PEFT_KINDS:
        raise FedyoloError(
            f"task {task_id!r} uses the {task.module_kind!r} module, which PEFT has no format for here; "
            f"export peft supports: {', '.join(PEFT_KINDS)}"
        )
    weights = load_file(str(module_path or bundle.task_file(task_id, MODULE_WEIGHTS)))
    check_module(weights, task)
    base = base_model_for(bundle_dir, task_id, backbone)
    config = task.module_config
    targets = lora_target_names(base, tuple(config["targets"]))
    peft_config = LoraConfig(
        r=config["r"],
        lora_alpha=config["alpha"],
        lora_dropout=0.0,
        target_modules=targets,
        modules_to_save=["head"],
    )
    model = get_peft_model(base, peft_config)
    inner: dict[str, torch.nn.Parameter] = dict(model.get_base_model().named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            target = (
                name.replace("head.", "head.modules_to_save.default.", 1)
                if name.startswith("head.")
                else name
            )
            if target not in inner:
                raise BundleError(
                    f"module tensor {name!r} has no place in the PEFT model; re-export the task"
                )
            inner[target].copy_(torch.from_numpy(np.asarray(value)))
    model.save_pretrained(str(out))
    (out / "fedyolo_task.json").write_text(
        json.dumps(
            {
                "task_id": task_id,
                "labels": list(task.labels),
                "backbone": bundle.manifest.backbone.id,
                "max_length": task.input.max_length,
                "load": "PeftModel.from_pretrained(fedyolo.export.peft_export.base_model_for(BUNDLE, TASK), THIS_DIR)",
            },
            indent=2,
        )
    )
    return out
