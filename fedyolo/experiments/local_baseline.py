"""The fully-local baseline: each client trains alone on its own share, with the same number of epochs
it trains in the federation (rounds x local epochs), from the same initial module, at the same constant
learning rate and batch size, and is evaluated on the task's held-out test split.

FedYolo's point is that with a big frozen backbone and little heterogeneity this baseline is strong;
the demo and the benchmarks always print it beside the federated result.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedyolo.runtime.local import evaluate_arrays, train_epochs
from fedyolo.runtime.trainer import EvalResult, ExampleArrays, Trainer
from fedyolo.runtime.wire import ModuleWeights


@dataclass(frozen=True)
class LocalResult:
    """One client's module after training alone, on the held-out test split."""

    client: int
    examples: int
    epochs: int
    accuracy: float
    loss: float


class LocalRun:
    """One client training alone, an epoch at a time, so a caller can interleave other work.

    The trainer is borrowed: nothing else may use it between `start()` and the last epoch.
    """

    def __init__(
        self,
        trainer: Trainer,
        client: int,
        initial: ModuleWeights,
        data: ExampleArrays,
        epochs: int,
        lr: float,
        batch_size: int,
        seed: int,
    ) -> None:
        self.trainer, self.client, self.initial, self.data = trainer, client, initial, data
        self.epochs, self.lr, self.batch_size, self.seed = epochs, lr, batch_size, seed
        self.epochs_done = 0

    @property
    def done(self) -> bool:
        return self.epochs_done >= self.epochs

    def start(self) -> None:
        """Load the initial module; AdamW's moments start fresh."""
        self.trainer.set_module(self.initial)
        self.trainer.set_learning_rate(self.lr)

    def epoch(self) -> float:
        """One more pass over the client's data; the epoch's mean training loss."""
        (loss,) = train_epochs(self.trainer, self.data, 1, self.batch_size, self.seed + self.epochs_done)
        self.epochs_done += 1
        return loss

    def result(self, test: ExampleArrays) -> LocalResult:
        held_out: EvalResult = evaluate_arrays(self.trainer, test)
        return LocalResult(
            self.client, len(self.data["labels"]), self.epochs_done, held_out.accuracy, held_out.loss
        )
