"""The client's transfers: back-off until the server is up, retries under one idempotency key, bundle
downloads that resume, re-fetch what arrived damaged and never write outside the cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.serve import serve_in_thread
from fedyolo.runtime.client import FederationClient, PendingUpdate
from fedyolo.runtime.events import ClientEvent
from fedyolo.runtime.http_transport import Connection, FederationError, RetryPolicy

from .conftest import FAST, KEY


def test_requests_retry_with_exponential_backoff_until_the_server_is_up(
    tmp_path: Path, config: ServerConfig
) -> None:
    # Prepare: nothing listens yet; the third back-off starts the server on that port.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays: list[float] = []
    stack = ExitStack()

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 3:
            stack.enter_context(serve_in_thread(config, port=port))

    conn = Connection(
        f"http://127.0.0.1:{port}", retry=RetryPolicy(attempts=6, base_s=0.1, max_s=1.0), sleep=sleep
    )
    # Execute
    with stack:
        answer = conn.json("GET", "/healthz")
    conn.close()
    # Assert
    assert answer == {"ok": True}
    assert len(delays) == 3
    assert 0.05 <= delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2 and 0.2 <= delays[2] <= 0.4


def test_upload_retries_5xx_with_the_same_idempotency_key_and_gives_up_on_4xx() -> None:
    # Prepare: a server that fails twice, then accepts; and one that refuses.
    seen: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["idempotency-key"])
        if len(seen) < 3:
            return httpx.Response(503, json={"code": "internal", "detail": "busy"})
        return httpx.Response(201, json={"update_id": 1})

    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"code": "invalid_update", "detail": "NaN"})

    pending = PendingUpdate("topics", 1, "key-abcdef12", 3, {}, "0" * 64)
    # Execute
    with FederationClient(
        "http://fed.test", state_dir=Path("/nonexistent/a"), retry=FAST, transport=httpx.MockTransport(flaky)
    ) as c:
        answer = c.upload(pending, b"body")
    with (
        FederationClient(
            "http://fed.test",
            state_dir=Path("/nonexistent/b"),
            retry=FAST,
            transport=httpx.MockTransport(refusing),
        ) as c,
        pytest.raises(FederationError) as refused,
    ):
        c.upload(pending, b"body")
    # Assert
    assert answer == {"update_id": 1}
    assert seen == ["key-abcdef12"] * 3
    assert refused.value.code == "invalid_update" and refused.value.status == 422


def test_bundle_sync_resumes_a_partial_download_and_fetches_each_file_once(
    tmp_path: Path, config: ServerConfig, bundle_dir: Path
) -> None:
    # Prepare: half of the backbone is already there from an interrupted download.
    backbone = (bundle_dir / "backbone" / "backbone.bin").read_bytes()
    cache = tmp_path / "cache"
    (cache / "backbone").mkdir(parents=True)
    (cache / "backbone" / "backbone.bin.part").write_bytes(backbone[: len(backbone) // 2])
    events: list[ClientEvent] = []
    with (
        serve_in_thread(config) as url,
        FederationClient(url, state_dir=tmp_path / "c", on_event=events.append) as c,
    ):
        c.register(KEY)
        # Execute
        first = c.sync_bundle(cache)
        fetched_first = [e for e in events if e.stage == "download"]
        events.clear()
        second = c.sync_bundle(cache)
    # Assert
    got = max(e.done for e in fetched_first if e.detail == "backbone/backbone.bin")
    assert got == len(backbone) - len(backbone) // 2  # only the missing half travelled
    assert (cache / "backbone" / "backbone.bin").read_bytes() == backbone
    assert not [e for e in events if e.stage == "download"]  # nothing travels twice
    assert first.manifest == second.manifest


def test_a_client_start_on_a_cached_bundle_hashes_each_file_once(
    tmp_path: Path, config: ServerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a cache filled by an earlier start, and a count of every file hashed
    from fedyolo.runtime import bundle, client

    hashed: list[str] = []
    real = client.sha256_file

    def counting(path: str | os.PathLike[str]) -> str:
        hashed.append(Path(path).name)
        return real(path)

    with serve_in_thread(config) as url, FederationClient(url, state_dir=tmp_path / "c") as c:
        c.register(KEY)
        c.sync_bundle(tmp_path / "cache")
        monkeypatch.setattr(client, "sha256_file", counting)
        monkeypatch.setattr(bundle, "sha256_file", counting)

        # Execute
        opened = c.sync_bundle(tmp_path / "cache")

    # Assert: the backbone (and every other file) read once, and the bundle opened all the same
    assert hashed.count("backbone.bin") == 1
    assert len(hashed) == len(set(hashed))
    assert opened.manifest.tasks


def test_a_corrupt_partial_download_is_detected_and_fetched_again(
    tmp_path: Path, config: ServerConfig, bundle_dir: Path
) -> None:
    backbone = (bundle_dir / "backbone" / "backbone.bin").read_bytes()
    cache = tmp_path / "cache"
    (cache / "backbone").mkdir(parents=True)
    (cache / "backbone" / "backbone.bin.part").write_bytes(b"\xff" * 1000)  # wrong bytes
    with serve_in_thread(config) as url, FederationClient(url, state_dir=tmp_path / "c") as c:
        c.register(KEY)
        c.sync_bundle(cache)
    assert (cache / "backbone" / "backbone.bin").read_bytes() == backbone


def test_a_listing_that_points_outside_the_cache_is_refused(tmp_path: Path) -> None:
    # Prepare: a hostile server whose bundle listing names a file outside the bundle
    listing = {"files": [{"path": "../../escaped.txt", "sha256": "0" * 64, "bytes": 4}]}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/bundle":
            return httpx.Response(200, json=listing)
        return httpx.Response(200, content=b"evil")

    client = FederationClient(
        "http://hostile", state_dir=tmp_path / "state", transport=httpx.MockTransport(handler)
    )

    # Execute / Assert
    with pytest.raises(FederationError, match="outside the bundle"):
        client.sync_bundle(tmp_path / "cache")
    assert not (tmp_path / "escaped.txt").exists()


def hostile_bundle_server(
    declared: bytes, sent: int, content_length: bool, served: list[int]
) -> httpx.MockTransport:
    """Lists one file of `len(declared)` bytes, then streams `sent` bytes of it in 64 KB chunks."""
    listing = {"files": [{"path": "tokenizer.json", "sha256": hashlib.sha256(declared).hexdigest(),
                          "bytes": len(declared)}]}  # fmt: skip

    def chunks() -> Iterator[bytes]:
        for start in range(0, sent, 1 << 16):
            n = min(1 << 16, sent - start)
            served.append(n)
            yield b"x" * n

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/bundle":
            return httpx.Response(200, json=listing)
        headers = {"content-length": str(sent)} if content_length else {}
        return httpx.Response(200, headers=headers, content=chunks())

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("content_length", [True, False], ids=["declared-length", "no-length"])
def test_a_server_sending_more_than_the_listing_declares_fills_no_disk(
    tmp_path: Path, content_length: bool
) -> None:
    # Prepare: the listing says 538 bytes, the server sends 20 MB
    served: list[int] = []
    sleeps: list[float] = []
    transport = hostile_bundle_server(b"{}" * 269, 20 << 20, content_length, served)
    cache = tmp_path / "cache"
    client = FederationClient(
        "http://hostile", state_dir=tmp_path / "state", transport=transport, sleep=sleeps.append
    )
    # Execute
    with pytest.raises(FederationError) as refused:
        client.sync_bundle(cache)
    # Assert: refused at once, nothing past the declared size read or kept, no retry loop
    assert refused.value.code == "bad_download" and "538 bytes" in str(refused.value)
    assert sum(served) <= 2 << 16  # stopped reading within a chunk of the limit
    assert not [p for p in cache.rglob("*") if p.is_file() and p.name != ".lock"]
    assert sleeps == []


def test_a_file_that_keeps_failing_its_hash_is_retried_with_backoff(tmp_path: Path) -> None:
    # Prepare: the right size, the wrong bytes, every time
    served: list[int] = []
    sleeps: list[float] = []
    transport = hostile_bundle_server(b"{}" * 269, 538, True, served)
    policy = RetryPolicy(attempts=4, base_s=1.0, max_s=3.0)
    client = FederationClient(
        "http://broken", state_dir=tmp_path / "s", transport=transport, retry=policy, sleep=sleeps.append
    )
    # Execute
    with pytest.raises(FederationError) as failed:
        client.sync_bundle(tmp_path / "cache")
    # Assert: a pause between tries, growing, capped; 4 tries in all
    assert failed.value.code == "bad_download" and len(served) == 4
    assert len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0 and 1.5 <= sleeps[2] <= 3.0


@pytest.mark.parametrize("retry_after,expected", [("7", 7.0), ("86400", 120.0)], ids=["honoured", "capped"])
def test_retry_after_is_honoured_within_a_cap(retry_after: str, expected: float) -> None:
    # Prepare: busy once (with Retry-After), then fine
    calls: list[int] = []
    sleeps: list[float] = []

    def busy_once(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(
                429, headers={"retry-after": retry_after}, json={"code": "x", "detail": "y"}
            )
        return httpx.Response(200, json={"ok": True})

    conn = Connection(
        "http://busy", retry=FAST, sleep=sleeps.append, transport=httpx.MockTransport(busy_once)
    )
    # Execute
    answer = conn.json("GET", "/healthz")
    # Assert
    assert answer == {"ok": True} and sleeps == [expected]


def test_a_module_answer_larger_than_the_module_is_refused(tmp_path: Path, bundle_dir: Path) -> None:
    # Prepare: the module endpoint streams 50 MB for a module of a few KB
    from fedyolo.runtime.bundle import open_bundle

    task = open_bundle(bundle_dir, verify=False).task("topics")
    served: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        def chunks() -> Iterator[bytes]:
            for _ in range(800):
                served.append(1 << 16)
                yield b"\0" * (1 << 16)

        return httpx.Response(200, content=chunks())

    client = FederationClient("http://big", state_dir=tmp_path / "s", transport=httpx.MockTransport(handler))
    # Execute
    with pytest.raises(FederationError) as refused:
        client.download_module(task, 0)
    # Assert
    assert refused.value.code == "too_large"
    assert sum(served) <= task.module_bytes + (2 << 16)


def test_a_request_the_server_timed_out_is_sent_again() -> None:
    # Prepare: the server's read timeout cut the first try (408 request_timeout, as fedserver answers it)
    calls: list[int] = []

    def slow_once(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(408, json={"code": "request_timeout", "detail": "too slow"})
        return httpx.Response(201, json={"update_id": 7})

    conn = Connection(
        "http://fed.test", retry=FAST, sleep=lambda s: None, transport=httpx.MockTransport(slow_once)
    )
    # Execute
    response = conn.request("POST", "/v1/tasks/t/rounds/1/updates", content=b"x")
    # Assert
    assert response.status_code == 201 and len(calls) == 2
