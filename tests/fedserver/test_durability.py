"""kill -9 during uploads and aggregation: no acknowledged update lost, no round half-committed, and the
final module equals a from-scratch recomputation from the stored blobs."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.store import DB_NAME
from fedyolo.runtime.plan import FederationPlan
from fedyolo.runtime.wire import encode_module
from tests.synthetic import ADAPTER_MODULE, build_bundle

from .conftest import (
    ENROLL_KEY,
    assert_rounds_consistent,
    random_module,
    recompute_from_scratch,
    stored_versions,
    task_spec,
)

CLIENTS = 6
KILLS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m fedyolo.fedserver` in a subprocess, killed with SIGKILL and started again."""

    def __init__(
        self, bundle: Path, state: Path, port: int, min_clients: int, rounds: int, log: Path, workers: int
    ) -> None:
        self.args = [
            sys.executable, "-m", "fedyolo.fedserver", str(bundle), "--state-dir", str(state),
            "--port", str(port), "--min-clients", str(min_clients), "--rounds", str(rounds),
            "--enroll-key", ENROLL_KEY, "--log-level", "info", "--workers", str(workers),
        ]  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            # A session of its own: SIGKILL goes to the whole group, the worker processes included.
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("the server did not come up")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        time.sleep(0.2)  # let the kernel reap the workers and free the port

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)


@dataclass(frozen=True)
class Ack:
    client_id: int
    key: str
    sha256: str
    round: int


def uploader(url: str, token: str, client_id: int, task, stop: threading.Event, acks: list[Ack]) -> None:
    """A client that keeps sending updates, retrying each with the same key through server deaths."""
    auth = {"authorization": f"Bearer {token}"}
    http = httpx.Client(base_url=url, timeout=10)
    rng = random.Random(client_id)
    done_round = 0
    while not stop.is_set():
        try:
            info = http.get("/v1/tasks/topics/round", headers=auth).json()
        except (httpx.TransportError, ValueError):
            time.sleep(0.05)
            continue
        if info.get("status") != "open" or info["round"] <= done_round:
            time.sleep(0.01)
            continue
        body = encode_module(random_module(task, rng.randrange(1 << 30)), task)
        key = uuid.uuid4().hex
        headers = auth | {"idempotency-key": key, "fedyolo-examples": str(rng.randint(1, 100))}
        for _ in range(200):  # bounded retries of one update, same key, same body
            if stop.is_set():
                break
            try:
                r = http.post(
                    f"/v1/tasks/topics/rounds/{info['round']}/updates", content=body, headers=headers
                )
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if r.status_code == 201:
                acks.append(Ack(client_id, key, hashlib.sha256(body).hexdigest(), info["round"]))
                done_round = info["round"]
            elif r.status_code >= 500:
                continue
            break
    http.close()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_during_uploads_and_aggregation_loses_nothing(tmp_path: Path, workers: int) -> None:
    # Prepare: a 320 KB module, so that aggregation takes long enough to be killed in.
    bundle = build_bundle(tmp_path / "bundle", tasks={"topics": ADAPTER_MODULE})
    state = tmp_path / "state"
    config = ServerConfig(
        bundle_dir=bundle,
        state_dir=state,
        plan=FederationPlan(rounds=10_000),
        min_clients=3,
        enroll_key=ENROLL_KEY,
    )
    server = ServerProcess(
        bundle, state, free_port(), config.min_clients, config.rounds, tmp_path / "server.log", workers
    )
    server.start()
    task = task_spec(bundle)
    tokens = []
    for i in range(CLIENTS):
        r = httpx.post(f"{server.url}/v1/clients", json={"enroll_key": ENROLL_KEY, "name": f"c{i}"}).json()
        tokens.append((r["client_id"], r["token"]))
    stop = threading.Event()
    acks: list[Ack] = []
    threads = [
        threading.Thread(target=uploader, args=(server.url, tok, cid, task, stop, acks), daemon=True)
        for cid, tok in tokens
    ]
    rng = random.Random(0)
    # Execute
    try:
        for t in threads:
            t.start()
        for _ in range(KILLS if workers == 1 else KILLS // 2):
            time.sleep(rng.uniform(0.3, 1.2))
            server.kill()
            server.start()
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        server.kill()  # one last kill, whatever it was doing
        server.start()  # recovery: interrupted aggregations are redone
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            db = sqlite3.connect(state / DB_NAME)
            busy = db.execute("SELECT COUNT(*) FROM rounds WHERE status = 'aggregating'").fetchone()[0]
            db.close()
            if busy == 0:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        server.stop()
    # Assert
    db = sqlite3.connect(state / DB_NAME)
    rows = {
        (cid, key): (sha, r)
        for cid, key, sha, r in db.execute("SELECT client_id, idempotency_key, blob, round FROM updates")
    }
    db.close()
    assert len(acks) > 20, "too few uploads went through to test anything"
    missing = [a for a in acks if rows.get((a.client_id, a.key)) != (a.sha256, a.round)]
    assert not missing, f"{len(missing)} acknowledged updates lost: {missing[:3]}"
    assert_rounds_consistent(state, config.rounds)
    expected = recompute_from_scratch(state, bundle, config, "topics")
    stored = stored_versions(state, bundle, "topics")
    assert stored.keys() == expected.keys() and len(stored) >= 3
    for r in expected:
        assert all(np.array_equal(stored[r][k], expected[r][k]) for k in expected[r]), f"round {r} differs"
    log = (tmp_path / "server.log").read_text()
    redone, cleaned = log.count("aggregating it again"), log.count("unreferenced")
    print(f"{len(acks)} acks, {len(stored)} rounds, {redone} aggregations redone, {cleaned} blob cleanups")
