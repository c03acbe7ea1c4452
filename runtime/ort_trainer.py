"""The ONNX Runtime training backend: a task's module trained over the shared frozen backbone.

Loaded once: `SharedBackbone` maps backbone.bin into memory (np.memmap, so the page cache is the only
copy) and hands the same OrtValue per frozen tensor to every session of every task through
`SessionOptions.add_initializer`, and every session allocates from one shared CPU arena (ort_arena.py):
a second task costs its graphs and its module's state, neither a backbone nor a second activation arena.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from fedyolo.runtime.bucketing import trim_padding
from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.errors import BundleError
from fedyolo.runtime.fedprox import proximal_step, proximal_target
from fedyolo.runtime.manifest import CHECKPOINT, EVAL_MODEL, OPTIMIZER_MODEL, TRAINING_MODEL, TaskSpec
from fedyolo.runtime.ort_arena import use_shared_arena
from fedyolo.runtime.ort_import import load_ort
from fedyolo.runtime.trainer import Batch, EvalResult, evaluate_batches
from fedyolo.runtime.wire import ModuleWeights, check_module

log = logging.getLogger(__name__)


def cpu_device() -> Any:
    C = load_ort()
    return C.OrtDevice(C.OrtDevice.cpu(), C.OrtDevice.default_memory(), 0)


class SharedBackbone:
    """backbone.bin, memory-mapped once, as one OrtValue per frozen tensor for every session."""

    def __init__(self, bundle: Bundle, mmap: bool = True, shared_arena: bool = True) -> None:
        self._C = load_ort()
        # shared_arena=False: an arena per session, as before (benchmarks/resident.py's other arm)
        self.shared_arena = shared_arena
        from onnxruntime.capi.onnxruntime_inference_collection import OrtValue

        self.path = bundle.backbone_path
        # mmap: the page cache holds the only copy, shared with every process that maps the file too;
        # mmap=False reads a private copy (what a runtime without sharing would hold per task).
        self._map = (
            np.memmap(self.path, dtype=np.uint8, mode="r") if mmap else np.fromfile(self.path, np.uint8)
        )
        self.arrays: dict[str, np.ndarray] = {}
        self.values: dict[str, Any] = {}
        device = cpu_device()
        for t in bundle.manifest.backbone.tensors:
            arr = self._map[t.offset : t.offset + t.length].view(np.dtype(t.dtype)).reshape(t.shape)
            self.arrays[t.name] = arr
            # add_initializer takes the Python OrtValue wrapper, which also keeps `arr` alive.
            self.values[t.name] = OrtValue(self._C.OrtValue.ortvalue_from_numpy(arr, device), arr)

    def session_options(self, threads: int = 0) -> Any:
        """Session options with every backbone tensor added as a shared initializer."""
        options = self._C.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if self.shared_arena:
            use_shared_arena(options)
        for name, value in self.values.items():
            options.add_initializer(name, value)
        return options


class OrtTrainer:
    """`Trainer` over ONNX Runtime training: step, evaluate, predict, get/set the module.

    Also a `ProximalTrainer`: FedProx's pull is applied inside `step`, so AdamW keeps its moments.
    """

    # ONNX Runtime objects, rebuilt together by `_load` (training API types have no stubs).
    _state: Any
    _module: Any
    _optimizer: Any

    def __init__(
        self,
        bundle: Bundle,
        task_id: str,
        backbone: SharedBackbone | None = None,
        lr: float = 1e-3,
        threads: int = 0,
    ) -> None:
        self._C = load_ort()
        self.bundle = bundle
        self.task: TaskSpec = bundle.task(task_id)
        self.backbone = backbone if backbone is not None else SharedBackbone(bundle)
        self._threads = threads
        self._task_dir = bundle.task_dir(task_id)
        self._device = cpu_device()
        self._options = self.backbone.session_options(threads)
        self._optimizer_path = str(self._task_dir / OPTIMIZER_MODEL)
        # FedProx: the round's global module and mu, applied after each step; None while off.
        self._proximal: tuple[ModuleWeights, float] | None = None
        self._load()
        self._lr = lr
        self.set_learning_rate(lr)
        self._train_inputs = list(self._module.input_names(True))
        self._eval_inputs = list(self._module.input_names(False))

    def _load(self) -> None:
        """A fresh checkpoint state, training module and optimiser (~0.2 s with a shared backbone).

        The only way to zero AdamW's moments and step: a new `Optimizer` over an existing state resumes
        the moments stored in it (ORT 1.19 exposes no reset), so a new round would inherit the last one's.
        """
        # Free the old objects first, users before what they use: the optimiser and the module hold raw
        # pointers into the state, and a state freed under them corrupts the heap.
        self._optimizer = self._module = self._state = None
        try:
            self._state = self._C.load_checkpoint(str(self._task_dir / CHECKPOINT))
            self._module = self._C.Module(
                str(self._task_dir / TRAINING_MODEL),
                self._state,
                str(self._task_dir / EVAL_MODEL),
                self._device,
                self._options,
            )
        except Exception as e:  # ORT raises its own types for unreadable graphs
            raise BundleError(
                f"ONNX Runtime cannot load task {self.task.task_id!r} ({e}); re-export the task"
            ) from e
        self._optimizer = self._new_optimizer()

    def _new_optimizer(self) -> Any:
        return self._C.Optimizer(self._optimizer_path, self._state, self._device, self._options)

    def _feed(self, batch: Batch, names: list[str]) -> list[np.ndarray]:
        batch = trim_padding(batch)  # length bucketing: no step pays for columns that are all padding
        missing = [n for n in names if n not in batch]
        if missing:
            raise ValueError(f"batch lacks inputs {missing}; the task takes {names}")
        feed = []
        for name in names:
            arr = batch[name]
            want = np.float32 if name == "pixel_values" else np.int64
            feed.append(np.ascontiguousarray(arr, dtype=want))
        return feed

    def step(self, batch: Batch) -> float:
        """Forward, backward and one optimiser step; the loss before the step."""
        outputs = self._C.OrtValueVector()
        self._module.train_step(self._feed(batch, self._train_inputs), outputs)
        self._optimizer.optimizer_step()
        self._module.lazy_reset_grad()
        if self._proximal is not None:
            global_weights, mu = self._proximal
            self._write_module(proximal_step(self.get_module(), global_weights, self._lr, mu))
        return float(outputs[0].numpy())

    def gradients(self, batch: Batch) -> tuple[float, ModuleWeights]:
        """Loss and gradients of the trainable tensors on `batch`, without stepping (parity checks)."""
        outputs = self._C.OrtValueVector()
        self._module.lazy_reset_grad()
        self._module.train_step(self._feed(batch, self._train_inputs), outputs)
        grads = {
            t.name: np.array(self._state.get_parameter(t.name).grad.numpy()) for t in self.task.trainable
        }
        self._module.lazy_reset_grad()
        return float(outputs[0].numpy()), grads

    def _eval(self, batch: Batch) -> tuple[float, np.ndarray]:
        outputs = self._C.OrtValueVector()
        feed = dict(batch)
        feed.setdefault("labels", np.zeros(len(next(iter(batch.values()))), dtype=np.int64))
        self._module.eval_step(self._feed(feed, self._eval_inputs), outputs)
        return float(outputs[0].numpy()), outputs[1].numpy()

    def predict(self, batch: Batch) -> np.ndarray:
        return self._eval(batch)[1]

    def evaluate(self, batches: Iterable[Batch]) -> EvalResult:
        return evaluate_batches(self._eval, batches)

    def get_module(self) -> ModuleWeights:
        return {t.name: np.array(self._state.get_parameter(t.name).data.numpy()) for t in self.task.trainable}

    def set_module(self, weights: ModuleWeights) -> None:
        """Start afresh from `weights`: new AdamW moments, and no proximal pull until `set_proximal`."""
        check_module(weights, self.task)
        self._load()  # fresh AdamW moments: a new round starts from the global module alone
        # The pull's target is the previous round's global module; a new round names its own.
        self._proximal = None
        self._write_module(weights)
        self.set_learning_rate(self._lr)

    def set_proximal(self, global_weights: ModuleWeights, mu: float) -> None:
        """After each step, pull the module towards `global_weights` by `lr * mu`; `mu = 0` turns it off."""
        self._proximal = proximal_target(global_weights, mu, self.task)

    def _write_module(self, weights: ModuleWeights) -> None:
        """Copy `weights` into the checkpoint state; the optimiser's moments are left as they are."""
        for t in self.task.trainable:
            value = self._C.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(weights[t.name], np.float32), self._device
            )
            self._state.copy_parameter_from(t.name, value)

    def set_learning_rate(self, lr: float) -> None:
        self._lr = lr
        self._optimizer.set_learning_rate(lr)
