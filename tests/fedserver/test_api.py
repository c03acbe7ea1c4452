"""The HTTP API in-process: auth, errors with stable codes, refused updates change nothing, rounds."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from fedyolo.fedserver import blob_log
from fedyolo.fedserver.store import DB_NAME
from fedyolo.runtime.plan import PlanError
from fedyolo.runtime.wire import decode_module, encode_module

from .conftest import ENROLL_KEY, Api, random_module


def snapshot(api: Api) -> dict[str, Any]:
    """Everything a refused update must leave alone: rows of every table and the blob files' sizes."""
    store = api.http.app.state.rounds.store
    with store.read() as db:
        tables = {
            t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
            for t in ("updates", "rounds", "module_versions", "tasks", "blob_spans")
        }
    rows = {t: [tuple(r) for r in rs] for t, rs in tables.items()}
    blobs = sorted((p.name, p.stat().st_size) for p in store.blobs.root.rglob("*") if p.is_file())
    return {"rows": rows, "blobs": blobs}


def test_register_gives_a_token_that_is_stored_only_as_a_hash(api: Api, config: Any) -> None:
    # Execute
    response = api.http.post("/v1/clients", json={"enroll_key": ENROLL_KEY, "name": "phone"})
    wrong = api.http.post("/v1/clients", json={"enroll_key": "not-the-key", "name": "phone"})
    # Assert
    assert response.status_code == 201
    token = response.json()["token"]
    assert wrong.status_code == 401 and wrong.json()["code"] == "bad_enroll_key"
    db = sqlite3.connect(Path(config.state_dir) / DB_NAME)
    stored = [r[0] for r in db.execute("SELECT token_hash FROM clients")]
    assert stored == [hashlib.sha256(token.encode()).hexdigest()]
    assert token not in (Path(config.state_dir) / DB_NAME).read_bytes().decode("latin-1")


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/tasks"),
        ("GET", "/v1/bundle"),
        ("GET", "/v1/bundle/files/manifest.json"),
        ("GET", "/v1/tasks/topics/round"),
        ("GET", "/v1/tasks/topics/modules/0"),
        ("GET", "/v1/tasks/topics/history"),
        ("POST", "/v1/tasks/topics/rounds/1/updates"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer fyc_not-a-real-token", "Basic abc"])
def test_bad_or_missing_token_is_401(api: Api, method: str, path: str, auth: str | None) -> None:
    headers = {"authorization": auth} if auth else {}
    response = api.http.request(method, path, headers=headers, content=b"x" if method == "POST" else None)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


def test_unknown_task_is_404_everywhere(api: Api) -> None:
    auth = api.register()
    for path in ("/v1/tasks/nope/round", "/v1/tasks/nope/modules/0", "/v1/tasks/nope/history"):
        response = api.http.get(path, headers=auth)
        assert (response.status_code, response.json()["code"]) == (404, "unknown_task")
    upload = api.upload(auth, 1, random_module(api.task, 0), task_id="nope")
    assert (upload.status_code, upload.json()["code"]) == (404, "unknown_task")
    assert api.http.get("/v1/nothing-here").json()["code"] == "not_found"


def test_duplicate_upload_gets_the_first_answer_and_counts_once(api: Api) -> None:
    # Prepare
    auth = api.register()
    body = encode_module(random_module(api.task, 1), api.task)
    # Execute
    first = api.upload(auth, 1, body, key="key-0000001")
    again = api.upload(auth, 1, body, key="key-0000001")
    other = api.upload(auth, 1, encode_module(random_module(api.task, 2), api.task), key="key-0000001")
    # Assert
    assert first.status_code == 201 and again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_conflict")
    assert api.round(auth)["updates"] == 1


def test_second_update_of_a_client_in_one_round_is_409(api: Api) -> None:
    auth = api.register()
    assert api.upload(auth, 1, random_module(api.task, 1)).status_code == 201
    response = api.upload(auth, 1, random_module(api.task, 2))
    assert (response.status_code, response.json()["code"]) == (409, "already_submitted")


def test_stale_round_is_409_and_changes_nothing(api: Api) -> None:
    # Prepare: round 1 closes with two clients; a third client still holds round 1.
    a, b, late = api.register(), api.register(), api.register()
    api.upload(a, 1, random_module(api.task, 1))
    api.upload(b, 1, random_module(api.task, 2))
    api.wait_round(a, 2)
    before = snapshot(api)
    # Execute
    old = api.upload(late, 1, random_module(api.task, 3))
    future = api.upload(late, 7, random_module(api.task, 3))
    # Assert
    assert (old.status_code, old.json()["code"]) == (409, "stale_round")
    assert (future.status_code, future.json()["code"]) == (409, "stale_round")
    assert snapshot(api) == before


@pytest.mark.parametrize("failing", ["pwritev", "fdatasync"])
def test_a_full_disk_is_503_with_retry_after_and_keeps_nothing_of_the_update(
    api: Api, failing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: one update stored, then the disk fills up (the blob log's write or its sync fails once)
    a, b = api.register(), api.register()
    api.upload(a, 1, random_module(api.task, 1))
    before = snapshot(api)
    real = getattr(blob_log.os, failing)
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    def full(*args: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(*args)

    monkeypatch.setattr(blob_log.os, failing, full)
    key = "full-disk-key-1"
    # Execute: the upload while full, then the same upload again once there is space
    refused = api.upload(b, 1, random_module(api.task, 2), key=key)
    after_refusal = snapshot(api)
    retried = api.upload(b, 1, random_module(api.task, 2), key=key)
    # Assert
    assert (refused.status_code, refused.json()["code"]) == (503, "storage_unavailable")
    assert "No space left on device" in refused.json()["detail"] and refused.headers["retry-after"] == "60"
    assert after_refusal["rows"] == before["rows"]
    assert retried.status_code == 201 and retried.json()["round_updates"] == 2


def bad_bodies(api: Api) -> dict[str, tuple[bytes, dict[str, Any]]]:
    good = random_module(api.task, 5)
    nan = {k: v.copy() for k, v in good.items()}
    nan["head.bias"][0] = np.nan
    inf = {k: v.copy() for k, v in good.items()}
    inf["adapter.up"][1, 1] = np.inf
    shape = dict(good) | {"head.bias": np.zeros(6, np.float32)}
    extra = dict(good) | {"evil": np.zeros(3, np.float32)}
    missing = {k: v for k, v in good.items() if k != "head.bias"}
    f64 = {k: v.astype(np.float64) for k, v in good.items()}
    ok = encode_module(good, api.task)
    return {
        "nan": (st_save(nan), {}),
        "inf": (st_save(inf), {}),
        "shape": (st_save(shape), {}),
        "extra": (st_save(extra), {}),
        "missing": (st_save(missing), {}),
        "float64": (st_save(f64), {}),
        "garbage": (b"\x00garbage" * 50, {}),
        "empty": (b"", {}),
        "zero_examples": (ok, {"examples": 0}),
        "negative_examples": (ok, {"examples": -5}),
        "huge_examples": (ok, {"examples": 10**12}),
        "examples_not_a_number": (ok, {"examples": "ten"}),
        "metrics_not_json": (ok, {"metrics": "{nope"}),
        "metrics_nan": (ok, {"metrics": '{"accuracy": NaN}'}),
        "metrics_list": (ok, {"metrics": "[1, 2]"}),
        "metrics_string": (ok, {"metrics": '{"accuracy": "high"}'}),
    }


@pytest.mark.parametrize(
    "case,code",
    [
        ("nan", "invalid_update"),
        ("inf", "invalid_update"),
        ("shape", "invalid_update"),
        ("extra", "invalid_update"),
        ("missing", "invalid_update"),
        ("float64", "invalid_update"),
        ("garbage", "invalid_update"),
        ("empty", "invalid_update"),
        ("zero_examples", "bad_examples"),
        ("negative_examples", "bad_examples"),
        ("huge_examples", "bad_examples"),
        ("examples_not_a_number", "bad_examples"),
        ("metrics_not_json", "bad_metrics"),
        ("metrics_nan", "bad_metrics"),
        ("metrics_list", "bad_metrics"),
        ("metrics_string", "bad_metrics"),
    ],
)
def test_rejected_update_changes_nothing(api: Api, case: str, code: str) -> None:
    # Prepare
    auth = api.register()
    body, headers = bad_bodies(api)[case]
    before = snapshot(api)
    # Execute
    response = api.upload(auth, 1, body, **headers)
    # Assert
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code
    assert snapshot(api) == before
    assert api.upload(auth, 1, random_module(api.task, 9)).status_code == 201  # the client may still send


def test_oversized_body_is_refused_by_length_and_while_streaming(api: Api, config: Any) -> None:
    # Prepare
    auth = api.register()
    cap = config.update_cap(api.task)
    before = snapshot(api)
    headers = auth | {"idempotency-key": "big-00001", "fedyolo-examples": "3"}
    sent: list[int] = []

    def chunks():  # no Content-Length: chunked transfer; the server must stop counting at the cap
        for _ in range(64):
            sent.append(1)
            yield b"\x00" * (cap // 8)

    # Execute
    by_length = api.http.post(
        "/v1/tasks/topics/rounds/1/updates", content=b"\x00" * (cap + 1), headers=headers
    )
    streamed = api.http.post("/v1/tasks/topics/rounds/1/updates", content=chunks(), headers=headers)
    # Assert
    assert (by_length.status_code, by_length.json()["code"]) == (413, "payload_too_large")
    assert (streamed.status_code, streamed.json()["code"]) == (413, "payload_too_large")
    assert snapshot(api) == before


def test_round_commits_the_example_weighted_mean_and_the_next_round_opens(make_api: Any) -> None:
    # Prepare: bounds off, so the mean is exact (test_bounds.py covers them)
    api = make_api(adaptive_clip=0.0, example_cap=0.0)
    a, b = api.register(), api.register()
    global0 = decode_module(api.http.get("/v1/tasks/topics/modules/0", headers=a).content, api.task)
    wa, wb = random_module(api.task, 11), random_module(api.task, 12)
    # Execute
    ra = api.upload(a, 1, wa, examples=10, metrics='{"accuracy": 0.2}')
    rb = api.upload(b, 1, wb, examples=30, metrics='{"accuracy": 0.6}')
    info = api.wait_round(a, 2)
    module1 = api.http.get("/v1/tasks/topics/modules/1", headers=a)
    history = api.http.get("/v1/tasks/topics/history", headers=a).json()["rounds"]
    status = api.http.get("/v1/status").json()
    # Assert
    assert ra.json()["round_closed"] is False and rb.json()["round_closed"] is True
    assert info["round"] == 2 and info["module_version"] == 1 and info["status"] == "open"
    got = decode_module(module1.content, api.task)
    for k in global0:
        expected = (10 * wa[k].astype(np.float64) + 30 * wb[k]) / 40
        np.testing.assert_allclose(got[k], expected, rtol=1e-6, atol=1e-7)
    assert module1.headers["etag"] == f'"{hashlib.sha256(module1.content).hexdigest()}"'
    assert history[0]["updates"] == 2 and history[0]["examples"] == 40
    assert history[0]["metrics"]["accuracy"] == pytest.approx(0.5)
    topics = next(t for t in status["tasks"] if t["task_id"] == "topics")
    assert (
        topics["rounds_committed"] == 1
        and topics["clients"] == 2
        and topics["accuracy"] == pytest.approx(0.5)
    )


def test_tasks_run_their_rounds_independently(api: Api) -> None:
    a, b = api.register(), api.register()
    for auth in (a, b):
        assert api.upload(auth, 1, random_module(api.task, 1), task_id="language").status_code == 201
    assert api.wait_round(a, 1)["round"] == 1  # topics untouched
    lang = api.http.get("/v1/tasks/language/round", headers=a).json()
    for _ in range(200):
        if lang["round"] == 2:
            break
        lang = api.http.get("/v1/tasks/language/round", headers=a).json()
    assert lang["round"] == 2 and api.round(a)["round"] == 1


def test_after_the_last_round_the_task_is_finished(make_api: Any) -> None:
    api = make_api(rounds=1, min_clients=1)
    auth = api.register()
    api.upload(auth, 1, random_module(api.task, 1))
    info = api.wait_round(auth, 1)
    late = api.upload(auth, 1, random_module(api.task, 2))
    assert info["status"] == "finished" and info["module_version"] == 1
    assert (late.status_code, late.json()["code"]) == (409, "task_finished")


def test_rounds_hand_out_the_cosine_scheduled_learning_rate(make_api: Any) -> None:
    api = make_api(rounds=4, min_clients=1, lr=4e-3, lr_schedule="cosine")
    auth = api.register()
    seen = [api.round(auth)["lr"]]
    for r in (1, 2):
        assert api.upload(auth, r, random_module(api.task, r)).status_code == 201
        seen.append(api.wait_round(auth, r + 1)["lr"])
    assert seen == pytest.approx([4e-3, 4e-3 * (1 + math.cos(math.pi / 4)) / 2, 2e-3])


def test_an_unknown_lr_schedule_is_refused_at_start_up(config: Any) -> None:
    with pytest.raises(PlanError, match="unknown lr schedule 'warm'"):
        config.with_plan(lr_schedule="warm")


def test_deadline_closes_a_round_with_fewer_updates_and_extends_an_empty_one(make_api: Any) -> None:
    api = make_api(min_clients=5, deadline_s=0.3)
    auth = api.register()
    first_deadline = api.round(auth)["deadline_at"]
    api.upload(auth, 1, random_module(api.task, 1))
    info = api.wait_round(auth, 2, timeout_s=10)
    other = api.http.get("/v1/tasks/language/round", headers=auth).json()
    assert info["round"] == 2
    assert other["round"] == 1 and other["deadline_at"] > first_deadline  # empty: extended, not closed


def test_clip_norm_bounds_each_clients_change(make_api: Any) -> None:
    api = make_api(min_clients=1, clip_norm=0.5)
    auth = api.register()
    g = decode_module(api.http.get("/v1/tasks/topics/modules/0", headers=auth).content, api.task)
    far = {k: v + 10.0 for k, v in g.items()}
    api.upload(auth, 1, far)
    api.wait_round(auth, 2)
    new = decode_module(api.http.get("/v1/tasks/topics/modules/1", headers=auth).content, api.task)
    change = np.sqrt(sum(float(((new[k].astype(np.float64) - g[k]) ** 2).sum()) for k in g))
    assert change == pytest.approx(0.5, rel=1e-4)


def test_bundle_files_have_sha256_etags_ranges_and_304(api: Api, bundle_dir: Path) -> None:
    auth = api.register()
    listing = {f["path"]: f for f in api.http.get("/v1/bundle", headers=auth).json()["files"]}
    backbone = (bundle_dir / "backbone/backbone.bin").read_bytes()
    entry = listing["backbone/backbone.bin"]
    url = "/v1/bundle/files/backbone/backbone.bin"
    full = api.http.get(url, headers=auth)
    tail = api.http.get(url, headers=auth | {"range": "bytes=1000-"})
    cached = api.http.get(url, headers=auth | {"if-none-match": f'"{entry["sha256"]}"'})
    bad = api.http.get(url, headers=auth | {"range": f"bytes={len(backbone) + 5}-"})
    outside = api.http.get("/v1/bundle/files/../state/fedserver.sqlite3", headers=auth)
    assert set(listing) >= {"manifest.json", "backbone/backbone.bin", "tasks/topics/module.safetensors"}
    assert full.content == backbone and full.headers["etag"] == f'"{entry["sha256"]}"'
    assert entry["sha256"] == hashlib.sha256(backbone).hexdigest()
    assert tail.status_code == 206 and tail.content == backbone[1000:]
    assert cached.status_code == 304
    assert (bad.status_code, bad.json()["code"]) == (416, "bad_range")
    assert outside.status_code == 404


def test_openapi_is_published_and_errors_are_documented(api: Api) -> None:
    spec = api.http.get("/openapi.json").json()
    upload = spec["paths"]["/v1/tasks/{task_id}/rounds/{round_id}/updates"]["post"]
    assert "application/octet-stream" in upload["requestBody"]["content"]
    assert {"401", "404", "409", "413", "422"} <= set(upload["responses"])
    assert json.dumps(spec)  # serialisable as published


def test_long_poll_answers_when_the_next_round_opens_or_when_its_wait_is_over(make_api: Any) -> None:
    # Prepare: round 1 closes with this client's update; the long poll asks for anything newer than 1.
    import threading
    import time

    api = make_api(min_clients=1, max_long_poll_s=5.0)
    auth = api.register()
    started = time.monotonic()
    waited: dict[str, Any] = {}

    def poll() -> None:
        response = api.http.get("/v1/tasks/topics/round?newer_than=1&wait_s=5", headers=auth)
        waited["info"], waited["s"] = response.json(), time.monotonic() - started

    # Execute
    quiet_start = time.monotonic()
    quiet = api.http.get("/v1/tasks/language/round?newer_than=1&wait_s=0.3", headers=auth).json()
    quiet_s = time.monotonic() - quiet_start
    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.3)
    api.upload(auth, 1, random_module(api.task, 1))
    thread.join(timeout=10)
    # Assert
    assert quiet["round"] == 1 and 0.25 <= quiet_s < 3  # nothing happened: answered after its wait
    assert waited["info"]["round"] == 2 and waited["info"]["status"] == "open"
    assert 0.3 <= waited["s"] < 4  # woken by the commit, not by the 5 s timeout
