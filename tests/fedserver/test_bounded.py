"""One enrolled client can neither wedge a task nor own it (issue: server hardening).

- values no sane module holds are refused at upload; a fold that is not finite never commits: the
  update with the largest change is set aside and the rest committed;
- an update whose blob is lost or damaged is set aside, at aggregation or by the start-up check;
- by default a client's influence is bounded: its weight and its change, whatever it claims;
- an enrollment key registers a bounded number of devices.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fedyolo.fedserver.aggregator import Aggregator
from fedyolo.fedserver.app import create_app
from fedyolo.fedserver.clients import Clients
from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.recovery import recover
from fedyolo.fedserver.rounds import Rounds
from fedyolo.fedserver.store import Store
from fedyolo.fedserver.uploads import Update
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.plan import StrategyParams
from fedyolo.runtime.wire import ModuleWeights, decode_module, encode_module

from .conftest import ENROLL_KEY, Api, configured, stored_blob, task_spec


def module(api: Api, version: int, auth: dict[str, str]) -> ModuleWeights:
    response = api.http.get(f"/v1/tasks/topics/modules/{version}", headers=auth)
    assert response.status_code == 200, response.text
    return decode_module(response.content, api.task)


def nudged(weights: ModuleWeights, seed: int, size: float = 0.01) -> ModuleWeights:
    rng = np.random.default_rng(seed)
    return {k: v + (size * rng.standard_normal(v.shape)).astype(np.float32) for k, v in weights.items()}


def distance(a: ModuleWeights, b: ModuleWeights) -> float:
    return float(np.sqrt(sum(float(((a[k].astype(np.float64) - b[k]) ** 2).sum()) for k in a)))


def test_values_near_the_float32_limit_are_refused_and_the_task_goes_on(make_api: Any) -> None:
    # Prepare: the README's recipe, FedAvgM; 3e38 overflowed its aggregate and wedged the task
    api = make_api(strategy="fedavgm", min_clients=2)
    a, b = api.register(), api.register()
    g = module(api, 0, a)
    # Execute
    huge = [api.upload(auth, 1, {k: np.full_like(v, 3e38) for k, v in g.items()}) for auth in (a, b)]
    honest = [api.upload(auth, 1, nudged(g, i)) for i, auth in enumerate((a, b))]
    info = api.wait_round(a, 2)
    # Assert
    assert [(r.status_code, r.json()["code"]) for r in huge] == [(422, "invalid_update")] * 2
    assert "--max-abs-weight" in huge[0].json()["detail"]
    assert [r.status_code for r in honest] == [201, 201] and info["status"] == "open"


def test_a_fold_that_is_not_finite_sets_the_largest_update_aside_and_commits_the_rest(make_api: Any) -> None:
    # Prepare: every guard off but the fold's own, and a server step that can overflow float32
    api = make_api(
        min_clients=3,
        max_abs_weight=0.0,
        adaptive_clip=0.0,
        example_cap=0.0,
        strategy_params=StrategyParams(server_lr=5.0),
    )
    auths = [api.register() for _ in range(3)]
    g = module(api, 0, auths[0])
    # Execute
    api.upload(auths[0], 1, nudged(g, 1))
    api.upload(auths[1], 1, {k: np.full_like(v, 3e38) for k, v in g.items()})
    api.upload(auths[2], 1, nudged(g, 2))
    info = api.wait_round(auths[0], 2)
    new = module(api, 1, auths[0])
    status = api.http.get("/v1/status").json()
    again = api.upload(auths[1], 1, nudged(g, 3))
    # Assert: committed from the two honest updates alone
    assert info["round"] == 2 and all(np.isfinite(v).all() for v in new.values())
    assert distance(new, g) < 5.0
    topics = next(t for t in status["tasks"] if t["task_id"] == "topics")
    assert topics["quarantined"] == 1
    with api.http.app.state.rounds.store.read() as db:
        (reason,) = db.execute("SELECT reason FROM quarantine").fetchone()
    assert "not finite" in reason
    assert (again.status_code, again.json()["code"]) == (409, "stale_round")


def test_with_defaults_one_client_among_four_cannot_own_the_module(make_api: Any) -> None:
    # Prepare: a first round of honest updates, so the bounds know what an update looks like
    api = make_api(min_clients=4, rounds=3)
    auths = [api.register() for _ in range(4)]
    g0 = module(api, 0, auths[0])
    for i, auth in enumerate(auths):
        api.upload(auth, 1, nudged(g0, i), examples=100)
    api.wait_round(auths[0], 2)
    g1 = module(api, 1, auths[0])
    # Execute: three honest clients and one claiming 10^6 examples and a far-away module
    attack = {k: v + 100.0 for k, v in g1.items()}
    for i, auth in enumerate(auths[:3]):
        api.upload(auth, 2, nudged(g1, 10 + i), examples=100)
    assert api.upload(auths[3], 2, attack, examples=1_000_000).status_code == 201
    api.wait_round(auths[0], 3)
    g2 = module(api, 2, auths[0])
    # Assert: before, it moved the module 99.97% of the way to its own
    assert distance(g2, g1) / distance(attack, g1) < 0.01


def test_a_lost_update_blob_is_set_aside_and_its_round_commits(tmp_path: Path, config: ServerConfig) -> None:
    # Prepare: three accepted updates; the disk then loses the end of the blob log, cutting the last short
    config = configured(config, min_clients=3)
    store = Store(config.state_dir)
    rounds = Rounds(config, open_bundle(config.bundle_dir), store)
    recover(rounds)
    clients = Clients(store, ENROLL_KEY)
    task = task_spec(config.bundle_dir)
    base = decode_module((config.bundle_dir / "tasks/topics/module.safetensors").read_bytes(), task)
    blobs = []
    for i in range(3):
        client_id, _ = clients.register(ENROLL_KEY, f"c{i}")
        answer = rounds.submit(
            Update(client_id, "topics", 1, f"k{i}", encode_module(nudged(base, i), task), 10, {})
        )
        blobs.append(answer.body["sha256"])
    path, offset, _ = stored_blob(config.state_dir, blobs[2])
    os.truncate(path, offset + 10)
    # Execute
    version = Aggregator(rounds).aggregate("topics", 1)
    # Assert
    assert version == 1 and rounds.current("topics").round == 2
    with store.read() as db:
        assert db.execute("SELECT COUNT(*) FROM updates WHERE round = 1").fetchone()[0] == 2
        (reason, lost) = db.execute("SELECT reason, blob FROM quarantine").fetchone()
    assert "missing" in reason and lost == blobs[2]
    store.close()


def test_the_start_up_check_sets_aside_a_damaged_blob_and_says_so(
    tmp_path: Path, config: ServerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: two of three updates in, then the server stops and one blob is damaged on disk
    config = configured(config, min_clients=3)
    with TestClient(create_app(config)) as http:
        api = Api(http, task_spec(config.bundle_dir))
        auths = [api.register() for _ in range(3)]
        g = module(api, 0, auths[0])
        first = api.upload(auths[0], 1, nudged(g, 0)).json()["sha256"]
        api.upload(auths[1], 1, nudged(g, 1))
    path, offset, length = stored_blob(config.state_dir, first)
    with open(path, "r+b") as f:
        f.seek(offset + length - 8)
        f.write(b"damaged!")
    # Execute: the server starts again; the round then fills up
    with caplog.at_level("WARNING"), TestClient(create_app(config)) as http:
        api = Api(http, task_spec(config.bundle_dir))
        info = api.round(auths[0])
        late = api.upload(auths[2], 1, nudged(g, 2))
        retry = api.upload(auths[0], 1, nudged(g, 5))
        api.upload(auths[1], 1, nudged(g, 1))
    # Assert
    assert info["updates"] == 1 and late.json()["round_closed"] is False
    assert (retry.status_code, retry.json()["code"]) == (409, "update_quarantined")
    assert any("store check" in r.message and "corrupt" in r.message for r in caplog.records)


def test_an_enrollment_key_registers_a_bounded_number_of_devices(make_api: Any) -> None:
    api = make_api(max_clients=2)
    api.register(), api.register()
    third = api.http.post("/v1/clients", json={"enroll_key": ENROLL_KEY, "name": "t"})
    assert (third.status_code, third.json()["code"]) == (403, "enrollment_full")
