"""Stage 4 of the export: write a task into a bundle, atomically, storing the backbone once.

A new bundle is built in a temp folder beside the target and renamed into place; a task added to an
existing bundle is built in a temp folder inside it, renamed into tasks/, and only then is the new
manifest swapped in. A failure at any point leaves the previous bundle as it was.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.training import onnxblock
from safetensors.numpy import save_file

from fedyolo import __version__
from fedyolo.export.backbone_store import (
    BackboneBlob,
    BackboneLayout,
    externalize_frozen,
    relative_backbone_location,
    same_bytes,
    stored_name,
)
from fedyolo.export.backbones import Backbone
from fedyolo.export.classifier import TaskModel
from fedyolo.export.gelu_grad import decompose_gelu_grad
from fedyolo.export.int8_backbone import add_ms_domain, rewrite_graph
from fedyolo.export.onnx_export import OnnxArtifacts
from fedyolo.export.web_form import WEB_FILES, write_web_form
from fedyolo.runtime.durable import write_atomic
from fedyolo.runtime.errors import BundleError
from fedyolo.runtime.manifest import (
    BACKBONE_FILE,
    CHECKPOINT,
    EVAL_MODEL,
    MANIFEST_NAME,
    MODULE_WEIGHTS,
    OPTIMIZER_MODEL,
    TOKENIZER_FILE,
    TRAINING_MODEL,
    BackboneSpec,
    FileEntry,
    InputSpec,
    Manifest,
    TaskSpec,
    TensorSpec,
    file_entry,
    read_manifest,
)


@dataclass(frozen=True)
class TaskExport:
    """What the bundle records about one task besides its files."""

    task_id: str
    module_kind: str
    module_config: dict[str, Any]
    labels: tuple[str, ...]
    optimizer: str
    max_length: int
    wire_dtype: str = "float32"  # module weights on the wire: float32, or float16 for half the bytes


def _backbone_spec(backbone: Backbone, layout: BackboneLayout, blob: BackboneBlob) -> BackboneSpec:
    return BackboneSpec(
        id=backbone.id,
        architecture=backbone.architecture,
        model_type=backbone.model_type,
        hidden_size=backbone.hidden_size,
        num_layers=backbone.num_layers,
        file=FileEntry(sha256=blob.sha256, bytes=len(blob.data)),  # the file is these bytes: no second hash
        tensors=blob.tensors,
        dtype=backbone_dtype(blob.tensors),
        full_model_bytes=sum(a.nbytes for a in layout.arrays.values()),
    )


def backbone_dtype(tensors: Iterable[TensorSpec]) -> str:
    """ "int8" when backbone.bin holds int8 tensors (int8_backbone.py), else "float32"."""
    return "int8" if any(t.dtype == "int8" for t in tensors) else "float32"


def _graph_rewrites(tensors: dict[str, TensorSpec]) -> Callable[[onnx.ModelProto], None]:
    """The speed rewrites every task graph gets: the GELU backward on every core (gelu_grad.py), and,
    over an int8 backbone, its readers pointed at int8 kernels (int8_backbone.py)."""
    dtypes = {name: spec.dtype for name, spec in tensors.items()}
    int8 = backbone_dtype(tensors.values()) == "int8"

    def rewrite(model: onnx.ModelProto) -> None:
        decompose_gelu_grad(model.graph)
        if int8:
            rewrite_graph(model.graph, dtypes)
            add_ms_domain(model)

    return rewrite


def check_out(out: Path, task_id: str, force: bool = False) -> Manifest | None:
    """Refuse an --out that cannot take task `task_id`, before any slow work: a file, a non-bundle
    folder, a task already there (without `force`). Returns the existing manifest; its backbone is
    checked by `check_stored_backbone` once the export's blob is built."""
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} is a file, not a folder; choose a new or empty folder")
    if not (out / MANIFEST_NAME).exists():
        if out.exists() and any(out.iterdir()):
            raise BundleError(
                f"{out} exists and is not a fedyolo bundle; choose an empty or new --out folder"
            )
        return None
    existing = read_manifest(out)
    if task_id in existing.tasks and not force:
        raise BundleError(
            f"task {task_id!r} is already in {out}; pass --force to replace it, or pick another --task"
        )
    return existing


def check_stored_backbone(out: Path, existing: Manifest, blob: BackboneBlob) -> None:
    """Refuse to add a task unless `out` stores this export's backbone, intact: the blob's sha256 is the
    manifest's, and backbone.bin holds the blob's bytes (compared, not hashed a second time)."""
    check_same_backbone(existing, blob, out)
    backbone = out / BACKBONE_FILE
    if not same_bytes(backbone, blob.data):
        raise BundleError(
            f"{backbone} is missing or fails its sha256 check; re-export the bundle into a new folder"
        )


def check_same_backbone(existing: Manifest, blob: BackboneBlob, out: Path) -> None:
    """Refuse to add a task over a backbone other than the one `out` stores."""
    if existing.backbone.file.sha256 != blob.sha256:
        dtype = backbone_dtype(blob.tensors)
        if existing.backbone.dtype != dtype:
            raise BundleError(
                f"{out} stores its backbone as {existing.backbone.dtype} and this export asks for {dtype}; "
                f"export with --backbone-dtype {existing.backbone.dtype}, or into a new --out folder"
            )
        raise BundleError(
            f"{out} already holds another backbone ({existing.backbone.id}, sha256 "
            f"{existing.backbone.file.sha256[:12]}…); export into a new --out folder, or use that backbone"
        )


def _trainable_checkpoint(
    model: TaskModel, trainable: dict[str, tuple[int, ...]], path: Path
) -> dict[str, np.ndarray]:
    params = dict(model.named_parameters())
    weights = {n: params[n].detach().cpu().numpy().astype(np.float32) for n in trainable}
    shutil.rmtree(path, ignore_errors=True)
    path.unlink(missing_ok=True)
    protos = [numpy_helper.from_array(w, name=n) for n, w in weights.items()]
    onnxblock.save_checkpoint((protos, []), str(path))
    return weights


def _write_task_files(
    task_dir: Path,
    model: TaskModel,
    layout: BackboneLayout,
    tensors: dict[str, TensorSpec],
    artifacts: OnnxArtifacts,
) -> dict[str, np.ndarray]:
    params = dict(model.named_parameters())
    frozen = []
    for gname in artifacts.frozen:
        pid = id(params[gname])
        frozen.append((gname, stored_name(layout, pid), pid in layout.transposed))
    location = relative_backbone_location()
    for graph in (TRAINING_MODEL, EVAL_MODEL):
        externalize_frozen(task_dir / graph, frozen, tensors, location, _graph_rewrites(tensors))
    weights = _trainable_checkpoint(model, artifacts.trainable, task_dir / CHECKPOINT)
    save_file(weights, str(task_dir / MODULE_WEIGHTS))
    # the page loads the backbone as one float buffer (web_form.py): a browser form for fp32 backbones only
    if backbone_dtype(tensors.values()) == "float32":
        write_web_form(task_dir, weights, list(artifacts.trainable), tensors)  # what a browser trains
    return weights


def write_task(
    out: Path,
    backbone: Backbone,
    layout: BackboneLayout,
    blob: BackboneBlob,
    model: TaskModel,
    artifacts: OnnxArtifacts,
    task: TaskExport,
    force: bool = False,
) -> Manifest:
    """Move `artifacts` (written in a temp task folder) into the bundle at `out` as task `task.task_id`.

    `blob` is backbone.bin as this export built it; a bundle already at `out` must store the same one.
    """
    tensors = {t.name: t for t in blob.tensors}
    existing = check_out(out, task.task_id, force)  # again: `out` may have changed during the export
    if existing is not None:
        check_same_backbone(existing, blob, out)

    _write_task_files(artifacts.directory, model, layout, tensors, artifacts)
    files = {
        name: file_entry(artifacts.directory / name)
        for name in (TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL, CHECKPOINT, MODULE_WEIGHTS, *WEB_FILES)
        if (artifacts.directory / name).exists()
    }
    params = dict(model.named_parameters())
    spec = TaskSpec(
        task_id=task.task_id,
        module_kind=task.module_kind,
        module_config=task.module_config,
        labels=task.labels,
        input=InputSpec(
            kind=backbone.architecture,
            names=artifacts.input_names,
            max_length=task.max_length if backbone.architecture == "text" else 0,
            image_shape=backbone.image_shape,
        ),
        trainable=tuple(TensorSpec(n, tuple(params[n].shape)) for n in artifacts.trainable),
        optimizer=task.optimizer,
        files=files,
        wire_dtype=task.wire_dtype,
        loss_output=_loss_output(artifacts.directory / EVAL_MODEL),
    )

    if existing is None:
        return _new_bundle(out, backbone, layout, blob, artifacts.directory, spec)
    return _add_task(out, existing, artifacts.directory, spec)


def _loss_output(eval_graph: Path) -> str:
    outputs = [o.name for o in onnx.load(str(eval_graph), load_external_data=False).graph.output]
    return str(next(o for o in outputs if o != "logits"))


def _new_bundle(
    out: Path,
    backbone: Backbone,
    layout: BackboneLayout,
    blob: BackboneBlob,
    task_src: Path,
    spec: TaskSpec,
) -> Manifest:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / BACKBONE_FILE).parent.mkdir(parents=True)
        (tmp / BACKBONE_FILE).write_bytes(blob.data)
        tokenizer = None
        if backbone.tokenizer_path is not None:
            shutil.copyfile(backbone.tokenizer_path, tmp / TOKENIZER_FILE)
            tokenizer = file_entry(tmp / TOKENIZER_FILE)
        (tmp / "tasks").mkdir()
        shutil.move(str(task_src), tmp / "tasks" / spec.task_id)
        manifest = Manifest(
            backbone=_backbone_spec(backbone, layout, blob),
            tasks={spec.task_id: spec},
            tokenizer=tokenizer,
            fedyolo_version=__version__,
        )
        _write_manifest(tmp, manifest)
        _usual_modes(tmp)
        if out.exists():
            out.rmdir()  # empty (checked by the caller)
        os.replace(tmp, out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _add_task(out: Path, existing: Manifest, task_src: Path, spec: TaskSpec) -> Manifest:
    final = out / "tasks" / spec.task_id
    staged = Path(tempfile.mkdtemp(prefix=f".{spec.task_id}.tmp-", dir=out / "tasks"))
    old = out / "tasks" / f".{spec.task_id}.old"
    shutil.rmtree(old, ignore_errors=True)  # left by an export that was killed
    placed = False
    try:
        for item in task_src.iterdir():
            shutil.move(str(item), staged / item.name)
        _usual_modes(staged)
        manifest = dataclasses.replace(existing, tasks={**existing.tasks, spec.task_id: spec})
        if final.exists():
            os.replace(final, old)
        os.replace(staged, final)
        placed = True
        _write_manifest(out, manifest)
        shutil.rmtree(old, ignore_errors=True)
        return manifest
    except BaseException:
        # The manifest was not swapped: put the task folder back as the old manifest describes it.
        shutil.rmtree(staged, ignore_errors=True)
        if placed:
            shutil.rmtree(final, ignore_errors=True)
        if old.exists():
            os.replace(old, final)
        raise


def _usual_modes(root: Path) -> None:
    """mkdtemp makes 0700 folders and safetensors writes 0600 files: give `root` the modes any new file
    gets under the umask, so a server or another user can read the bundle."""
    umask = os.umask(0)
    os.umask(umask)
    for path in (root, *root.rglob("*")):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _write_manifest(root: Path, manifest: Manifest) -> None:
    write_atomic(root / MANIFEST_NAME, manifest.to_json().encode(), mode=0o666)  # 0666 less the umask
