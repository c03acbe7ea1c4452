"""The trainer backends a device may have, by name: what each needs, and how to open a task on it.

`make_trainer` is the one factory every place that builds a trainer goes through (`--backend ort|executorch`
on train, client, simulate; profile; the benchmarks). ONNX Runtime is the default and needs nothing beyond
the base install; ExecuTorch is an extra (its C++ runtime, run through fedyolo's runner library without
torch), so its trainer module is imported only when it is asked for.

Registered at import, a second backend of the same name refused (as PEFT registers its methods). A
backend that is not installed, or whose trainer this build lacks, is listed with the reason, so that
`fedyolo profile` shows its row as skipped instead of failing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.capacity import task_backends
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.trainer import Trainer

# (bundle, task id, threads, lr, shared backbone or None) -> a trainer
Opener = Callable[[Bundle, str, int, float, Any], Trainer]


@dataclass(frozen=True)
class Backend:
    """A trainer backend: the Python modules it needs and the function that opens a task on it."""

    name: str
    requires: tuple[str, ...]  # importable modules, found (not imported) to decide availability
    trainer_module: str  # the fedyolo module holding its trainer
    open: Opener
    install: str  # how to get what it requires

    def absent(self, bundle: Bundle | None = None, task_id: str | None = None) -> str | None:
        """Why this backend cannot run here (or cannot run `task_id` of `bundle`); None if it can."""
        for module in (*self.requires, self.trainer_module):
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                if module == self.trainer_module:
                    return f"this fedyolo has no {self.name} trainer ({module})"
                return f"{module} is not installed ({self.install})"
        if (
            bundle is not None
            and task_id is not None
            and self.name not in task_backends(bundle.task(task_id))
        ):
            return f"task {task_id!r} was not exported for {self.name}"
        return None


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add a backend by name; a second one of the same name is an error."""
    if backend.name in BACKENDS:
        raise ValueError(f"backend {backend.name!r} is already registered")
    BACKENDS[backend.name] = backend
    return backend


def _open_ort(bundle: Bundle, task_id: str, threads: int, lr: float, shared: Any) -> Trainer:
    from fedyolo.runtime.ort_trainer import OrtTrainer

    return OrtTrainer(bundle, task_id, backbone=shared, lr=lr, threads=threads)


def _open_executorch(bundle: Bundle, task_id: str, threads: int, lr: float, shared: Any) -> Trainer:
    # ExecuTorch maps the bundle's shared backbone data file itself: `shared` (ORT's) does not apply.
    from fedyolo.runtime.executorch_trainer import ExecutorchTrainer

    return ExecutorchTrainer(bundle, task_id, lr=lr, threads=threads)


def check_backend(backend: str) -> str:
    """`backend` if it is a known backend's name, else a FedyoloError listing them."""
    if backend not in BACKENDS:
        raise FedyoloError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    return backend


def make_trainer(
    bundle: Bundle,
    task_id: str,
    backend: str = "ort",
    lr: float = 1e-3,
    threads: int = 0,
    shared: Any = None,
) -> Trainer:
    """A trainer for `task_id` on `backend`. shared: ORT's `SharedBackbone`, loaded once for several
    tasks (ExecuTorch maps its shared backbone data file itself)."""
    return BACKENDS[check_backend(backend)].open(bundle, task_id, threads, lr, shared)


register_backend(
    Backend("ort", ("onnxruntime",), "fedyolo.runtime.ort_trainer", _open_ort, "pip install fedyolo")
)
register_backend(
    Backend(
        "executorch",
        ("executorch",),
        "fedyolo.runtime.executorch_trainer",
        _open_executorch,
        "pip install 'fedyolo[executorch]'",
    )
)
