"""The ExecuTorch backend: a task's `program.pte` trained over the bundle's shared `backbone.ptd`.

The program runs on fedyolo's runner library (`et_program`: ExecuTorch's C++ runtime through ctypes,
numpy in and out), not on ExecuTorch's Python bindings, which link libtorch: like the ORT path, this
backend never loads torch. Upstream ships only SGD, so the optimisers are written here in numpy over the
program's own parameter memory (its parameter outputs are views of it): AdamW with ONNX Runtime
training's settings, so both backends follow the same trajectory from the same module.

The program is planned for a fixed batch (`TaskSpec.executorch_batch`): a smaller batch is padded with
rows labelled -100, which the loss ignores; a larger one is cut into pieces whose gradients are summed
weighted by their rows, which is the gradient of the whole batch's mean loss. Text runs at the length
of the batch's longest text (`bucketing`), down to the shortest the program takes
(`TaskSpec.executorch_min_length`; programs exported before it take only `max_length`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from fedyolo.runtime import et_kernels
from fedyolo.runtime.bucketing import trim_padding
from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.errors import BundleError
from fedyolo.runtime.et_program import Output, Program, ProgramError, runner
from fedyolo.runtime.executorch_files import BACKBONE_DATA_FILE, IGNORE_LABEL, PROGRAM
from fedyolo.runtime.fedprox import proximal_step, proximal_target
from fedyolo.runtime.manifest import TaskSpec, sha256_file
from fedyolo.runtime.trainer import Batch, EvalResult, evaluate_batches
from fedyolo.runtime.wire import ModuleWeights, check_module

PREFIX = "model."  # the exported program wraps the task model as `model`
METHOD = "forward"  # the joint forward/backward method of program.pte
# ONNX Runtime training's AdamW as `generate_artifacts` builds it (onnxblock.optim.AdamW defaults):
# betas (0.9, 0.999), eps 1e-6, no weight decay, bias correction, the transformers form (adam_mode 1).
BETAS = (0.9, 0.999)
EPS = 1e-6


def check_program(bundle: Bundle, task_id: str) -> TaskSpec:
    """The task, when the bundle holds its ExecuTorch program; otherwise say how to export one."""
    task = bundle.task(task_id)
    if PROGRAM not in task.files or task.executorch_batch < 1:
        raise BundleError(
            f"task {task_id!r} has no ExecuTorch program in {bundle.root}; add one with `fedyolo export "
            f"executorch --task {task_id} --module {task.module_kind} --out {bundle.root}`, or use --backend ort"
        )
    entry = bundle.manifest.backbone.executorch_data
    data = bundle.root / BACKBONE_DATA_FILE
    if entry is not None and (not data.is_file() or sha256_file(data) != entry.sha256):
        raise BundleError(
            f"{data} is missing or fails its sha256 check; re-export with `fedyolo export executorch`"
        )
    return task


class ExecutorchTrainer:
    """`Trainer` over ExecuTorch: step, evaluate, predict, get/set the module, FedProx; AdamW or SGD."""

    def __init__(self, bundle: Bundle, task_id: str, lr: float = 1e-3, threads: int = 0) -> None:
        self.bundle = bundle
        runner()  # first: without the runner library, exporting a program would not help
        self.task: TaskSpec = check_program(bundle, task_id)
        data = bundle.root / BACKBONE_DATA_FILE
        path = bundle.task_file(task_id, PROGRAM)
        if et_kernels.program_needs_kernels(path):
            et_kernels.load(threads)  # registers fedyolo's GEMM kernels before the program looks them up
        try:
            program = Program(path, data if data.is_file() else None)
            program.load_method(METHOD)
        except ProgramError as e:
            raise BundleError(
                f"ExecuTorch cannot load task {task_id!r} ({e}); re-export it with `fedyolo export executorch`"
            ) from e
        self._program = program
        self._batch = self.task.executorch_batch
        self._min_length = self.task.executorch_min_length  # 0: a fixed length, no trimming
        self._names = [t.name for t in self.task.trainable]
        self._features = [n for n in self.task.input.names if n != "labels"]
        # The joint program returns [user outputs, gradients, parameters]; its metadata methods (what
        # `extension.training.TrainingModule` reads) give where each part starts and the tensors' names.
        self._grad_start = self._integer(f"__et_training_gradients_index_{METHOD}")
        self._param_start = self._integer(f"__et_training_parameters_index_{METHOD}")
        fqns = [str(n) for n in program.run(f"__et_training_fqn_{METHOD}")]
        index = {fqn.removeprefix(PREFIX): i for i, fqn in enumerate(fqns)}
        if set(index) != set(self._names):
            raise BundleError(
                f"program.pte of task {task_id!r} trains other tensors than its manifest lists; "
                "re-export it with `fedyolo export executorch --force`"
            )
        self._index = [index[n] for n in self._names]
        outputs = self._call(self._padded({n: self._zeros(n, 1) for n in self._features}, 0, 1))
        # numpy views of the program's parameter memory (outputs not cloned): writing them in place is
        # what the program trains on
        self._params = {
            n: self._tensor(outputs[self._param_start + i])
            for n, i in zip(self._names, self._index, strict=True)
        }
        self._lr = lr
        self._proximal: tuple[ModuleWeights, float] | None = None
        self._reset_optimizer()

    def _integer(self, method: str) -> int:
        value = self._program.run(method)[0]
        if not isinstance(value, int):
            raise BundleError(
                f"{method} of task {self.task.task_id!r} returns {value!r}, not an int; re-export it"
            )
        return value

    def _tensor(self, value: Output) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise BundleError(
                f"program.pte of task {self.task.task_id!r} returns {value!r} where a tensor was due"
            )
        return value

    def _zeros(self, name: str, n: int) -> np.ndarray:
        if name == "pixel_values":
            return np.zeros((n, *self.task.input.image_shape), np.float32)
        return np.ones((n, self.task.input.max_length), np.int64)

    def _reset_optimizer(self) -> None:
        self._t = 0
        self._m = {n: np.zeros_like(p) for n, p in self._params.items()}
        self._v = {n: np.zeros_like(p) for n, p in self._params.items()}

    def _padded(self, batch: Batch, start: int, stop: int) -> list[np.ndarray]:
        """Rows start..stop of `batch` as the program's inputs, padded to its batch with ignored rows."""
        rows = stop - start
        pad = self._batch - rows
        inputs = []
        for name in self._features:
            want = np.float32 if name == "pixel_values" else np.int64
            arr = np.ascontiguousarray(batch[name][start:stop], want)
            if pad:
                arr = np.concatenate([arr, np.repeat(arr[:1], pad, axis=0)])
            inputs.append(arr)
        labels = np.full(self._batch, IGNORE_LABEL, np.int64)
        if "labels" in batch:
            labels[:rows] = batch["labels"][start:stop]
        inputs.append(labels)
        return inputs

    def _call(self, inputs: list[np.ndarray]) -> list[Output]:
        """The program's outputs: views of its memory (not copies), valid until the next call."""
        return self._program.run(METHOD, inputs)

    def _run(self, inputs: list[np.ndarray]) -> tuple[float, np.ndarray, list[np.ndarray]]:
        """Loss, a copy of the logits, and the gradients (valid until the next call)."""
        out = self._call(inputs)
        grads = [self._tensor(out[self._grad_start + i]) for i in self._index]
        return float(self._tensor(out[0])), np.array(self._tensor(out[1])), grads

    def _trimmed(self, batch: Batch) -> Batch:
        """`batch` at the length of its longest text, when the program's length is dynamic."""
        return trim_padding(batch, self._min_length) if self._min_length else batch

    def _pieces(self, batch: Batch) -> Iterator[tuple[int, int]]:
        missing = [n for n in (*self._features, "labels") if n not in batch]
        if missing:
            raise ValueError(f"batch lacks inputs {missing}; the task takes {[*self._features, 'labels']}")
        n = len(batch["labels"])
        for start in range(0, n, self._batch):
            yield start, min(n, start + self._batch)

    def gradients(self, batch: Batch) -> tuple[float, ModuleWeights]:
        """Loss and gradients of the trainable tensors on `batch`, without stepping (parity checks)."""
        n = len(batch["labels"])
        batch = self._trimmed(batch)
        loss = 0.0
        grads = {name: np.zeros_like(p) for name, p in self._params.items()}
        for start, stop in self._pieces(batch):
            piece_loss, _, piece_grads = self._run(self._padded(batch, start, stop))
            weight = (stop - start) / n
            loss += weight * piece_loss
            for name, g in zip(self._names, piece_grads, strict=True):
                grads[name] += weight * g
        return loss, grads

    def step(self, batch: Batch) -> float:
        """Forward, backward and one optimiser step; the loss before the step."""
        loss, grads = self.gradients(batch)
        if self.task.optimizer == "sgd":
            for name, p in self._params.items():
                p -= self._lr * grads[name]
        else:
            self._adamw(grads)
        if self._proximal is not None:
            global_weights, mu = self._proximal
            self._write_module(proximal_step(self.get_module(), global_weights, self._lr, mu))
        return loss

    def _adamw(self, grads: ModuleWeights) -> None:
        """ONNX Runtime's AdamW (adam_mode 1, bias-corrected step size), in place over the program."""
        self._t += 1
        b1, b2 = BETAS
        step_size = self._lr * np.sqrt(1 - b2**self._t) / (1 - b1**self._t)
        for name, p in self._params.items():
            g, m, v = grads[name], self._m[name], self._v[name]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (step_size * m / (np.sqrt(v) + EPS)).astype(np.float32)

    def _eval(self, batch: Batch) -> tuple[float, np.ndarray]:
        feed = dict(self._trimmed(batch))
        feed.setdefault("labels", np.zeros(len(next(iter(batch.values()))), dtype=np.int64))
        n = len(feed["labels"])
        loss, logits = 0.0, []
        for start, stop in self._pieces(feed):
            piece_loss, piece_logits, _ = self._run(self._padded(feed, start, stop))
            loss += (stop - start) / n * piece_loss
            logits.append(piece_logits[: stop - start])
        return loss, np.concatenate(logits)

    def predict(self, batch: Batch) -> np.ndarray:
        return self._eval(batch)[1]

    def evaluate(self, batches: Iterable[Batch]) -> EvalResult:
        return evaluate_batches(self._eval, batches)

    def get_module(self) -> ModuleWeights:
        return {n: np.array(p) for n, p in self._params.items()}

    def set_module(self, weights: ModuleWeights) -> None:
        """Start afresh from `weights`: new AdamW moments, and no proximal pull until `set_proximal`."""
        check_module(weights, self.task)
        self._write_module(weights)
        self._reset_optimizer()
        self._proximal = None

    def set_proximal(self, global_weights: ModuleWeights, mu: float) -> None:
        """After each step, pull the module towards `global_weights` by `lr * mu`; `mu = 0` turns it off."""
        self._proximal = proximal_target(global_weights, mu, self.task)

    def _write_module(self, weights: ModuleWeights) -> None:
        for name, p in self._params.items():
            p[...] = np.asarray(weights[name], np.float32).reshape(p.shape)

    def set_learning_rate(self, lr: float) -> None:
        self._lr = lr
