"""Fixtures for the server tests: a synthetic bundle, a config, an in-process API client."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fedyolo.fedserver import blob_log
from fedyolo.fedserver.app import create_app
from fedyolo.fedserver.config import ServerConfig
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.wire import ModuleWeights, encode_module
from tests.synthetic import build_bundle

ENROLL_KEY = "test-enroll-key-0123456789"
SMALL_MODULE = {"adapter.down": (64, 16), "adapter.up": (16, 64), "head.weight": (5, 64), "head.bias": (5,)}


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return build_bundle(tmp_path / "bundle", tasks={"topics": SMALL_MODULE, "language": SMALL_MODULE})


@pytest.fixture
def config(tmp_path: Path, bundle_dir: Path) -> ServerConfig:
    return ServerConfig(
        bundle_dir=bundle_dir,
        state_dir=tmp_path / "state",
        plan=FederationPlan(rounds=3),
        min_clients=2,
        enroll_key=ENROLL_KEY,
    )


def configured(config: ServerConfig, **overrides: Any) -> ServerConfig:
    """`config` with overrides; the names of the round plan's fields change the plan."""
    plan_fields = {f.name for f in fields(FederationPlan)}
    plan = {k: v for k, v in overrides.items() if k in plan_fields}
    rest = {k: v for k, v in overrides.items() if k not in plan_fields}
    return replace(config, **rest).with_plan(**plan)


def task_spec(bundle_dir: Path, task_id: str = "topics") -> TaskSpec:
    return open_bundle(bundle_dir, verify=False).task(task_id)


def random_module(task: TaskSpec, seed: int, scale: float = 0.1) -> ModuleWeights:
    rng = np.random.default_rng(seed)
    return {t.name: (scale * rng.standard_normal(t.shape)).astype(np.float32) for t in task.trainable}


class Api:
    """A TestClient with the calls the tests make, each returning the raw response."""

    def __init__(self, client: TestClient, task: TaskSpec) -> None:
        self.http = client
        self.task = task

    def register(self, key: str = ENROLL_KEY) -> dict[str, str]:
        response = self.http.post("/v1/clients", json={"enroll_key": key, "name": "t"})
        assert response.status_code == 201, response.text
        return {"authorization": f"Bearer {response.json()['token']}"}

    def round(self, auth: dict[str, str], task_id: str = "topics") -> dict[str, Any]:
        response = self.http.get(f"/v1/tasks/{task_id}/round", headers=auth)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def upload(
        self,
        auth: dict[str, str],
        round_id: int,
        body: bytes | ModuleWeights,
        examples: int | str = 10,
        key: str | None = None,
        metrics: str = '{"accuracy": 0.5, "loss": 1.0}',
        task_id: str = "topics",
    ) -> Any:
        content = body if isinstance(body, bytes) else encode_module(body, self.task)
        headers = auth | {
            "idempotency-key": key or uuid.uuid4().hex,
            "fedyolo-examples": str(examples),
            "fedyolo-metrics": metrics,
            "content-type": "application/octet-stream",
        }
        return self.http.post(
            f"/v1/tasks/{task_id}/rounds/{round_id}/updates", content=content, headers=headers
        )

    def wait_round(self, auth: dict[str, str], round_id: int, timeout_s: float = 10.0) -> dict[str, Any]:
        """Bounded wait until the task's current round is `round_id` or later (or finished)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.round(auth)
            if info["round"] >= round_id and info["status"] in ("open", "finished"):
                return info
            time.sleep(0.02)
        raise AssertionError(f"round {round_id} did not open within {timeout_s} s")


@pytest.fixture
def make_api(config: ServerConfig, bundle_dir: Path) -> Iterator[Callable[..., Api]]:
    """Build an in-process app (lifespan running) with config overrides; closed at teardown."""
    opened: list[TestClient] = []

    def make(**overrides: Any) -> Api:
        client = TestClient(create_app(configured(config, **overrides)))
        client.__enter__()
        opened.append(client)
        return Api(client, task_spec(bundle_dir))

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def counted_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The blob log's fdatasyncs, counted (one entry each); the first takes 50 ms more, as a busy disk's
    does, so that bodies stored meanwhile queue behind it."""
    syncs: list[int] = []
    real_sync = os.fdatasync

    def counted(fd: int) -> None:
        syncs.append(fd)
        real_sync(fd)
        if len(syncs) == 1:
            time.sleep(0.05)

    monkeypatch.setattr(blob_log.os, "fdatasync", counted)
    return syncs


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


def recompute_from_scratch(
    state_dir: Path, bundle_dir: Path, config: ServerConfig, task_id: str
) -> dict[int, Any]:
    """Every committed module version of a task, recomputed in this process from the bundle's module and
    the stored update blobs alone, folded in acceptance order (the server's streaming, caching and
    recovery are not used; `fold_round` itself is checked against the strategies in test_fold.py)."""
    import sqlite3

    from fedyolo.fedserver.fold import fold_round
    from fedyolo.fedserver.store import DB_NAME
    from fedyolo.runtime.wire import decode_module

    task = task_spec(bundle_dir, task_id)

    def blob(sha: str) -> bytes:
        data = read_blob(state_dir, sha)
        assert hashlib.sha256(data).hexdigest() == sha, f"blob {sha} is corrupt"
        return data

    db = sqlite3.connect(state_dir / DB_NAME)
    weights = decode_module((bundle_dir / "tasks" / task_id / "module.safetensors").read_bytes(), task)
    state = None
    expected = {}
    committed = db.execute(
        "SELECT round FROM rounds WHERE task_id = ? AND status = 'committed' ORDER BY round", (task_id,)
    ).fetchall()
    for (round_id,) in committed:
        rows = db.execute(
            "SELECT blob, examples FROM updates WHERE task_id = ? AND round = ? ORDER BY id",
            (task_id, round_id),
        ).fetchall()
        updates = [(decode_module(blob(sha), task), examples) for sha, examples in rows]
        weights, state = fold_round(weights, updates, config.plan, state)
        expected[round_id] = weights
    db.close()
    return expected


def stored_blob(state_dir: Path, sha: str) -> tuple[Path, int, int]:
    """Where a blob lies on disk, read from the database alone: (file, offset, length); a blob file
    when no span of the blob log names it (length -1: the whole file)."""
    import sqlite3

    from fedyolo.fedserver.store import DB_NAME

    db = sqlite3.connect(state_dir / DB_NAME)
    row = db.execute("SELECT segment, offset, length FROM blob_spans WHERE sha = ?", (sha,)).fetchone()
    db.close()
    if row is None:
        return state_dir / "blobs" / sha[:2] / sha, 0, -1
    return state_dir / "blobs" / "log" / row[0], row[1], row[2]


def read_blob(state_dir: Path, sha: str) -> bytes:
    path, offset, length = stored_blob(state_dir, sha)
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def stored_versions(state_dir: Path, bundle_dir: Path, task_id: str) -> dict[int, Any]:
    """The module versions the server committed, by the round that made them."""
    import sqlite3

    from fedyolo.fedserver.store import DB_NAME
    from fedyolo.runtime.wire import decode_module

    task = task_spec(bundle_dir, task_id)
    db = sqlite3.connect(state_dir / DB_NAME)
    rows = db.execute(
        "SELECT round, blob FROM module_versions WHERE task_id = ? AND round IS NOT NULL ORDER BY round",
        (task_id,),
    ).fetchall()
    db.close()
    return {r: decode_module(read_blob(state_dir, sha), task) for r, sha in rows}


def assert_rounds_consistent(state_dir: Path, rounds_total: int) -> None:
    """No half-committed round: each committed round has exactly its module version and a successor."""
    import sqlite3

    from fedyolo.fedserver.store import DB_NAME

    db = sqlite3.connect(state_dir / DB_NAME)
    for (task_id,) in db.execute("SELECT task_id FROM tasks").fetchall():
        rows = db.execute(
            "SELECT round, status, base_version FROM rounds WHERE task_id = ? ORDER BY round", (task_id,)
        ).fetchall()
        versions = {
            v: r
            for v, r in db.execute("SELECT version, round FROM module_versions WHERE task_id = ?", (task_id,))
        }
        assert [r for r, _, _ in rows] == list(range(1, len(rows) + 1))
        for i, (round_id, status, base) in enumerate(rows):
            assert base == round_id - 1
            if status == "committed":
                assert versions.get(round_id) == round_id, (
                    f"{task_id} round {round_id} committed without its module"
                )
                assert i + 1 < len(rows) or round_id == rounds_total, (
                    f"{task_id} round {round_id} has no successor"
                )
            else:
                assert i == len(rows) - 1, f"{task_id} round {round_id} is {status} but not the last"
                assert round_id not in versions, f"{task_id} round {round_id} has a module but is {status}"
        assert set(versions) == {0} | {r for r, s, _ in rows if s == "committed"}
    db.close()
