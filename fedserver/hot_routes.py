"""The three requests every client makes each round (poll the round, fetch the module, upload), answered
without FastAPI's request path when they are well formed.

Measured on this project's 2-core EPYC: FastAPI's routing, dependency solving and parameter validation
cost 0.3–0.55 ms a request against 0.13 ms for a bare ASGI app, three times per upload. `HotRoutes` is
plain ASGI in front of FastAPI (`app.ServerApp` calls it first, before FastAPI's middleware stack): a
request whose path, query and headers are in their plain form (digits where a number is expected, lengths
within the limits) is answered by `RoundApi`, the same code the FastAPI routes call; anything else (a
missing or malformed header, an odd query, another method) goes on to FastAPI, whose validation answers
exactly as before. OpenAPI still documents the routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from fedyolo.fedserver.clients import Clients
from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.downloads import not_modified
from fedyolo.fedserver.errors import ApiError
from fedyolo.fedserver.long_poll import PollReads, RoundSignal
from fedyolo.fedserver.rounds import Rounds
from fedyolo.fedserver.uploads import Update

log = logging.getLogger(__name__)

OCTET = "application/octet-stream"
INTERNAL = {"code": "internal", "detail": "internal server error; see the server log"}
SQLITE_INT_MAX = 2**63 - 1
IDEMPOTENCY_KEY = (8, 128)  # min and max length
MAX_METRICS_HEADER = 4096
MAX_WAIT_S = 1e9  # a long poll's `wait_s` above this is refused (the server caps the wait itself far lower)
# Threads that store uploads at once: as many as anyio's default pool had. Uploads stored together share
# one group commit, so fewer threads would mean smaller batches and more fsyncs (measured: 1 to 4 threads
# cost 10-25% more CPU per upload on the load benchmark).
UPLOAD_THREADS = 40

ROUND = re.compile(r"^/v1/tasks/([^/]+)/round$")
MODULE = re.compile(r"^/v1/tasks/([^/]+)/modules/(\d{1,19})$")
UPLOAD = re.compile(r"^/v1/tasks/([^/]+)/rounds/(\d{1,19})/updates$")
WAIT = re.compile(r"^\d{1,10}(\.\d{1,9})?$")


async def read_capped(request: Request, cap: int) -> bytes:
    """The request body, refused as soon as it is known to exceed `cap` bytes (before it is read in full)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or len(length) > 18 or int(length) > cap):
        raise ApiError("payload_too_large", f"the update is over this task's cap of {cap} bytes")
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > cap:
                raise ApiError("payload_too_large", f"the update is over this task's cap of {cap} bytes")
            chunks.append(chunk)
    except ClientDisconnect as e:  # gone, or cut off by the read timeout (http_limits): nobody hears this
        raise ApiError("request_timeout", "the client went away before its update arrived whole") from e
    return b"".join(chunks)


def _small_int(digits: str) -> int:
    if len(digits.lstrip("-")) > 18:
        raise ValueError(f"a number of {len(digits)} digits")
    return int(digits)


def parse_metrics(text: str) -> Any:
    """The Fedyolo-Metrics header as JSON, or ApiError(bad_metrics): never a 500 for deep nesting or huge
    integers (json.loads recurses once per level and int() refuses over 4,300 digits)."""
    try:
        return json.loads(text, parse_int=_small_int)
    except (ValueError, RecursionError) as e:
        raise ApiError("bad_metrics", f"Fedyolo-Metrics is not a small JSON object ({str(e)[:100]})") from e


class RoundApi:
    """What the round, module and upload routes answer once their parameters are valid; called by the
    FastAPI routes and by `HotRoutes` alike."""

    def __init__(self, config: ServerConfig, rounds: Rounds, signal: RoundSignal, polls: PollReads) -> None:
        self.config = config
        self.rounds = rounds
        self.signal = signal
        self.polls = polls
        # A plain pool, not anyio's `run_in_threadpool`: its cancel scope and capacity limiter cost
        # 40-70 us more of the event loop's time per call (measured on this project's 2-core EPYC).
        self._pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="fedserver-upload")

    def close(self) -> None:
        """Wait for the uploads being stored; after this the API stores none."""
        self._pool.shutdown(wait=True)

    async def current_round(self, task_id: str, newer_than: int, wait_s: float) -> Response:
        """The task's round, once one newer than `newer_than` is open or the task finished, or `wait_s`."""
        deadline = time.monotonic() + min(wait_s, self.config.max_long_poll_s)
        self.rounds.task(task_id)
        # No `rounds.refresh()` here: each one that sees a commit wakes the aggregator, once per poll. Another
        # worker's round moves arrive at once (PeerWake); its uploads change only `updates`, within 10 ms.
        info, body = self.polls.answer(task_id)
        while not (info.status == "finished" or (info.status == "open" and info.round > newer_than)):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await self.signal.wait(min(left, 1.0))  # woken by any round change; re-read at least every second
            info, body = self.polls.answer(task_id)
        return Response(body, media_type="application/json")

    def module(self, task_id: str, version: int, request: Request) -> Response:
        """A committed module version as safetensors (in memory: the versions clients ask for are cached)."""
        sha, body = self.rounds.module(task_id, version)
        headers = {"etag": f'"{sha}"', "cache-control": "private, max-age=31536000, immutable"}
        if not_modified(request, headers["etag"]):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=OCTET, headers=headers)

    async def upload(
        self,
        request: Request,
        client: int,
        task_id: str,
        round_id: int,
        key: str,
        examples: int,
        metrics: str,
    ) -> JSONResponse:
        """Read, check and store one update; a retry with the same key gets the first answer."""
        task = self.rounds.task(task_id)
        body = await read_capped(request, self.config.update_cap(task))
        update = Update(client, task_id, round_id, key, body, examples, parse_metrics(metrics))
        answer = await asyncio.get_running_loop().run_in_executor(self._pool, self.rounds.submit, update)
        headers = {"idempotent-replayed": "true"} if answer.replayed else None
        return JSONResponse(answer.body, status_code=answer.status_code, headers=headers)


def _number(text: str | None, low: int) -> int | None:
    """A plain decimal in [low, SQLITE_INT_MAX], or None (FastAPI then validates and answers)."""
    if text is None or not text.isdigit() or not text.isascii() or len(text) > 19:
        return None
    value = int(text)
    return value if low <= value <= SQLITE_INT_MAX else None


class HotRoutes:
    """Plain ASGI in front of FastAPI (outermost: `app.ServerApp` calls it before FastAPI's own middleware
    stack): well-formed hot requests go straight to `RoundApi`, every other request to `app`.

    Measured on the load benchmark: inside FastAPI's stack each hot request passed six middleware layers
    (and each body chunk and response message their wrappers) before reaching this one.
    """

    def __init__(
        self, app: ASGIApp, api: RoundApi, clients: Clients, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.app = app
        self.api = api
        self.clients = clients
        self.headers = headers or []  # added to every hot answer (the page's cross-origin isolation)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = None
        if scope["type"] == "http":
            try:
                response = await self._answer(scope, receive)
            except ApiError as e:
                response = JSONResponse(e.to_json(), status_code=e.status, headers=e.headers)
            except Exception:  # as FastAPI's own handler would answer it
                log.exception("internal error on %s %s", scope["method"], scope["path"])
                response = JSONResponse(INTERNAL, status_code=500)
        if response is None:
            await self.app(scope, receive, send)
        else:
            response.raw_headers.extend(self.headers)
            await response(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive) -> Response | None:
        """The answer, or None when FastAPI should handle the request."""
        method, path = scope["method"], scope["path"]
        if method == "GET":
            if (match := ROUND.match(path)) is not None:
                query = _query(scope)
                if query is None or not set(query) <= {"newer_than", "wait_s"}:
                    return None
                newer_than = _number(query.get("newer_than", "0"), 0)
                wait = query.get("wait_s", "0")
                if newer_than is None or WAIT.match(wait) is None or float(wait) > MAX_WAIT_S:
                    return None
                self._client(scope)
                return await self.api.current_round(match[1], newer_than, float(wait))
            if (match := MODULE.match(path)) is not None and (version := _number(match[2], 0)) is not None:
                self._client(scope)
                return self.api.module(match[1], version, Request(scope))
        elif method == "POST" and (match := UPLOAD.match(path)) is not None:
            round_id = _number(match[2], 1)
            headers = _headers(scope)
            key = headers.get("idempotency-key")
            examples = _number(headers.get("fedyolo-examples"), 1)
            metrics = headers.get("fedyolo-metrics", "{}")
            if (
                round_id is None
                or examples is None
                or key is None
                or not IDEMPOTENCY_KEY[0] <= len(key) <= IDEMPOTENCY_KEY[1]
                or len(metrics) > MAX_METRICS_HEADER
            ):
                return None
            client = self.clients.authenticate(headers.get("authorization"))
            request = Request(scope, receive)
            return await self.api.upload(request, client, match[1], round_id, key, examples, metrics)
        return None

    def _client(self, scope: Scope) -> int:
        return self.clients.authenticate(_headers(scope).get("authorization"))


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers, lower-case names, the first of repeated ones (as Starlette's `get`)."""
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        out.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return out


def _query(scope: Scope) -> dict[str, str] | None:
    """The query's parameters, or None when one repeats or it does not parse plainly."""
    try:
        pairs = parse_qsl(
            scope["query_string"].decode("latin-1"), keep_blank_values=True, strict_parsing=False
        )
    except ValueError:
        return None
    query = dict(pairs)
    return query if len(query) == len(pairs) else None
