"""Local training on the device: encode a task's examples, run epochs through any `Trainer`, evaluate.

The federated client, `fedyolo train`, the simulation and the fully-local baseline share this loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.data import Example, TextEncoder, check_labels, iter_batches, label_ids
from fedyolo.runtime.errors import DataError
from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.trainer import EvalResult, Trainer

Arrays = dict[str, np.ndarray]
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
) -> Arrays:
    """Token ids, mask and label ids for text examples, checked against the task's labels."""
    if not examples:
        raise DataError(f"{source} holds no examples; give a file with at least one {{text, label}} row")
    if task.input.kind != "text":
        raise DataError(f"task {task.task_id!r} takes images; give a .npz with pixel_values and labels")
    check_labels(examples, task.labels, source)
    arrays = TextEncoder(bundle.tokenizer_path).encode([e.text for e in examples], task.input.max_length)
    arrays["labels"] = label_ids(examples, task.labels)
    return arrays


def train_epochs(
    trainer: Trainer,
    train: Arrays,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    on_step: StepCallback | None = None,
    lr_at: Callable[[int], float] | None = None,
) -> list[float]:
    """`epochs` passes over `train`, shuffled per epoch by `seed + epoch`; the mean loss of each epoch.

    lr_at: learning rate for the step with this index (counted from 0 over all epochs), if scheduled.
    """
    means = []
    step = 0
    for epoch in range(epochs):
        losses = []
        for i, batch in enumerate(iter_batches(train, batch_size, shuffle=True, seed=seed + epoch)):
            if lr_at is not None:
                trainer.set_learning_rate(lr_at(step))
            step += 1
            loss = trainer.step(batch)
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss} at epoch {epoch + 1}, step {i + 1}; lower the learning rate"
                )
            losses.append(loss)
            if on_step is not None:
                on_step(i, loss)
        means.append(float(np.mean(losses)) if losses else float("nan"))
    return means


def linear_decay(lr: float, total_steps: int, offset: int = 0) -> Callable[[int], float]:
    """lr falling linearly to zero over `total_steps` (steps counted from `offset`)."""
    return lambda step: lr * max(0.0, 1.0 - (step + offset) / max(total_steps, 1))


def evaluate_arrays(trainer: Trainer, arrays: Arrays, batch_size: int = 64) -> EvalResult:
    """Held-out loss and accuracy over every example of `arrays`."""
    return trainer.evaluate(iter_batches(arrays, batch_size, shuffle=False))


def fit(
    trainer: Trainer,
    train: Arrays,
    test: Arrays | None,
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
