"""The bundle contract: manifest.json, read by every client, the server and the exporter.

Plain Python on purpose: a phone, a Jetson and the server read it without torch.

Layout of a bundle::

    manifest.json
    backbone/backbone.bin      frozen tensors, stored once for any number of tasks
    tokenizer.json             (text backbones)
    tasks/<task_id>/           training/eval/optimizer graphs, checkpoint, module.safetensors
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedyolo.runtime.errors import BundleError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
BACKBONE_FILE = "backbone/backbone.bin"
TOKENIZER_FILE = "tokenizer.json"
TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Per-task files, relative to tasks/<task_id>/.
TRAINING_MODEL = "training_model.onnx"
EVAL_MODEL = "eval_model.onnx"
OPTIMIZER_MODEL = "optimizer_model.onnx"
CHECKPOINT = "checkpoint"
MODULE_WEIGHTS = "module.safetensors"


@dataclass(frozen=True)
class FileEntry:
    """A file of the bundle with its content hash and size."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: a trainable module parameter, or a frozen backbone tensor in backbone.bin."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    offset: int = 0  # backbone tensors only: byte offset in backbone.bin
    length: int = 0  # backbone tensors only: byte length in backbone.bin

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class BackboneSpec:
    """The frozen backbone: one file, hashed, with the offset of every tensor in it."""

    id: str
    architecture: str  # "text" (BERT family) or "image" (ViT family)
    model_type: str
    hidden_size: int
    num_layers: int
    file: FileEntry
    tensors: tuple[TensorSpec, ...]
    dtype: str = "float32"
    full_model_bytes: int = 0  # fp32 bytes of every backbone parameter: what full fine-tuning sends
    executorch_data: FileEntry | None = None  # backbone/backbone.ptd, when a task has an ExecuTorch program


@dataclass(frozen=True)
class InputSpec:
    """What the graphs take: token ids + mask for text, pixel values for images."""

    kind: str  # "text" or "image"
    names: tuple[str, ...]
    max_length: int = 0  # text: tokens per example
    image_shape: tuple[int, ...] = ()  # image: (channels, height, width)


@dataclass(frozen=True)
class TaskSpec:
    """One task: a module over the shared backbone, its labels, its graphs and its weights."""

    task_id: str
    module_kind: str
    module_config: dict[str, Any]
    labels: tuple[str, ...]
    input: InputSpec
    trainable: tuple[TensorSpec, ...]
    optimizer: str
    files: dict[str, FileEntry]
    wire_dtype: str = "float32"
    loss_output: str = "loss"
    logits_output: str = "logits"
    executorch_batch: int = 0  # examples per call of program.pte; 0: no ExecuTorch program
    # the shortest text program.pte takes (its longest is input.max_length); 0: it takes max_length only
    executorch_min_length: int = 0

    @property
    def module_numel(self) -> int:
        return sum(t.numel for t in self.trainable)

    @property
    def module_bytes(self) -> int:
        """fp32 bytes of the module: what it weighs in memory."""
        return 4 * self.module_numel

    @property
    def wire_bytes(self) -> int:
        """Tensor bytes of one module transfer in the manifest's wire dtype (safetensors adds a header)."""
        return (2 if self.wire_dtype == "float16" else 4) * self.module_numel


@dataclass(frozen=True)
class Manifest:
    """manifest.json as typed data."""

    backbone: BackboneSpec
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    tokenizer: FileEntry | None = None
    schema_version: int = SCHEMA_VERSION
    fedyolo_version: str = ""

    def task(self, task_id: str) -> TaskSpec:
        """The task named `task_id`, or a BundleError that lists the tasks there are."""
        if task_id not in self.tasks:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise BundleError(
                f"task {task_id!r} is not in this bundle (tasks: {known}); export it with "
                f"`fedyolo export onnx --task {task_id} --out <bundle>`"
            )
        return self.tasks[task_id]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        """Build from parsed JSON, checking the schema version before anything else."""
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"manifest schema_version is {version!r}, this fedyolo reads {SCHEMA_VERSION}; "
                "re-export the bundle with this fedyolo, or install the fedyolo that wrote it"
            )
        try:
            bb = raw["backbone"]
            backbone = BackboneSpec(
                id=bb["id"],
                architecture=bb["architecture"],
                model_type=bb["model_type"],
                hidden_size=int(bb["hidden_size"]),
                num_layers=int(bb["num_layers"]),
                file=FileEntry(**bb["file"]),
                tensors=tuple(_tensor(t) for t in bb["tensors"]),
                dtype=bb.get("dtype", "float32"),
                full_model_bytes=int(bb.get("full_model_bytes", 0)),
                executorch_data=FileEntry(**bb["executorch_data"]) if bb.get("executorch_data") else None,
            )
            tasks = {tid: _task(t) for tid, t in raw.get("tasks", {}).items()}
            tok = raw.get("tokenizer")
            return cls(
                backbone=backbone,
                tasks=tasks,
                tokenizer=FileEntry(**tok) if tok else None,
                schema_version=SCHEMA_VERSION,
                fedyolo_version=raw.get("fedyolo_version", ""),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(
                f"manifest.json is malformed ({type(e).__name__}: {e}); re-export the bundle"
            ) from e


def _tensor(raw: dict[str, Any]) -> TensorSpec:
    return TensorSpec(
        name=raw["name"],
        shape=tuple(int(d) for d in raw["shape"]),
        dtype=raw.get("dtype", "float32"),
        offset=int(raw.get("offset", 0)),
        length=int(raw.get("length", 0)),
    )


def _task(raw: dict[str, Any]) -> TaskSpec:
    inp = raw["input"]
    return TaskSpec(
        task_id=raw["task_id"],
        module_kind=raw["module_kind"],
        module_config=dict(raw["module_config"]),
        labels=tuple(raw["labels"]),
        input=InputSpec(
            kind=inp["kind"],
            names=tuple(inp["names"]),
            max_length=int(inp.get("max_length", 0)),
            image_shape=tuple(int(d) for d in inp.get("image_shape", ())),
        ),
        trainable=tuple(_tensor(t) for t in raw["trainable"]),
        optimizer=raw["optimizer"],
        files={name: FileEntry(**f) for name, f in raw["files"].items()},
        wire_dtype=raw.get("wire_dtype", "float32"),
        loss_output=raw.get("loss_output", "loss"),
        logits_output=raw.get("logits_output", "logits"),
        executorch_batch=int(raw.get("executorch_batch", 0)),
        executorch_min_length=int(raw.get("executorch_min_length", 0)),
    )


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: str | os.PathLike[str]) -> FileEntry:
    """Hash and size of one file."""
    return FileEntry(sha256=sha256_file(path), bytes=os.path.getsize(path))


def read_manifest(bundle_dir: str | os.PathLike[str]) -> Manifest:
    """Read and parse `bundle_dir/manifest.json` (no file hashing; see `bundle.open_bundle`)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(
            f"{bundle_dir} is not a fedyolo bundle (no {MANIFEST_NAME}); "
            "create one with `fedyolo export onnx --out <dir>`"
        )
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); re-export the bundle") from e
    if not isinstance(raw, dict):
        raise BundleError(f"{path} is not a JSON object; re-export the bundle")
    return Manifest.from_dict(raw)


def check_task_id(task_id: str) -> str:
    """A task id is a short file-safe name: it becomes a folder and a URL segment."""
    if not TASK_ID_PATTERN.match(task_id):
        raise BundleError(
            f"task id {task_id!r} is not allowed; use letters, digits, '_', '-', '.' (at most 64, "
            "starting with a letter or digit)"
        )
    return task_id
