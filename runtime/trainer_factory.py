"""One factory for every place that builds a trainer: `--backend ort|executorch` (named apart from main's
`runtime/backends.py` registry, which opens `ExecutorchTrainer(bundle, task_id, threads=...)` the same way).

ONNX Runtime is the default and needs nothing beyond the base install; ExecuTorch is an extra whose
Python bindings load libtorch, so its module is imported only when it is asked for.
"""

from __future__ import annotations

from typing import Any

from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.trainer import Trainer

BACKENDS = ("ort", "executorch")


def check_backend(backend: str) -> str:
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
    if check_backend(backend) == "executorch":
        from fedyolo.runtime.executorch_trainer import ExecutorchTrainer

        return ExecutorchTrainer(bundle, task_id, lr=lr, threads=threads)
    from fedyolo.runtime.ort_trainer import OrtTrainer

    return OrtTrainer(bundle, task_id, backbone=shared, lr=lr, threads=threads)
