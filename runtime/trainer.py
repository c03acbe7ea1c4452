"""One trainer interface over the backends: the federated client, `fedyolo train`, `fedyolo profile`
and the benchmarks all go through it. The same verbs exist in the web client and the Android app."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.wire import ModuleWeights

# One batch: graph input name -> array. Text: input_ids, attention_mask (int64, [batch, seq]);
# image: pixel_values (float32, [batch, C, H, W]); always labels (int64, [batch]).
Batch = dict[str, np.ndarray]
# A whole set of examples (a client's data, a test split): the same names, a leading example axis.
# `iter_batches` cuts it into Batches.
ExampleArrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class EvalResult:
    """Metrics over a set of batches."""

    loss: float
    accuracy: float
    examples: int


class Trainer(Protocol):
    """Train one task's module on the device."""

    task: TaskSpec

    def step(self, batch: Batch) -> float:
        """One optimiser step on `batch`; returns the loss before the step."""
        ...

    def evaluate(self, batches: Iterable[Batch]) -> EvalResult:
        """Mean loss and accuracy, weighted by examples; the module is not changed."""
        ...

    def predict(self, batch: Batch) -> np.ndarray:
        """Logits [batch, num_labels]."""
        ...

    def get_module(self) -> ModuleWeights:
        """A copy of the current trainable weights, named as in the manifest."""
        ...

    def set_module(self, weights: ModuleWeights) -> None:
        """Replace the trainable weights (checked against the manifest) and reset optimiser state."""
        ...

    def set_learning_rate(self, lr: float) -> None:
        """Learning rate for the next steps."""
        ...


def evaluate_batches(
    eval_batch: Callable[[Batch], tuple[float, np.ndarray]], batches: Iterable[Batch]
) -> EvalResult:
    """Mean loss and accuracy over `batches`, weighted by examples, from a backend's (loss, logits) per batch."""
    total_loss, correct, n = 0.0, 0, 0
    for batch in batches:
        loss, logits = eval_batch(batch)
        k = len(batch["labels"])
        total_loss += loss * k
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
        n += k
    if n == 0:
        return EvalResult(float("nan"), float("nan"), 0)
    return EvalResult(total_loss / n, correct / n, n)
