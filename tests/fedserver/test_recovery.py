"""Restarts: an interrupted aggregation is redone, an interrupted upload leaves no trace, state persists."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fedyolo.fedserver.aggregator import Aggregator
from fedyolo.fedserver.app import create_app
from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.errors import ServerConfigError
from fedyolo.fedserver.rounds import Rounds
from fedyolo.fedserver.store import DB_NAME
from tests.synthetic import build_bundle

from .conftest import (
    Api,
    assert_rounds_consistent,
    random_module,
    read_blob,
    recompute_from_scratch,
    stored_versions,
    task_spec,
)


def open_api(config: ServerConfig, bundle_dir: Path) -> tuple[TestClient, Api]:
    client = TestClient(create_app(config))
    client.__enter__()
    return client, Api(client, task_spec(bundle_dir))


def test_a_crash_inside_the_commit_leaves_the_round_aggregating_and_a_restart_commits_it(
    config: ServerConfig, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the commit transaction fails after writing the module version row, before opening round 2.
    def crash(*args: Any) -> None:
        raise OSError("disk unplugged")

    client, api = open_api(config, bundle_dir)
    a, b = api.register(), api.register()
    monkeypatch.setattr(Rounds, "open_round", crash)
    # Execute
    api.upload(a, 1, random_module(api.task, 1), examples=7)
    api.upload(b, 1, random_module(api.task, 2), examples=3)  # closes round 1; the worker's commit fails
    aggregator: Aggregator = client.app.state.aggregator
    with pytest.raises(OSError):
        aggregator.aggregate("topics", 1)
    half = api.round(a)
    client.__exit__(None, None, None)
    monkeypatch.undo()
    restarted, api2 = open_api(config, bundle_dir)
    after = api2.wait_round(a, 2)
    restarted.__exit__(None, None, None)
    # Assert
    assert half["status"] == "aggregating" and half["round"] == 1
    assert after["round"] == 2 and after["module_version"] == 1
    assert_rounds_consistent(config.state_dir, config.rounds)
    expected = recompute_from_scratch(config.state_dir, bundle_dir, config, "topics")
    stored = stored_versions(config.state_dir, bundle_dir, "topics")
    assert set(stored) == {1}
    assert all(np.array_equal(stored[1][k], expected[1][k]) for k in expected[1])


def test_garbage_of_an_interrupted_upload_is_collected_at_start(
    config: ServerConfig, bundle_dir: Path
) -> None:
    # Prepare
    client, api = open_api(config, bundle_dir)
    auth = api.register()
    api.upload(auth, 1, random_module(api.task, 1))
    client.__exit__(None, None, None)
    blobs = config.state_dir / "blobs"
    kept = sorted(p.name for p in blobs.rglob("*") if p.is_file())
    (blobs / "ff").mkdir(exist_ok=True)
    (blobs / "ff" / ("f" * 64)).write_bytes(b"orphan: written, never committed")
    (blobs / "tmp" / "abc.partial").write_bytes(b"half a file")
    (blobs / "log" / ("e" * 32 + ".log")).write_bytes(b"appended by a process that died before its commit")
    # Execute
    restarted, api2 = open_api(config, bundle_dir)
    info = api2.round(auth)
    restarted.__exit__(None, None, None)
    # Assert
    assert sorted(p.name for p in blobs.rglob("*") if p.is_file()) == kept
    assert info["updates"] == 1  # the token and the accepted update survived the restart


def test_more_rounds_on_restart_continue_a_finished_task(config: ServerConfig, bundle_dir: Path) -> None:
    one = replace(config, min_clients=1).with_plan(rounds=1)
    client, api = open_api(one, bundle_dir)
    auth = api.register()
    api.upload(auth, 1, random_module(api.task, 1))
    assert api.wait_round(auth, 1)["status"] == "finished"
    client.__exit__(None, None, None)
    client, api = open_api(one.with_plan(rounds=2), bundle_dir)
    info = api.round(auth)
    client.__exit__(None, None, None)
    assert (info["round"], info["status"], info["module_version"]) == (2, "open", 1)


def test_a_changed_task_is_refused_over_old_state(config: ServerConfig, tmp_path: Path) -> None:
    client, _ = open_api(config, config.bundle_dir)
    client.__exit__(None, None, None)
    other = build_bundle(tmp_path / "other", tasks={"topics": {"head.weight": (3, 8), "head.bias": (3,)}})
    with pytest.raises(ServerConfigError, match="new --state-dir"):
        create_app(replace(config, bundle_dir=other))


def test_a_state_dir_whose_blobs_are_files_is_served_as_before(
    config: ServerConfig, bundle_dir: Path
) -> None:
    # Prepare: a round committed, then the state rewritten into the layout written before the blob log
    # (every blob a file blobs/ab/abcdef…, no span rows)
    client, api = open_api(config, bundle_dir)
    auths = [api.register() for _ in range(2)]
    for i, auth in enumerate(auths):
        api.upload(auth, 1, random_module(api.task, i))
    api.wait_round(auths[0], 2)
    served = api.http.get("/v1/tasks/topics/modules/1", headers=auths[0]).content
    client.__exit__(None, None, None)
    db = sqlite3.connect(config.state_dir / DB_NAME)
    for (sha,) in db.execute("SELECT sha FROM blob_spans").fetchall():
        path = config.state_dir / "blobs" / sha[:2] / sha
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(read_blob(config.state_dir, sha))
    db.execute("DELETE FROM blob_spans")
    db.commit()
    db.close()
    # Execute: the server starts on it and the next round commits from its file blobs
    restarted, api2 = open_api(config, bundle_dir)
    again = api2.http.get("/v1/tasks/topics/modules/1", headers=auths[0]).content
    for i, auth in enumerate(auths):
        api2.upload(auth, 2, random_module(api2.task, 10 + i))
    api2.wait_round(auths[0], 3)
    restarted.__exit__(None, None, None)
    # Assert: the same bytes, and round 2 folded from the file blobs as a recomputation does
    assert again == served
    expected = recompute_from_scratch(config.state_dir, bundle_dir, config, "topics")
    stored = stored_versions(config.state_dir, bundle_dir, "topics")
    assert all(np.array_equal(stored[2][k], expected[2][k]) for k in expected[2])
