"""`fedyolo train`: local training of one task's module on this CPU, with held-out accuracy."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from safetensors.numpy import save_file

from fedyolo.runtime.backends import check_backend, make_trainer
from fedyolo.runtime.bundle import Bundle, open_bundle
from fedyolo.runtime.errors import DataError, FedyoloError
from fedyolo.runtime.local import EpochLog, encode_examples, fit, load_arrays
from fedyolo.runtime.trainer import ExampleArrays


def builtin_split(bundle: Bundle, task_id: str, split: str) -> ExampleArrays | None:
    """The built-in task's split when the task id names one (topics, language)."""
    from fedyolo.tasks import BUILTIN_TASKS, load_task

    if task_id not in BUILTIN_TASKS:
        return None
    data = load_task(task_id)
    examples = data.train if split == "train" else data.test
    return encode_examples(bundle, bundle.task(task_id), examples, f"built-in {task_id} {split}")


def train_command(
    bundle_dir: Path,
    task_id: str,
    data: Path | None,
    test_data: Path | None,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    save: Path | None,
    console: Console | None = None,
    backend: str = "ort",
) -> list[EpochLog]:
    """Train, print a table per epoch and the final held-out accuracy; optionally save the module."""
    console = console or Console()
    # Mistakes that would otherwise surface only after the training: say so before it.
    if not (math.isfinite(lr) and lr > 0):
        raise FedyoloError(f"--lr {lr} is not a positive number; e.g. --lr 1e-3")
    if save is not None and save.is_dir():
        raise FedyoloError(
            f"--save {save} is a folder; give a file path, e.g. --save {save / 'module.safetensors'}"
        )
    check_backend(backend)
    start = time.perf_counter()
    bundle = open_bundle(bundle_dir, tasks=[task_id])
    train = load_arrays(bundle, task_id, data) if data else builtin_split(bundle, task_id, "train")
    if train is None:
        raise DataError(f"task {task_id!r} is not built in; give its training examples with --data FILE")
    test = load_arrays(bundle, task_id, test_data) if test_data else None
    if test is None and data is None:
        test = builtin_split(bundle, task_id, "test")
    trainer = make_trainer(bundle, task_id, backend, lr=lr)
    n = len(train["labels"])
    steps = -(-n // batch_size)
    console.print(
        f"training task [bold]{task_id}[/] on {backend} ({trainer.task.module_kind}, {trainer.task.module_numel:,} trainable values) "
        f"on {n} examples, {epochs} epochs x {steps} steps, lr {lr:g} decaying linearly to 0, batch {batch_size}; "
        f"loaded in {time.perf_counter() - start:.1f} s"
    )
    table = Table("epoch", "train loss", "test loss", "test accuracy", "s/epoch", "ms/step")
    columns = (
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("train", total=epochs * steps, epoch=1)

        def on_epoch(log: EpochLog) -> None:
            acc = f"{log.test.accuracy:.2%}" if log.test else "-"
            tloss = f"{log.test.loss:.4f}" if log.test else "-"
            table.add_row(
                str(log.epoch),
                f"{log.train_loss:.4f}",
                tloss,
                acc,
                f"{log.seconds:.1f}",
                f"{1000 * log.seconds / max(log.steps, 1):.0f}",
            )
            progress.update(bar, epoch=log.epoch + 1)

        logs = fit(
            trainer,
            train,
            test,
            epochs,
            batch_size,
            seed,
            on_epoch,
            on_step=lambda i, loss: progress.advance(bar),
            lr=lr,  # decays linearly to zero over the run
        )
    console.print(table)
    last = logs[-1]
    if last.test is not None:
        console.print(
            f"held-out accuracy after {epochs} epochs: [bold]{last.test.accuracy:.2%}[/] "
            f"on {last.test.examples} examples"
        )
    if save is not None:
        weights = trainer.get_module()
        save.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(save))
        console.print(
            f"saved the trained module ({sum(v.nbytes for v in weights.values()) / 1e3:.1f} KB) to {save}"
        )
    return logs
