"""Dirichlet label partitions among clients: complete, repeatable, skewed as alpha says."""

from __future__ import annotations

import pytest

from fedyolo.runtime.data import Example
from fedyolo.runtime.errors import DataError
from fedyolo.tasks import dirichlet_partition, label_entropy, load_task


def mean_entropy(parts: list[list[Example]]) -> float:
    return sum(label_entropy(p) for p in parts) / len(parts)


@pytest.mark.parametrize(("n_clients", "alpha"), [(1, 1.0), (10, 0.1), (10, 10.0), (100, 0.1)])
def test_partition_covers_every_train_example_once_and_no_client_is_empty(
    n_clients: int, alpha: float
) -> None:
    # Prepare
    task = load_task("topics")
    # Execute
    parts = dirichlet_partition(task.train, task.labels, n_clients, alpha, seed=0)
    # Assert
    assert len(parts) == n_clients
    assert sorted(i for part in parts for i in map(id, part)) == sorted(map(id, task.train))
    assert min(len(p) for p in parts) >= min(10, len(task.train) // (2 * n_clients))
    for part in parts:  # each client's examples in input order
        assert part == sorted(part, key=task.train.index)


def test_partition_is_repeatable_by_seed() -> None:
    # Prepare
    task = load_task("topics")
    # Execute
    first = dirichlet_partition(task.train, task.labels, 10, 0.5, seed=42)
    again = dirichlet_partition(task.train, task.labels, 10, 0.5, seed=42)
    other = dirichlet_partition(task.train, task.labels, 10, 0.5, seed=43)
    # Assert
    assert first == again
    assert first != other


def test_small_alpha_gives_clients_fewer_labels_than_large_alpha() -> None:
    # Prepare
    task = load_task("topics")
    # Execute
    skewed = [mean_entropy(dirichlet_partition(task.train, task.labels, 10, 0.1, seed=s)) for s in range(3)]
    near_iid = [
        mean_entropy(dirichlet_partition(task.train, task.labels, 10, 10.0, seed=s)) for s in range(3)
    ]
    everyone = label_entropy(task.train)
    # Assert
    assert max(skewed) < min(near_iid) - 1.0
    assert min(near_iid) > everyone - 0.3  # near IID: each client looks like the whole train split


def test_top_up_fills_clients_when_draws_keep_leaving_some_short() -> None:
    # Prepare: one label, alpha tiny: almost every draw gives one client everything
    examples = [Example(f"t{i}", "a") for i in range(40)]
    # Execute
    parts = dirichlet_partition(examples, ["a"], 8, 1e-3, seed=0, min_examples=5)
    # Assert
    assert [len(p) for p in parts] == [5] * 8
    assert sorted(e.text for p in parts for e in p) == sorted(e.text for e in examples)


def test_label_entropy_in_bits() -> None:
    # Assert
    assert label_entropy([Example("x", "a")] * 3) == 0.0
    assert label_entropy([Example("x", "a"), Example("y", "b")]) == pytest.approx(1.0)
    assert label_entropy([]) == 0.0


@pytest.mark.parametrize(
    ("n_clients", "alpha", "min_examples", "expected"),
    [
        (0, 1.0, None, "clients must be at least 1"),
        (2, 0.0, None, "alpha must be a positive number"),
        (2, float("nan"), None, "alpha must be a positive number"),
        (5, 1.0, None, "4 examples cannot give each of 5 clients one"),
        (2, 1.0, 3, "cannot give each of 2 clients 3"),
    ],
)
def test_impossible_partitions_raise_data_error(
    n_clients: int, alpha: float, min_examples: int | None, expected: str
) -> None:
    # Prepare
    examples = [Example(f"t{i}", "a") for i in range(4)]
    # Execute / Assert
    with pytest.raises(DataError, match=expected):
        dirichlet_partition(examples, ["a"], n_clients, alpha, seed=0, min_examples=min_examples)


def test_unknown_labels_are_refused() -> None:
    # Execute / Assert
    with pytest.raises(DataError, match="labels the task does not know: 'b'"):
        dirichlet_partition([Example("x", "a"), Example("y", "b")], ["a"], 1, 1.0, seed=0)
