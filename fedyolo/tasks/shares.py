"""A task's data as a federated run uses it: its train split cut to a budget and shared among clients
by a Dirichlet prior over labels, its test split held out. The demo, `simulate` and the benchmarks
all take their data from here.

The budget is the point: the demo must finish in minutes on two CPU cores, so each task's train split
is cut to `train_per_task` examples and its test split to `test_per_task`, both stratified by label
and seeded. The cut is printed with the results, never hidden.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.data import Example
from fedyolo.runtime.local import encode_examples
from fedyolo.runtime.manifest import check_task_id
from fedyolo.runtime.trainer import ExampleArrays
from fedyolo.tasks.command import resolve_task
from fedyolo.tasks.partition import dirichlet_partition
from fedyolo.tasks.task import write_examples


@dataclass(frozen=True)
class TaskShares:
    """One task's data as the run uses it: a share per client and the held-out examples."""

    task_id: str
    labels: tuple[str, ...]
    shares: tuple[tuple[Example, ...], ...]
    test: tuple[Example, ...]
    train_available: int  # the task's whole train split, before the cut
    test_available: int

    @property
    def train_used(self) -> int:
        return sum(len(s) for s in self.shares)

    def union(self) -> list[Example]:
        """Every client's examples together: what centralised training would see."""
        return [e for share in self.shares for e in share]


def stratified_sample(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """`n` examples keeping each label's share (largest remainder), in input order; all when fewer."""
    if n >= len(examples):
        return list(examples)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_label[e.label].append(i)
    labels = sorted(by_label)
    exact = np.array([n * len(by_label[k]) / len(examples) for k in labels])
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for label, count in zip(labels, counts, strict=True):
        rows = by_label[label]
        keep.extend(int(i) for i in rng.choice(rows, size=count, replace=False))
    return [examples[i] for i in sorted(keep)]


def share_task(
    name: str, clients: int, alpha: float, seed: int, train_per_task: int, test_per_task: int
) -> TaskShares:
    """A built-in task or a JSONL/CSV file, cut to budget, its train part shared among `clients`."""
    data = resolve_task(name)
    task_id = check_task_id(data.name)
    train = stratified_sample(data.train, train_per_task, seed) if train_per_task > 0 else data.train
    test = stratified_sample(data.test, test_per_task, seed) if test_per_task > 0 else data.test
    shares = dirichlet_partition(train, data.labels, clients, alpha, seed)
    return TaskShares(
        task_id=task_id,
        labels=data.labels,
        shares=tuple(tuple(s) for s in shares),
        test=tuple(test),
        train_available=len(data.train),
        test_available=len(data.test),
    )


def client_data_path(data_dir: Path, task_id: str, client: int) -> Path:
    return data_dir / task_id / f"client-{client}.jsonl"


def test_data_path(data_dir: Path, task_id: str) -> Path:
    return data_dir / task_id / "test.jsonl"


def write_shares(shares: TaskShares, data_dir: Path) -> None:
    """Each client's share and the test split as JSONL: what the client processes read."""
    for i, share in enumerate(shares.shares):
        write_examples(share, client_data_path(data_dir, shares.task_id, i))
    write_examples(shares.test, test_data_path(data_dir, shares.task_id))


def encode_shares(bundle: Bundle, shares: TaskShares) -> tuple[list[ExampleArrays], ExampleArrays]:
    """Each client's share and the test split as the task's graph inputs."""
    task = bundle.task(shares.task_id)
    clients = [
        encode_examples(bundle, task, list(share), f"client {i} of {shares.task_id}")
        for i, share in enumerate(shares.shares)
    ]
    return clients, encode_examples(bundle, task, list(shares.test), f"{shares.task_id} test split")
