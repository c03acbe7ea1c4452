"""The fully-local baseline: each client trains alone on its own share, with the same number of epochs
it trains in the federation (rounds x local epochs), from the same initial module, at the same constant
learning rate and batch size, and is evaluated on the task's held-out test split.

FedYolo's point is that with a big frozen backbone and little heterogeneity this baseline is strong;
the demo and the benchmarks always print it beside the federated result.

In the demo the baseline runs in worker processes beside the clients (`python -m fedyolo.demo.baseline
PLAN.json WORKER WORKERS`, one per core), so the CPU never idles while a round waits for a straggler.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from fedyolo.demo.plan import client_data_path, initial_module, test_data_path
from fedyolo.demo.worker import Events, WorkerPlan
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.local import evaluate_arrays, train_epochs
from fedyolo.runtime.ort_trainer import OrtTrainer, SharedBackbone
from fedyolo.runtime.train_command import load_arrays
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


def train_alone(
    trainer: Trainer,
    client: int,
    initial: ModuleWeights,
    data: ExampleArrays,
    test: ExampleArrays,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> LocalResult:
    """Train one client alone for `epochs` and evaluate it on `test`."""
    run = LocalRun(trainer, client, initial, data, epochs, lr, batch_size, seed)
    run.start()
    while not run.done:
        run.epoch()
    return run.result(test)


def events_file(worker: int) -> str:
    return f"baseline-{worker}.jsonl"


def worker_main(plan: WorkerPlan, worker: int, workers: int) -> None:
    """Train every `workers`-th (task, client) of the plan alone, starting at `worker`; emit events."""
    events = Events(Path(plan.events_dir) / events_file(worker))
    try:
        bundle = open_bundle(plan.bundle, tasks=plan.tasks)
        backbone = SharedBackbone(bundle)
        data_dir = Path(plan.data_dir)
        trainers: dict[str, OrtTrainer] = {}
        tests: dict[str, ExampleArrays] = {}
        mine = plan.baseline_runs()[worker::workers]
        events.emit("ready", runs=len(mine))
        for task, client in mine:
            if task not in trainers:
                trainers[task] = OrtTrainer(bundle, task, backbone, plan.lr, threads=1)
                tests[task] = load_arrays(bundle, task, test_data_path(data_dir, task))
            data = load_arrays(bundle, task, client_data_path(data_dir, task, client))
            run = LocalRun(
                trainers[task],
                client,
                initial_module(bundle, task),
                data,
                plan.baseline_epochs,
                plan.lr,
                plan.batch_size,
                plan.seed,
            )
            run.start()
            while not run.done:
                loss = run.epoch()
                events.emit(
                    "local_epoch",
                    task=task,
                    client=client,
                    epoch=run.epochs_done,
                    epochs=run.epochs,
                    loss=loss,
                )
            events.emit("local_done", task=task, **asdict(run.result(tests[task])))
    except Exception as e:
        events.emit("error", detail=f"{type(e).__name__}: {e}")
        raise
    events.emit("done")
    events.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m fedyolo.demo.baseline PLAN.json WORKER WORKERS`."""
    args = sys.argv[1:] if argv is None else argv
    worker_main(WorkerPlan.read(Path(args[0])), int(args[1]), int(args[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
