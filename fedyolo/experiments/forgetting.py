"""Forgetting, measured: one module per task (FedYolo) against one shared module trained on the tasks in
sequence, over the same frozen backbone and the same training recipe.

The shared module has one head over both label sets (`joint_labels`, e.g. ``topics:greetings`` and
``language:english``), so it is scored two ways: over every label (what a single shared model would
answer) and within the first task's labels only (the kinder, task-aware score).

`train_beside` is the demo's quick form of the same check: one epoch of a second task in the process
that holds the first task's module, which must stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedyolo.experiments.local_baseline import LocalRun
from fedyolo.runtime.bundle import Bundle, initial_module
from fedyolo.runtime.data import Example, iter_batches
from fedyolo.runtime.local import encode_examples, evaluate_arrays, train_epochs
from fedyolo.runtime.ort_trainer import OrtTrainer, SharedBackbone
from fedyolo.runtime.trainer import ExampleArrays, Trainer
from fedyolo.runtime.wire import ModuleWeights, module_sha256

SEP = ":"


def joint_labels(tasks: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """Every task's labels in one label set, each prefixed with its task: the shared module's head."""
    return tuple(f"{task}{SEP}{label}" for task, labels in tasks.items() for label in labels)


def relabel(examples: Sequence[Example], task_id: str) -> list[Example]:
    return [Example(e.text, f"{task_id}{SEP}{e.label}") for e in examples]


def accuracy_within(
    trainer: OrtTrainer, arrays: ExampleArrays, columns: Sequence[int], batch_size: int = 64
) -> float:
    """Accuracy when the answer is the best of `columns` only (the labels of one task)."""
    cols = np.asarray(columns)
    correct = 0
    for batch in iter_batches(arrays, batch_size):
        logits = trainer.predict(batch)[:, cols]
        correct += int((cols[logits.argmax(-1)] == batch["labels"]).sum())
    return correct / len(arrays["labels"])


@dataclass(frozen=True)
class TaskSplit:
    """A task's examples for the experiment."""

    task_id: str
    train: Sequence[Example]
    test: Sequence[Example]


@dataclass(frozen=True)
class ForgettingResult:
    """Held-out accuracy of the first task before and after the second task is trained."""

    first: str
    second: str
    epochs: int
    separate_before: float
    separate_after: float
    separate_sha256_before: str
    separate_sha256_after: str
    separate_second: float
    shared_before: float  # argmax over both tasks' labels
    shared_after: float
    shared_before_within: float  # argmax over the first task's labels only
    shared_after_within: float
    shared_second: float


def run_forgetting(
    bundle: Bundle,
    first: TaskSplit,
    second: TaskSplit,
    shared_task: str,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    backbone: SharedBackbone | None = None,
) -> ForgettingResult:
    """Train `first` then `second`: with a module each, and with the one module of `shared_task`."""
    backbone = backbone or SharedBackbone(bundle)

    def trainer_for(task_id: str) -> OrtTrainer:
        trainer = OrtTrainer(bundle, task_id, backbone, lr, threads=0)
        trainer.set_module(initial_module(bundle, task_id))
        return trainer

    def arrays(task_id: str, examples: Sequence[Example]) -> ExampleArrays:
        return encode_examples(bundle, bundle.task(task_id), list(examples), task_id)

    # One module per task, both resident over the same backbone.
    ta, tb = trainer_for(first.task_id), trainer_for(second.task_id)
    a_train, a_test = arrays(first.task_id, first.train), arrays(first.task_id, first.test)
    b_train, b_test = arrays(second.task_id, second.train), arrays(second.task_id, second.test)
    train_epochs(ta, a_train, epochs, batch_size, seed)
    separate_before, sha_before = (
        evaluate_arrays(ta, a_test).accuracy,
        module_sha256(ta.get_module(), ta.task),
    )
    train_epochs(tb, b_train, epochs, batch_size, seed)
    separate_after, sha_after = evaluate_arrays(ta, a_test).accuracy, module_sha256(ta.get_module(), ta.task)
    separate_second = evaluate_arrays(tb, b_test).accuracy

    # One shared module, trained on the first task, then on the second.
    ts = trainer_for(shared_task)
    labels = bundle.task(shared_task).labels
    columns = [i for i, label in enumerate(labels) if label.startswith(first.task_id + SEP)]
    sa_train = arrays(shared_task, relabel(first.train, first.task_id))
    sa_test = arrays(shared_task, relabel(first.test, first.task_id))
    sb_train = arrays(shared_task, relabel(second.train, second.task_id))
    sb_test = arrays(shared_task, relabel(second.test, second.task_id))
    train_epochs(ts, sa_train, epochs, batch_size, seed)
    shared_before = evaluate_arrays(ts, sa_test).accuracy
    shared_before_within = accuracy_within(ts, sa_test, columns)
    train_epochs(ts, sb_train, epochs, batch_size, seed)
    return ForgettingResult(
        first=first.task_id,
        second=second.task_id,
        epochs=epochs,
        separate_before=separate_before,
        separate_after=separate_after,
        separate_sha256_before=sha_before,
        separate_sha256_after=sha_after,
        separate_second=separate_second,
        shared_before=shared_before,
        shared_after=evaluate_arrays(ts, sa_test).accuracy,
        shared_before_within=shared_before_within,
        shared_after_within=accuracy_within(ts, sa_test, columns),
        shared_second=evaluate_arrays(ts, sb_test).accuracy,
    )


@dataclass(frozen=True)
class Beside:
    """Task A's module and held-out accuracy before and after task B trained beside it, over one backbone."""

    sha256_before: str
    sha256_after: str
    accuracy_before: float
    accuracy_after: float
    other_loss: float  # task B's mean training loss


def train_beside(
    a: Trainer,
    a_test: ExampleArrays,
    b: Trainer,
    b_module: ModuleWeights,
    b_train: ExampleArrays,
    lr: float,
    batch_size: int,
    seed: int,
) -> Beside:
    """Train task B for one epoch from `b_module` while `a` holds task A's module; A must not move."""
    before = evaluate_arrays(a, a_test)
    sha_before = module_sha256(a.get_module(), a.task)
    run = LocalRun(b, 0, b_module, b_train, 1, lr, batch_size, seed)
    run.start()
    loss = run.epoch()
    after = evaluate_arrays(a, a_test)
    return Beside(sha_before, module_sha256(a.get_module(), a.task), before.accuracy, after.accuracy, loss)
