"""Local training on the device: encode a task's examples, run epochs through any `Trainer`, evaluate.

One loop, `local_steps`, serves the federated client's round (`train_round`), `fedyolo train`, the
simulation and the fully-local baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.data import (
    Example,
    TextEncoder,
    check_labels,
    iter_batches,
    label_ids,
    read_examples,
    read_image_arrays,
)
from fedyolo.runtime.errors import DataError
from fedyolo.runtime.fedprox import ProximalTrainer, proximal_step
from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.plan import RoundPlan
from fedyolo.runtime.trainer import EvalResult, ExampleArrays, Trainer
from fedyolo.runtime.wire import ModuleWeights

StepCallback = Callable[[int, float], None]  # (step index in the epoch, loss)


@dataclass(frozen=True)
class EpochLog:
    """One epoch: mean training loss, held-out metrics, wall time."""

    epoch: int
    train_loss: float
    test: EvalResult | None
    seconds: float
    steps: int


def encode_examples(
    bundle: Bundle, task: TaskSpec, examples: Sequence[Example], source: str = "the data"
) -> ExampleArrays:
    """Token ids, mask and label ids for text examples, checked against the task's labels."""
    if not examples:
        raise DataError(f"{source} holds no examples; give a file with at least one {{text, label}} row")
    if task.input.kind != "text":
        raise DataError(f"task {task.task_id!r} takes images; give a .npz with pixel_values and labels")
    check_labels(examples, task.labels, source)
    arrays = TextEncoder(bundle.tokenizer_path).encode([e.text for e in examples], task.input.max_length)
    arrays["labels"] = label_ids(examples, task.labels)
    return arrays


def load_arrays(bundle: Bundle, task_id: str, path: Path) -> ExampleArrays:
    """A data file as the task's graph inputs: JSONL/CSV for text tasks, .npz for image tasks."""
    task = bundle.task(task_id)
    if task.input.kind == "image":
        if path.suffix.lower() != ".npz":
            raise DataError(
                f"{path}: task {task_id!r} takes images, not {path.suffix or 'this file'}; give a .npz "
                "saved with np.savez(path, pixel_values=<float32 [N,C,H,W]>, labels=<[N] ints or strings>)"
            )
        pixels, labels = read_image_arrays(path)
        check_labels(labels, task.labels, str(path))
        want = (len(pixels), *task.input.image_shape)
        if pixels.shape != want:
            raise DataError(
                f"{path}: pixel_values has shape {pixels.shape}, the task takes [N, {task.input.image_shape}]"
            )
        return {"pixel_values": pixels, "labels": label_ids(labels, task.labels)}
    return encode_examples(bundle, task, read_examples(path), str(path))


def local_steps(
    trainer: Trainer,
    train: ExampleArrays,
    epochs: int,
    batch_size: int,
    shuffle: int | np.random.Generator = 0,
    lr_at: Callable[[int], float] | None = None,
) -> Iterator[tuple[int, int, float]]:
    """`epochs` shuffled passes of `trainer.step` over `train`; yields (epoch, step in the epoch, loss).

    shuffle: a seed, epoch `e` then shuffled by `seed + e` whatever ran before; or a generator each
    epoch draws its order from (a client's stream, carried on from round to round).
    lr_at: learning rate for the step with this index (counted from 0 over all epochs), if scheduled.
    """
    step = 0
    for epoch in range(epochs):
        seed = shuffle if isinstance(shuffle, np.random.Generator) else shuffle + epoch
        for i, batch in enumerate(iter_batches(train, batch_size, shuffle=True, seed=seed)):
            if lr_at is not None:
                trainer.set_learning_rate(lr_at(step))
            step += 1
            yield epoch, i, trainer.step(batch)


def train_epochs(
    trainer: Trainer,
    train: ExampleArrays,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    on_step: StepCallback | None = None,
    lr_at: Callable[[int], float] | None = None,
) -> list[float]:
    """`epochs` passes over `train`, shuffled per epoch by `seed + epoch`; the mean loss of each epoch.

    lr_at: learning rate for the step with this index (counted from 0 over all epochs), if scheduled.
    """
    losses: list[list[float]] = [[] for _ in range(epochs)]
    for epoch, i, loss in local_steps(trainer, train, epochs, batch_size, seed, lr_at):
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at epoch {epoch + 1}, step {i + 1}; lower the learning rate"
            )
        losses[epoch].append(loss)
        if on_step is not None:
            on_step(i, loss)
    return [float(np.mean(epoch_losses)) if epoch_losses else float("nan") for epoch_losses in losses]


def train_round(
    trainer: Trainer,
    global_weights: ModuleWeights,
    data: ExampleArrays,
    plan: RoundPlan,
    rng: np.random.Generator,
    eval_data: ExampleArrays | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[int, dict[str, float]]:
    """Evaluate the global module on local data, then train it by the round's `plan` (its local epochs,
    lr, batch size and FedProx term); returns (examples, metrics).

    `accuracy` and `loss` are the global module's on `eval_data` (or the local data) before training:
    the federated evaluation the server averages. FedProx's term is applied when `proximal_mu` > 0.
    Each epoch's order is drawn from `rng`; on_step(steps done, steps in all, loss).
    """
    examples = len(data["labels"])
    batch_size, epochs, lr, mu = plan.batch_size, plan.local_epochs, plan.lr, plan.proximal_mu
    trainer.set_module(global_weights)
    trainer.set_learning_rate(lr)
    before = trainer.evaluate(iter_batches(eval_data if eval_data is not None else data, batch_size))
    if isinstance(trainer, ProximalTrainer):
        trainer.set_proximal(global_weights, mu)
    # Any other trainer is pulled from outside, which also resets its optimiser (fedprox.py).
    pull_after_step = mu > 0 and not isinstance(trainer, ProximalTrainer)
    steps_per_epoch = -(-examples // batch_size)
    losses = []
    for epoch, i, loss in local_steps(trainer, data, epochs, batch_size, rng):
        losses.append(loss)
        if pull_after_step:
            trainer.set_module(proximal_step(trainer.get_module(), global_weights, lr, mu))
        if on_step is not None:
            on_step(epoch * steps_per_epoch + i + 1, epochs * steps_per_epoch, loss)
    metrics = {"accuracy": before.accuracy, "loss": before.loss, "train_loss": float(np.mean(losses))}
    return examples, {k: v for k, v in metrics.items() if np.isfinite(v)}


def linear_decay(lr: float, total_steps: int, offset: int = 0) -> Callable[[int], float]:
    """lr falling linearly to zero over `total_steps` (steps counted from `offset`)."""
    return lambda step: lr * max(0.0, 1.0 - (step + offset) / max(total_steps, 1))


def evaluate_arrays(trainer: Trainer, arrays: ExampleArrays, batch_size: int = 64) -> EvalResult:
    """Held-out loss and accuracy over every example of `arrays`."""
    return trainer.evaluate(iter_batches(arrays, batch_size, shuffle=False))


def fit(
    trainer: Trainer,
    train: ExampleArrays,
    test: ExampleArrays | None,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    on_epoch: Callable[[EpochLog], None] | None = None,
    on_step: StepCallback | None = None,
    lr: float | None = None,
) -> list[EpochLog]:
    """Train for `epochs`, evaluating on `test` after each one. With `lr`, the rate decays linearly
    from `lr` to zero over the whole run (steadier final accuracy than a constant rate)."""
    logs = []
    steps = -(-len(train["labels"]) // batch_size)
    for epoch in range(epochs):
        start = time.perf_counter()
        schedule = linear_decay(lr, epochs * steps, epoch * steps) if lr is not None else None
        (loss,) = train_epochs(trainer, train, 1, batch_size, seed + epoch, on_step, schedule)
        result = evaluate_arrays(trainer, test) if test is not None else None
        log = EpochLog(epoch + 1, loss, result, time.perf_counter() - start, steps)
        logs.append(log)
        if on_epoch is not None:
            on_epoch(log)
    return logs
