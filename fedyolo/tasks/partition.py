"""Split a task's train examples among federated clients by a Dirichlet prior over labels.

As FedNLP and FedPETuning do (their code: FedML's
``partition_class_samples_with_dirichlet_distribution``): for each label, draw client shares
p ~ Dir(α·1) and cut that label's shuffled examples at the cumulative shares. A small α gives each
client a few labels (α = 0.1: very skewed); a large one gives every client every label in about the
same proportion (α = 10: near IID).

Two details follow FedML too. A client that already holds more than its fair share n / clients
gets nothing of the next label, which keeps client sizes from running away. And the draw is
repeated until every client holds at least ``min_examples``; if 100 draws all fail (tiny α, many
clients), the smallest clients are topped up with random examples taken from the largest, one at
a time. Everything comes from one generator seeded by ``seed``: the same seed gives the same
partition.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from fedyolo.runtime.data import Example, label_ids
from fedyolo.runtime.errors import DataError

MAX_DRAWS = 100
MIN_EXAMPLES_CAP = 10  # FedML's min_require_size


def dirichlet_partition(
    examples: Sequence[Example],
    labels: Sequence[str],
    n_clients: int,
    alpha: float,
    seed: int,
    min_examples: int | None = None,
) -> list[list[Example]]:
    """Each client's examples; together they hold every example exactly once, in input order.

    `min_examples` per client defaults to min(10, n / (2 × clients)), and at least 1.
    """
    n = len(examples)
    if n_clients < 1:
        raise DataError(f"clients must be at least 1, got {n_clients}")
    if not (alpha > 0 and math.isfinite(alpha)):
        raise DataError(f"alpha must be a positive number, got {alpha}; use 0.1 (skewed), 1 or 10 (near IID)")
    if n < n_clients:
        raise DataError(f"{n} examples cannot give each of {n_clients} clients one; use at most {n} clients")
    floor = max(1, min(MIN_EXAMPLES_CAP, n // (2 * n_clients))) if min_examples is None else min_examples
    if floor * n_clients > n:
        raise DataError(
            f"{n} examples cannot give each of {n_clients} clients {floor}; "
            "use fewer clients or a smaller minimum"
        )
    y = label_ids(examples, labels)
    by_label = [np.flatnonzero(y == k) for k in range(len(labels))]
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DRAWS):
        parts = _draw(by_label, n, n_clients, alpha, rng)
        if min(len(p) for p in parts) >= floor:
            break
    else:
        _top_up(parts, floor, rng)
    return [[examples[i] for i in sorted(part)] for part in parts]


def _draw(
    by_label: list[np.ndarray], n: int, n_clients: int, alpha: float, rng: np.random.Generator
) -> list[list[int]]:
    parts: list[list[int]] = [[] for _ in range(n_clients)]
    for rows in by_label:
        if len(rows) == 0:
            continue
        rows = rng.permutation(rows)
        shares = rng.dirichlet(np.full(n_clients, alpha))
        open_ = np.array([len(p) < n / n_clients for p in parts])
        shares = shares * open_
        if shares.sum() <= 0:  # every open client drew ~0 (tiny α): share this label evenly among them
            shares = open_.astype(np.float64)
        cuts = (np.cumsum(shares / shares.sum()) * len(rows)).astype(int)[:-1]
        for part, chunk in zip(parts, np.split(rows, cuts), strict=True):
            part.extend(int(i) for i in chunk)
    return parts


def _top_up(parts: list[list[int]], floor: int, rng: np.random.Generator) -> None:
    while True:
        sizes = [len(p) for p in parts]
        small = int(np.argmin(sizes))
        if sizes[small] >= floor:
            return
        large = int(np.argmax(sizes))
        parts[small].append(parts[large].pop(int(rng.integers(sizes[large]))))


def label_entropy(examples: Sequence[Example]) -> float:
    """Shannon entropy of the label distribution, in bits: 0 for one label, log2(k) for k even labels."""
    counts = np.array(list(Counter(e.label for e in examples).values()), dtype=np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())
