"""`fedyolo data`: write a task's examples (a split, or one client's partition) to a file.

Plain arguments on purpose: the CLI mounts this with Typer, tests and the demo call it directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

from fedyolo.runtime.data import CSV_SUFFIXES, JSONL_SUFFIXES, Example
from fedyolo.runtime.errors import DataError
from fedyolo.tasks.partition import dirichlet_partition, label_entropy
from fedyolo.tasks.task import (
    BUILTIN_TASKS,
    IMAGE_SUFFIXES,
    TaskData,
    load_task,
    task_from_file,
    unknown_task_error,
    write_examples,
)

Split = Literal["train", "test", "all"]
SPLITS: tuple[str, ...] = get_args(Split)


def resolve_task(name: str) -> TaskData:
    """A built-in task by name, or a task read from a JSONL/CSV path."""
    if name in BUILTIN_TASKS:
        return load_task(name)
    path = Path(name)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise DataError(
            f"{path}: an image task; sharing a task among clients (fedyolo data, demo, simulate) takes text "
            "(JSONL/CSV) only for now. Export it with `fedyolo export onnx --data`, then train it with "
            "`fedyolo train` or `fedyolo client`, which take the .npz"
        )
    if path.suffix.lower() in JSONL_SUFFIXES + CSV_SUFFIXES or path.exists():
        return task_from_file(path)
    raise unknown_task_error(name)


def data_command(
    name: str,
    out: Path,
    split: str = "train",
    clients: int | None = None,
    alpha: float = 1.0,
    seed: int = 0,
    client: int | None = None,
) -> str:
    """Write task `name`'s `split` (or its train partition among `clients`) to `out`; print a summary.

    With `clients` and `client`, `out` gets that client's partition of the train split; with
    `clients` alone, every client's partition is written beside `out` as ``<stem>-client<i><suffix>``.
    Returns the summary line.
    """
    if split not in SPLITS:
        raise DataError(f"no split {split!r}; choose one of {', '.join(SPLITS)}")
    if client is not None and clients is None:
        raise DataError("--client needs --clients: the number of clients the train split is shared among")
    if clients is not None and split != "train":
        raise DataError(
            f"clients partition the train split and all share the test split (got --split {split}); "
            "use --split train, or drop --clients"
        )
    if clients is not None and client is not None and not 0 <= client < clients:
        raise DataError(f"--client {client} is not one of the {clients} clients; use 0 to {clients - 1}")
    task = resolve_task(name)
    examples = {"train": task.train, "test": task.test, "all": task.train + task.test}[split]
    if clients is None:
        write_examples(examples, out)
        line = f"{task.name} {split}: {summary(examples, task.labels)} -> {out}"
    else:
        parts = dirichlet_partition(examples, task.labels, clients, alpha, seed)
        head = f"{task.name} train, {clients} clients (alpha {alpha:g}, seed {seed})"
        if client is not None:
            write_examples(parts[client], out)
            line = f"{head}, client {client}: {summary(parts[client], task.labels)} -> {out}"
        else:
            for i, part in enumerate(parts):
                write_examples(part, client_path(out, i))
            sizes = ", ".join(str(len(p)) for p in parts)
            entropy = sum(label_entropy(p) for p in parts) / len(parts)
            line = (
                f"{head}: sizes {sizes}; mean label entropy {entropy:.2f} bits -> "
                f"{client_path(out, 0)} .. {client_path(out, clients - 1).name}"
            )
    print(line)
    return line


def client_path(out: Path, client: int) -> Path:
    """Where client `client`'s partition goes when every client's is written: beside `out`."""
    return out.with_name(f"{out.stem}-client{client}{out.suffix}")


def summary(examples: Sequence[Example], labels: Sequence[str]) -> str:
    """Counts, labels present, and the majority label's share: the accuracy of always guessing it."""
    counts = Counter(e.label for e in examples)
    if not counts:
        return f"0 examples, 0 of {len(labels)} labels"
    top, top_n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return (
        f"{len(examples):,} examples, {len(counts)} of {len(labels)} labels, "
        f"majority {top!r} {top_n / len(examples):.1%}"
    )
