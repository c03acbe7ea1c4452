"""Two server workers over one state: a round committed by one is answered at once to the long polls
waiting on the other (`PeerWake`), not when the other next polls the database."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fedyolo.fedserver.app import create_app
from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.long_poll import RoundSignal
from fedyolo.runtime.wire import encode_module
from tests.fedserver.conftest import ENROLL_KEY, configured, random_module, task_spec


def test_a_commit_in_one_worker_wakes_the_polls_of_the_other(
    config: ServerConfig, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the database poll slowed to a minute, so only a wake-up from the other worker can answer
    monkeypatch.setattr(RoundSignal, "poll_s", 60.0)
    config = configured(config, min_clients=1, rounds=3)
    task = task_spec(bundle_dir)
    with TestClient(create_app(config)) as leader:
        deadline = time.monotonic() + 10
        while not leader.app.state.aggregator._leading and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        with TestClient(create_app(config, recover=False)) as other:
            token = other.post("/v1/clients", json={"enroll_key": ENROLL_KEY, "name": "c"}).json()["token"]
            auth = {"authorization": f"Bearer {token}"}
            headers = auth | {"idempotency-key": uuid.uuid4().hex, "fedyolo-examples": "10"}
            # Execute: the upload closes round 1 in `other`; `leader` aggregates and commits it
            t0 = time.monotonic()
            sent = other.post(
                "/v1/tasks/topics/rounds/1/updates",
                content=encode_module(random_module(task, 1), task),
                headers=headers,
            )
            polled = other.get("/v1/tasks/topics/round?newer_than=1&wait_s=20", headers=auth)
            waited = time.monotonic() - t0
    # Assert
    assert sent.status_code == 201, sent.text
    assert (polled.status_code, polled.json()["round"], polled.json()["status"]) == (200, 2, "open")
    assert waited < 5.0  # without the wake-up: 20 s (the poll's whole wait), the database poll being 60 s
