"""Open a bundle: schema version first, then the sha256 of every file a task needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedyolo.runtime.errors import BundleError
from fedyolo.runtime.manifest import (
    BACKBONE_FILE,
    MODULE_WEIGHTS,
    TOKENIZER_FILE,
    FileEntry,
    Manifest,
    TaskSpec,
    check_task_id,
    read_manifest,
    sha256_file,
)
from fedyolo.runtime.wire import ModuleWeights, decode_module


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: Manifest

    @property
    def backbone_path(self) -> Path:
        return self.root / BACKBONE_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.root / TOKENIZER_FILE

    def task_dir(self, task_id: str) -> Path:
        return self.root / "tasks" / task_id

    def task_file(self, task_id: str, name: str) -> Path:
        return self.task_dir(task_id) / name

    def task(self, task_id: str) -> TaskSpec:
        return self.manifest.task(task_id)


def _verify(path: Path, entry: FileEntry, what: str) -> None:
    if not path.is_file():
        raise BundleError(f"{what} is missing ({path}); re-export or re-download the bundle")
    size = os.path.getsize(path)
    if size != entry.bytes:
        raise BundleError(
            f"{what} has {size} bytes, the manifest says {entry.bytes}: the file is truncated or "
            "replaced; re-export or re-download the bundle"
        )
    if sha256_file(path) != entry.sha256:
        raise BundleError(
            f"{what} fails its sha256 check ({path}): the file is corrupt or from another export; "
            "re-export or re-download the bundle"
        )


def _check_names(task_id: str, task: TaskSpec) -> None:
    # Task ids and file names become paths: a manifest from elsewhere must not reach outside the bundle.
    try:
        check_task_id(task_id)
    except BundleError as e:
        raise BundleError(f"the manifest's {e}; re-export or re-download the bundle") from e
    for name in task.files:
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise BundleError(
                f"task {task_id!r} lists a file {name!r} outside its folder; re-export or re-download the bundle"
            )


def open_bundle(root: str | os.PathLike[str], tasks: list[str] | None = None, verify: bool = True) -> Bundle:
    """Read the manifest and check the backbone, tokenizer and the files of `tasks` (all when None)."""
    path = Path(root)
    manifest = read_manifest(path)
    bundle = Bundle(root=path, manifest=manifest)
    wanted = list(manifest.tasks) if tasks is None else tasks
    for task_id in wanted:
        manifest.task(task_id)  # a clear error for an unknown task, before hashing 90 MB
        _check_names(task_id, manifest.tasks[task_id])
    if verify:
        _verify(bundle.backbone_path, manifest.backbone.file, "the backbone file")
        if manifest.tokenizer is not None:
            _verify(bundle.tokenizer_path, manifest.tokenizer, "tokenizer.json")
        for task_id in wanted:
            for name, entry in manifest.tasks[task_id].files.items():
                _verify(bundle.task_file(task_id, name), entry, f"{name} of task {task_id!r}")
    return bundle


def initial_module(bundle: Bundle, task_id: str) -> ModuleWeights:
    """The task's module as exported: round 0 of every federation and of every local baseline."""
    task = bundle.task(task_id)
    return decode_module(bundle.task_file(task_id, MODULE_WEIGHTS).read_bytes(), task)
