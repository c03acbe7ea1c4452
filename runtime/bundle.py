"""Open a bundle: schema version first, then the sha256 of every file a task needs."""

from __future__ import annotations

import os
from collections.abc import Mapping
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


def _verify(path: Path, entry: FileEntry, what: str, checked: str | None = None) -> None:
    if not path.is_file():
        raise BundleError(f"{what} is missing ({path}); re-export or re-download the bundle")
    size = os.path.getsize(path)
    if size != entry.bytes:
        raise BundleError(
            f"{what} has {size} bytes, the manifest says {entry.bytes}: the file is truncated or "
            "replaced; re-export or re-download the bundle"
        )
    if checked != entry.sha256 and sha256_file(path) != entry.sha256:
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


def open_bundle(
    root: str | os.PathLike[str],
    tasks: list[str] | None = None,
    verify: bool = True,
    checked: Mapping[str, str] | None = None,
) -> Bundle:
    """Read the manifest and check the backbone, tokenizer and the files of `tasks` (all when None).

    checked: files the caller has just hashed itself (path in the bundle -> sha256), e.g. while syncing
    the bundle; one whose hash is the manifest's is not read again (90 MB for a backbone).
    """
    path = Path(root)
    manifest = read_manifest(path)
    bundle = Bundle(root=path, manifest=manifest)
    wanted = list(manifest.tasks) if tasks is None else tasks
    for task_id in wanted:
        manifest.task(task_id)  # a clear error for an unknown task, before hashing 90 MB
        _check_names(task_id, manifest.tasks[task_id])
    if verify:
        known = checked or {}
        _verify(bundle.backbone_path, manifest.backbone.file, "the backbone file", known.get(BACKBONE_FILE))
        if manifest.tokenizer is not None:
            _verify(bundle.tokenizer_path, manifest.tokenizer, "tokenizer.json", known.get(TOKENIZER_FILE))
        for task_id in wanted:
            for name, entry in manifest.tasks[task_id].files.items():
                key = f"tasks/{task_id}/{name}"
                _verify(bundle.task_file(task_id, name), entry, f"{name} of task {task_id!r}", known.get(key))
    return bundle


def initial_module(bundle: Bundle, task_id: str) -> ModuleWeights:
    """The task's module as exported: round 0 of every federation and of every local baseline."""
    task = bundle.task(task_id)
    return decode_module(bundle.task_file(task_id, MODULE_WEIGHTS).read_bytes(), task)
