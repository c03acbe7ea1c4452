"""What one connection may cost the server, over real sockets to uvicorn: capped request heads, a deadline
to read each request, bounded connections; backoff on wrong enrollment keys; 4xx, never 500, for deep
JSON and absurd numbers; conditional requests and HEAD as RFC 9110 says."""

from __future__ import annotations

import gc
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.http_limits import HeadWithBody
from fedyolo.fedserver.serve import serve_in_thread

from .conftest import ENROLL_KEY, Api


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def answer_of(sock: socket.socket) -> tuple[int, bytes]:
    """(status, raw answer) of what the server sent before closing; status 0 when it sent nothing."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_huge_header_is_refused_before_it_is_read_whole(config: ServerConfig) -> None:
    # Prepare: a request head that would grow to 8 MB, sent 64 KB at a time
    with serve_in_thread(config) as url:
        sock = connect(url)
        sent = 0
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ")
        # Execute
        try:
            while sent < 8 << 20:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, raw = answer_of(sock)
        sock.close()
        # Assert: cut off near the cap (32 KB), not after 8 MB; a JSON 431 when the client can read it
        assert sent < 4 << 20, f"the server read {sent} bytes of header"
        assert status in (0, 431), raw[:300]
        if status == 431:
            assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["code"] == "headers_too_large"
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_headers_up_to_the_cap_are_served_and_the_cap_is_a_setting(config: ServerConfig) -> None:
    with serve_in_thread(config) as url:
        ok = httpx.get(f"{url}/healthz", headers={"x-pad": "a" * 20_000}, timeout=10)
    with serve_in_thread(replace(config, max_header_bytes=4096)) as url:
        refused = httpx.get(f"{url}/healthz", headers={"x-pad": "a" * 8_000}, timeout=10)
    assert ok.status_code == 200
    assert (refused.status_code, refused.json()["code"]) == (431, "headers_too_large")


def test_stalled_heads_and_bodies_time_out_and_their_descriptors_are_freed(config: ServerConfig) -> None:
    # Prepare: 20 heads that stop midway, 20 uploads whose body stops after 10 of 1000 bytes, 10 silent
    with serve_in_thread(replace(config, read_timeout_s=2.0)) as url:
        token = httpx.post(f"{url}/v1/clients", json={"enroll_key": ENROLL_KEY}).json()["token"]
        gc.collect()
        before = settled_descriptors()  # the enrollment's connection closed on the server's side too
        heads, bodies, silent = [], [], []
        for _ in range(20):
            sock = connect(url)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
            heads.append(sock)
        for _ in range(20):
            sock = connect(url)
            sock.sendall(
                b"POST /v1/tasks/topics/rounds/1/updates HTTP/1.1\r\nhost: x\r\n"
                b"authorization: Bearer " + token.encode() + b"\r\nidempotency-key: stalled-body-1\r\n"
                b"fedyolo-examples: 3\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10
            )
            bodies.append(sock)
        silent = [connect(url) for _ in range(10)]
        held = wait_for(lambda: open_descriptors() - before, lambda n: n >= 100, 1.5)  # our 50 + the server's
        # Execute: wait past the read timeout; each answer_of returns when the server closes
        answers = [answer_of(sock) for sock in heads + bodies + silent]
        after = wait_for(lambda: open_descriptors() - before, lambda n: held - n >= 50, 10.0)
        for sock in heads + bodies + silent:
            sock.close()
        alive = httpx.get(f"{url}/healthz", timeout=10).status_code
    # Assert: every stalled request got a 408 (or a close) and the server let go of its descriptors
    assert held >= 100, held
    assert held - after >= 50, f"the server still holds {50 - (held - after)} of its 50 descriptors"
    assert all(status in (0, 408) for status, _ in answers)
    assert sum(status == 408 for status, _ in answers) >= 40
    codes = {json.loads(raw.split(b"\r\n\r\n", 1)[1])["code"] for status, raw in answers if status == 408}
    assert codes == {"request_timeout"} and alive == 200


def settled_descriptors(timeout_s: float = 2.0) -> int:
    """Open descriptors once the count holds still for 100 ms (a closed connection's server side goes a
    moment after the client's)."""
    last, deadline = open_descriptors(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if (now := open_descriptors()) == last:
            return now
        last = now
    return last


def wait_for(measure: Callable[[], int], done: Callable[[int], bool], timeout_s: float) -> int:
    """Measure until `done` or `timeout_s` (bounded), returning the last measure."""
    deadline = time.monotonic() + timeout_s
    value = measure()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = measure()
    return value


def test_connections_beyond_the_limit_get_503_with_retry_after(config: ServerConfig) -> None:
    with serve_in_thread(replace(config, max_connections=8)) as url:
        idle = [connect(url) for _ in range(10)]
        time.sleep(0.2)
        busy = httpx.get(f"{url}/healthz", timeout=10)
        for sock in idle:
            sock.close()
        time.sleep(0.2)
        free = httpx.get(f"{url}/healthz", timeout=10)
    assert (busy.status_code, busy.json()["code"]) == (503, "server_busy")
    assert busy.headers["retry-after"] == "1"
    assert free.status_code == 200


def test_wrong_enrollment_keys_make_the_address_wait_longer_each_time(api: Api) -> None:
    # Prepare
    clients = api.http.app.state.clients
    now = [1000.0]
    clients.backoff.clock = lambda: now[0]

    def register(key: str) -> httpx.Response:
        return api.http.post("/v1/clients", json={"enroll_key": key, "name": "guess"})

    # Execute
    first = [register(f"guess-number-{i:04d}") for i in range(5)]
    locked = register("guess-number-0005")
    right_key_while_locked = register(ENROLL_KEY)
    now[0] += float(locked.headers["retry-after"])
    after_wait = register("guess-number-0006")
    locked_longer = register(ENROLL_KEY)
    now[0] += 1000
    finally_in = register(ENROLL_KEY)
    # Assert
    assert [r.status_code for r in first] == [401] * 5
    assert (locked.status_code, locked.json()["code"]) == (429, "too_many_attempts")
    assert right_key_while_locked.status_code == 429  # no guessing while locked, even a right guess
    assert after_wait.status_code == 401
    assert locked_longer.status_code == 429
    assert int(locked_longer.headers["retry-after"]) > int(locked.headers["retry-after"])
    assert finally_in.status_code == 201


@pytest.mark.parametrize(
    "headers,status,code",
    [
        ({"fedyolo-metrics": "[" * 2000 + "]" * 2000}, 422, "bad_metrics"),
        ({"fedyolo-metrics": '{"loss": 1' + "0" * 4000 + "}"}, 422, "bad_metrics"),
        ({"fedyolo-examples": "9" * 5000}, 422, "bad_examples"),
        ({"content-length": "9" * 5000}, 413, "payload_too_large"),
    ],
    ids=[
        "metrics-nested-2000-deep",
        "metrics-4000-digit-number",
        "examples-5000-digits",
        "length-5000-digits",
    ],
)
def test_deep_json_and_absurd_numbers_in_an_upload_are_4xx(
    api: Api, headers: dict[str, str], status: int, code: str
) -> None:
    auth = api.register()
    response = api.http.post(
        "/v1/tasks/topics/rounds/1/updates",
        content=b"x",
        headers=auth | {"idempotency-key": "absurd-key-1", "fedyolo-examples": "3"} | headers,
    )
    assert (response.status_code, response.json()["code"]) == (status, code)


def test_a_range_of_5000_digits_is_416(api: Api) -> None:
    auth = api.register()
    response = api.http.get(
        "/v1/bundle/files/manifest.json", headers=auth | {"range": "bytes=" + "1" * 5000 + "-"}
    )
    assert (response.status_code, response.json()["code"]) == (416, "bad_range")
    assert len(response.text) < 500


def test_conditional_requests_and_head_on_bundle_files_follow_rfc_9110(api: Api, bundle_dir: Path) -> None:
    # Prepare
    auth = api.register()
    path = "/v1/bundle/files/manifest.json"
    etag = api.http.get(path, headers=auth).headers["etag"]
    module_etag = api.http.get("/v1/tasks/topics/modules/0", headers=auth).headers["etag"]
    # Execute
    weak = api.http.get(path, headers=auth | {"if-none-match": f"W/{etag}"})
    star = api.http.get(path, headers=auth | {"if-none-match": "*"})
    listed = api.http.get(path, headers=auth | {"if-none-match": f'"other", {etag}'})
    other = api.http.get(path, headers=auth | {"if-none-match": '"other"'})
    head = api.http.head(path, headers=auth)
    head_304 = api.http.head(path, headers=auth | {"if-none-match": etag})
    module_weak = api.http.get(
        "/v1/tasks/topics/modules/0", headers=auth | {"if-none-match": f"W/{module_etag}"}
    )
    # Assert
    size = (bundle_dir / "manifest.json").stat().st_size
    assert weak.status_code == star.status_code == listed.status_code == 304
    assert weak.headers["etag"] == etag and weak.content == b""
    assert other.status_code == 200 and len(other.content) == size
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(size) and head.headers["etag"] == etag
    assert head_304.status_code == 304
    assert module_weak.status_code == 304


def test_each_answer_goes_out_in_one_write_with_its_head(
    config: ServerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: record every write of every response cycle, beneath the head holder
    writes: list[bytes] = []

    class Recorder:
        def __init__(self, transport: Any) -> None:
            self.transport = transport

        def write(self, data: bytes) -> None:
            writes.append(bytes(data))
            self.transport.write(data)

        def writelines(self, parts: list[bytes]) -> None:
            writes.append(b"".join(parts))
            self.transport.writelines(parts)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.transport, name)

    install = HeadWithBody.install

    def recorded(cycle: Any) -> None:
        cycle.transport = Recorder(cycle.transport)
        install(cycle)

    monkeypatch.setattr(HeadWithBody, "install", recorded)
    with serve_in_thread(config) as url:
        # Execute: a JSON answer, a HEAD (no body), and a request that expects 100 Continue
        with httpx.Client(base_url=url) as http:
            health = http.get("/healthz")
            token = http.post("/v1/clients", json={"enroll_key": ENROLL_KEY, "name": "p"}).json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            head = http.head("/v1/bundle/files/manifest.json", headers=auth)
        sock = connect(url)
        body = json.dumps({"enroll_key": ENROLL_KEY, "name": "q"}).encode()
        sock.sendall(
            b"POST /v1/clients HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        interim = sock.recv(100)
        sock.sendall(body)
        status, _ = answer_of(sock)
        sock.close()
    # Assert: one write per answer, its head and body together; the 100 Continue at once, on its own
    assert health.status_code == 200 and head.status_code == 200 and status == 201
    assert interim.startswith(b"HTTP/1.1 100")
    answers = [w for w in writes if not w.startswith(b"HTTP/1.1 100")]
    assert len(answers) == 4 and all(w.startswith(b"HTTP/1.1 ") for w in answers)
    assert answers[0].endswith(health.content) and answers[2].endswith(b"\r\n\r\n")
    assert len(writes) == 5
