"""Aggregation streams: peak memory is O(module size), not O(number of updates)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fedyolo.fedserver.aggregator import Aggregator
from fedyolo.fedserver.clients import Clients
from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.recovery import recover
from fedyolo.fedserver.rounds import Rounds
from fedyolo.fedserver.store import Store
from fedyolo.fedserver.uploads import Update
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.wire import encode_module
from tests.synthetic import build_bundle

from .conftest import ENROLL_KEY, random_module, recompute_from_scratch, stored_versions

MODULE = {"adapter.down": (128, 64), "adapter.up": (64, 128)}  # 64 KiB of fp32


def filled_round(tmp_path: Path, n: int) -> tuple[Rounds, ServerConfig]:
    """A round of `n` accepted updates from `n` clients, closed and waiting for aggregation."""
    bundle = open_bundle(build_bundle(tmp_path / "bundle", tasks={"topics": MODULE}))
    config = ServerConfig(
        bundle_dir=bundle.root,
        state_dir=tmp_path / "state",
        plan=FederationPlan(rounds=2),
        min_clients=n,
        enroll_key=ENROLL_KEY,
    )
    store = Store(config.state_dir)
    rounds = Rounds(config, bundle, store)
    recover(rounds)
    clients = Clients(store, ENROLL_KEY)
    task = bundle.task("topics")
    base = random_module(task, 0, scale=1.0)
    for i in range(n):
        client_id, _ = clients.register(ENROLL_KEY, f"c{i}")
        weights = {k: v + np.float32(0.001 * i) for k, v in base.items()}  # cheap distinct updates
        body = encode_module(weights, task)
        answer = rounds.submit(
            Update(client_id, "topics", 1, f"key-{i:06d}", body, 1 + i % 50, {"loss": 1.0})
        )
        assert answer.status_code == 201
    assert rounds.current("topics").status == "aggregating"
    return rounds, config


@pytest.mark.slow
def test_aggregating_1000_updates_takes_memory_of_a_few_modules(tmp_path: Path) -> None:
    # Prepare
    rounds, config = filled_round(tmp_path, 1000)
    module_bytes = rounds.task("topics").module_bytes
    # Execute
    tracemalloc.start()
    version = Aggregator(rounds).aggregate("topics", 1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rounds.store.close()
    # Assert
    assert version == 1
    print(f"peak {peak / module_bytes:.1f} module sizes while summing 1000 updates of {module_bytes} bytes")
    assert peak < 16 * module_bytes  # the updates together are 1000 module sizes
    expected = recompute_from_scratch(config.state_dir, config.bundle_dir, config, "topics")
    stored = stored_versions(config.state_dir, config.bundle_dir, "topics")
    assert all(np.array_equal(stored[1][k], expected[1][k]) for k in MODULE)


def test_an_update_folded_from_its_blob_before_its_handover_is_not_kept(tmp_path: Path) -> None:
    # Prepare: a leading aggregator whose fold has read updates 1 to 3 from their blobs (their rows commit
    # before the upload hands the decoded weights over, so the fold can get there first)
    rounds, _ = filled_round(tmp_path, 3)
    aggregator = Aggregator(rounds)
    aggregator._leading = True
    aggregator.advance("topics")  # folds and commits round 1; round 2 opens
    task = rounds.task("topics")
    weights = random_module(task, 1)
    aggregator._folds["topics"] = aggregator._new_fold("topics", 2)
    aggregator._folds["topics"].last_id = 5
    # Execute: a late handover of update 5 (folded already), then a timely one of update 6
    aggregator._accepted("topics", 5, weights)
    aggregator._accepted("topics", 6, weights)
    # Assert: only the one the fold has not reached is held for it
    assert list(aggregator._fresh) == [("topics", 6)]


def test_held_updates_are_bounded_and_the_oldest_go_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    rounds, _ = filled_round(tmp_path, 1)
    aggregator = Aggregator(rounds)
    aggregator._leading = True
    monkeypatch.setattr("fedyolo.fedserver.aggregator.MAX_FRESH", 4)
    weights = random_module(rounds.task("topics"), 1)
    # Execute
    for update_id in range(10, 16):
        aggregator._accepted("topics", update_id, weights)
    # Assert: still taking new ones (before, a full hold took none more, for good)
    assert list(aggregator._fresh) == [("topics", i) for i in (12, 13, 14, 15)]
