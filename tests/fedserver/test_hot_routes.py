"""The round, module and upload requests answered by `HotRoutes` (no FastAPI request path) answer exactly as
FastAPI's routes do: the same script of requests, good and bad, against a server with and without it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fedyolo.fedserver.app import create_app
from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.hot_routes import HotRoutes
from fedyolo.runtime.wire import encode_module
from tests.fedserver.conftest import ENROLL_KEY, configured, random_module, task_spec

HOT_PATHS = {"/v1/tasks/{task_id}/round", "/v1/tasks/{task_id}/modules/{version}"} | {
    "/v1/tasks/{task_id}/rounds/{round_id}/updates"
}
VARYING = {"date", "server"}  # headers that differ between any two answers


def script(http: TestClient, bundle_dir: Path) -> list[tuple[str, int, dict[str, str], Any]]:
    """Every answer a client sees over two rounds, with the mistakes clients make; tokens made equal."""
    task = task_spec(bundle_dir)
    tokens = [
        http.post("/v1/clients", json={"enroll_key": ENROLL_KEY, "name": f"c{i}"}).json() for i in range(2)
    ]
    auth = [{"authorization": f"Bearer {t['token']}"} for t in tokens]
    body = encode_module(random_module(task, 1), task)
    # One tensor over the bound: the message names the first one found, in safetensors' (random) order.
    huge = encode_module(random_module(task, 2) | {"head.bias": np.full(5, 1e30, np.float32)}, task)
    answers = []

    def call(name: str, method: str, path: str, **kwargs: Any) -> None:
        response = http.request(method, path, **kwargs)
        headers = {k: v for k, v in response.headers.items() if k not in VARYING}
        content = response.json() if "json" in response.headers.get("content-type", "") else response.content
        answers.append((name, response.status_code, headers, content))

    def upload(i: int, round_id: int, data: bytes, key: str, **extra: str) -> dict[str, Any]:
        headers = auth[i] | {
            "idempotency-key": key,
            "fedyolo-examples": "10",
            "fedyolo-metrics": '{"loss": 1.0}',
        }
        return {"content": data, "headers": headers | extra}

    up = "/v1/tasks/topics/rounds/{}/updates"
    call("round", "GET", "/v1/tasks/topics/round", headers=auth[0])
    call("round waits out", "GET", "/v1/tasks/topics/round?newer_than=1&wait_s=0.05", headers=auth[0])
    call("round, no token", "GET", "/v1/tasks/topics/round")
    call("round, bad token", "GET", "/v1/tasks/topics/round", headers={"authorization": "Bearer fyc_nope"})
    call("round, unknown task", "GET", "/v1/tasks/nope/round", headers=auth[0])
    call("round, negative", "GET", "/v1/tasks/topics/round?newer_than=-1", headers=auth[0])
    call("round, wait not a number", "GET", "/v1/tasks/topics/round?wait_s=soon", headers=auth[0])
    call("module", "GET", "/v1/tasks/topics/modules/0", headers=auth[0])
    etag = answers[-1][2]["etag"]
    call("module 304", "GET", "/v1/tasks/topics/modules/0", headers=auth[0] | {"if-none-match": f"W/{etag}"})
    call("module, unknown version", "GET", "/v1/tasks/topics/modules/7", headers=auth[0])
    call("module, huge version", "GET", "/v1/tasks/topics/modules/99999999999999999999", headers=auth[0])
    call("module, no token", "GET", "/v1/tasks/topics/modules/0")
    call("upload", "POST", up.format(1), **upload(0, 1, body, "key-0000-a"))
    call("upload again", "POST", up.format(1), **upload(0, 1, body, "key-0000-a"))
    call(
        "upload, same key other body",
        "POST",
        up.format(1),
        **upload(0, 1, body[:-4] + b"\0\0\0\0", "key-0000-a"),
    )
    call("upload, second in round", "POST", up.format(1), **upload(0, 1, body, "key-0000-b"))
    call("upload, stale round", "POST", up.format(2), **upload(1, 2, body, "key-0001-a"))
    call("upload, round 0", "POST", up.format(0), **upload(1, 0, body, "key-0001-a"))
    call("upload, short key", "POST", up.format(1), **upload(1, 1, body, "short"))
    call(
        "upload, no examples",
        "POST",
        up.format(1),
        **upload(1, 1, body, "key-0001-a", **{"fedyolo-examples": "0"}),
    )
    call(
        "upload, bad metrics",
        "POST",
        up.format(1),
        **upload(1, 1, body, "key-0001-a", **{"fedyolo-metrics": "[["}),
    )
    call("upload, garbage", "POST", up.format(1), **upload(1, 1, b"garbage", "key-0001-a"))
    call("upload, too big a value", "POST", up.format(1), **upload(1, 1, huge, "key-0001-a"))
    call(
        "upload, unknown task", "POST", "/v1/tasks/nope/rounds/1/updates", **upload(1, 1, body, "key-0001-a")
    )
    call("upload, no token", "POST", up.format(1), content=body, headers={"idempotency-key": "key-0001-a"})
    call("upload closes the round", "POST", up.format(1), **upload(1, 1, body, "key-0001-b"))
    call("next round", "GET", "/v1/tasks/topics/round?newer_than=1&wait_s=10", headers=auth[1])
    return [(n, s, h, c) for n, s, h, c in answers]


def without_ids(
    answers: list[tuple[str, int, dict[str, str], Any]],
) -> list[tuple[str, int, dict[str, str], Any]]:
    """The answers with what differs between two servers by design (deadlines, the round's clock) taken out."""
    out = []
    for name, status, headers, content in answers:
        if isinstance(content, dict) and "deadline_at" in content:
            content = content | {"deadline_at": None}
            headers = headers | {"content-length": None}
        out.append((name, status, headers, content))
    return out


def test_hot_routes_answer_as_fastapi_does(config: ServerConfig, bundle_dir: Path, tmp_path: Path) -> None:
    # Prepare: two servers alike, one without HotRoutes (every request through FastAPI's routes)
    seen = []
    for hot in (True, False):
        app = create_app(configured(config, state_dir=tmp_path / f"state-{hot}", min_clients=2, rounds=3))
        assert isinstance(app.hot, HotRoutes)
        if not hot:
            app.hot = None
        # Execute
        with TestClient(app) as http:
            seen.append(without_ids(script(http, bundle_dir)))
    # Assert
    hot_answers, fastapi_answers = seen
    assert [a[0] for a in hot_answers] == [a[0] for a in fastapi_answers]
    for hot_answer, fastapi_answer in zip(hot_answers, fastapi_answers, strict=True):
        assert hot_answer == fastapi_answer
    statuses = {name: status for name, status, _, _ in hot_answers}
    assert statuses["upload"] == 201 and statuses["upload closes the round"] == 201
    assert statuses["next round"] == 200 and hot_answers[-1][3]["round"] == 2


def test_an_unexpected_error_in_a_hot_route_is_the_json_500_fastapi_gives(
    config: ServerConfig, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the module read fails in a way no check foresaw, with and without HotRoutes in front
    answers = []
    for hot in (True, False):
        app = create_app(configured(config, state_dir=config.state_dir / str(hot)))
        assert isinstance(app.hot, HotRoutes)
        monkeypatch.setattr(app.hot.api.rounds, "module", lambda task_id, version: 1 / 0)
        if not hot:
            app.hot = None
        with TestClient(app, raise_server_exceptions=False) as http:
            token = http.post("/v1/clients", json={"enroll_key": ENROLL_KEY, "name": "c"}).json()["token"]
            # Execute
            response = http.get("/v1/tasks/topics/modules/0", headers={"authorization": f"Bearer {token}"})
        answers.append((response.status_code, response.json()))
    # Assert: the same answer either way, naming no internals
    assert (
        answers[0]
        == answers[1]
        == (500, {"code": "internal", "detail": "internal server error; see the server log"})
    )


def test_well_formed_requests_never_reach_fastapi(config: ServerConfig, bundle_dir: Path) -> None:
    # Prepare: FastAPI's routes for the three requests removed; only HotRoutes can answer them
    app = create_app(config)
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") not in HOT_PATHS]
    task = task_spec(bundle_dir)
    with TestClient(app) as http:
        token = http.post("/v1/clients", json={"enroll_key": ENROLL_KEY, "name": "c"}).json()["token"]
        auth = {"authorization": f"Bearer {token}"}
        headers = auth | {"idempotency-key": uuid.uuid4().hex, "fedyolo-examples": "10"}
        # Execute
        poll = http.get("/v1/tasks/topics/round?newer_than=0&wait_s=0", headers=auth)
        module = http.get("/v1/tasks/topics/modules/0", headers=auth)
        sent = http.post(
            "/v1/tasks/topics/rounds/1/updates",
            content=encode_module(random_module(task, 3), task),
            headers=headers,
        )
        odd = http.get("/v1/tasks/topics/round?newer_than=01x", headers=auth)
    # Assert: answered; a malformed one went on to FastAPI, which no longer has the route
    assert (poll.status_code, poll.json()["round"]) == (200, 1)
    assert module.status_code == 200 and module.headers["etag"].startswith('"')
    assert sent.status_code == 201, sent.text
    assert (odd.status_code, odd.json()["code"]) == (404, "not_found")
