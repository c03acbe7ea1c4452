"""The HTTP API: `create_app(config)` builds a FastAPI app over one bundle and one state directory.

Bodies of module weights are raw safetensors (`application/octet-stream`); everything else is JSON.
Every error is `{"code": ..., "detail": ...}` with a code from `errors.CODES`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

import fedyolo
from fedyolo.fedserver.aggregator import Aggregator
from fedyolo.fedserver.clients import Clients
from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.downloads import bundle_files, check_range, not_modified
from fedyolo.fedserver.errors import CODES, ApiError
from fedyolo.fedserver.hot_routes import (
    IDEMPOTENCY_KEY,
    INTERNAL,
    MAX_METRICS_HEADER,
    MAX_WAIT_S,
    OCTET,
    SQLITE_INT_MAX,
    HotRoutes,
    RoundApi,
)
from fedyolo.fedserver.long_poll import PollReads, RoundSignal
from fedyolo.fedserver.peer_wake import PeerWake
from fedyolo.fedserver.recovery import recover as recover_state
from fedyolo.fedserver.reports import round_history, server_status
from fedyolo.fedserver.rounds import Rounds
from fedyolo.fedserver.schemas import (
    BundleListing,
    ErrorBody,
    History,
    RegisterRequest,
    RegisterResponse,
    RoundBody,
    Status,
    TaskList,
    UpdateAccepted,
)
from fedyolo.fedserver.store import Store, start_up_errors
from fedyolo.fedserver.web import ISOLATION, mount_web
from fedyolo.runtime.bundle import open_bundle

log = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": ", ".join(sorted(c for c, s in CODES.items() if s == status))}
    for status in sorted(set(CODES.values()))
}
ERRORS[400] = {"model": ErrorBody, "description": "invalid_request: a body that is not JSON"}
# Header names whose validation errors get the upload's own codes rather than invalid_request.
HEADER_CODES = {"Fedyolo-Examples": "bad_examples", "Fedyolo-Metrics": "bad_metrics"}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "the module weights as safetensors, names and shapes as the manifest says",
        "content": {OCTET: {"schema": {"type": "string", "format": "binary"}}},
    }
}
STATUS_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


bearer = HTTPBearer(auto_error=False, description="the client token from POST /v1/clients")


async def client_id(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None
) -> int:
    """The authenticated client, from `Authorization: Bearer <token>` (declared for OpenAPI by `bearer`).

    Async on purpose: a known token is a dict look-up, not worth a trip through the thread pool.
    """
    clients: Clients = request.app.state.clients
    return clients.authenticate(request.headers.get("authorization"))


Client = Annotated[int, Depends(client_id)]


class ServerApp(FastAPI):
    """FastAPI, with `hot` (`HotRoutes`) answering the three requests every client makes each round
    before FastAPI's middleware stack; every other request, and lifespan, goes to FastAPI."""

    hot: HotRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot is not None and scope["type"] == "http":
            await self.hot(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(config: ServerConfig, recover: bool = True) -> FastAPI:
    """Open the bundle (every file hashed) and the state directory, recover, and build the app.

    Worker processes pass `recover=False`: their parent recovered before starting them.
    """
    bundle = open_bundle(config.bundle_dir, verify=recover)
    store = Store(config.state_dir)
    rounds = Rounds(config, bundle, store)
    if recover:
        with start_up_errors(config.state_dir):
            recover_state(rounds)
    aggregator = Aggregator(rounds)
    signal = RoundSignal(rounds, PeerWake(config.state_dir))
    clients = Clients(store, config.enroll_key, config.max_clients)
    files = bundle_files(bundle)
    api = RoundApi(config, rounds, signal, PollReads(rounds))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        aggregator.start()
        watcher = asyncio.create_task(signal.watch())
        yield
        watcher.cancel()
        api.close()
        aggregator.stop()
        store.close()

    app = ServerApp(
        title="fedyolo fedserver",
        version=fedyolo.__version__,
        description="Federated rounds per task over one frozen backbone: clients download the bundle "
        "once, train a small module, and upload its weights as safetensors.",
        lifespan=lifespan,
        responses=ERRORS,
    )
    app.state.rounds = rounds
    isolated = mount_web(app, client_id, config.state_dir)
    app.hot = HotRoutes(app.fastapi, api, clients, headers=ISOLATION if isolated else None)
    app.state.aggregator = aggregator
    app.state.clients = clients

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.to_json(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        fields = {str(p) for e in errors for p in e["loc"]}
        code = next((c for name, c in HEADER_CODES.items() if name in fields), "invalid_request")
        return JSONResponse({"code": code, "detail": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "invalid_request")
        body = {"code": code, "detail": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(INTERNAL, 500)

    @app.get("/healthz", tags=["server"])
    def healthz() -> dict[str, bool]:
        """Liveness: the app is up and its state is open."""
        return {"ok": True}

    @app.get("/v1/status", response_model=Status, tags=["server"])
    def status() -> dict[str, Any]:
        """Per task: rounds, clients, last accuracy, bytes received. Public: no token."""
        return server_status(rounds)

    @app.post("/v1/clients", status_code=201, response_model=RegisterResponse, tags=["clients"])
    def register(body: RegisterRequest, request: Request) -> RegisterResponse:
        """Register a device with the enrollment key; the token in the answer is shown once.

        Wrong keys from one address make it wait, longer each time: 429 with Retry-After.
        """
        address = request.client.host if request.client is not None else ""
        cid, token = clients.register(body.enroll_key, body.name, address)
        return RegisterResponse(client_id=cid, token=token)

    @app.get("/v1/tasks", response_model=TaskList, tags=["tasks"])
    def tasks(client: Client) -> dict[str, Any]:
        """The tasks served, each a module over the shared backbone."""
        return {
            "tasks": [
                {
                    "task_id": t.task_id,
                    "module_kind": t.module_kind,
                    "labels": list(t.labels),
                    "module_bytes": t.module_bytes,
                    "max_update_bytes": config.update_cap(t),
                }
                for t in (rounds.task(task_id) for task_id in rounds.task_ids())
            ]
        }

    @app.get("/v1/bundle", response_model=BundleListing, tags=["bundle"])
    def bundle_listing(client: Client) -> dict[str, Any]:
        """Every bundle file with its sha256 and size: download each once, keep it, check it."""
        return {"files": [{"path": p, **asdict(e)} for p, e in sorted(files.items())]}

    file_answers: dict[int | str, dict[str, Any]] = {
        200: {"content": {OCTET: {}}},
        206: {"description": "a byte range", "content": {OCTET: {}}},
        304: {"description": "not modified"},
    }

    @app.head(
        "/v1/bundle/files/{path:path}",
        operation_id="bundle_file_head",
        tags=["bundle"],
        response_class=Response,
        responses=file_answers,
        summary="Bundle File Headers",
    )
    @app.get("/v1/bundle/files/{path:path}", tags=["bundle"], response_class=Response, responses=file_answers)
    def bundle_file(path: str, request: Request, client: Client) -> Response:
        """One bundle file; ETag is its quoted sha256; `Range: bytes=start-` resumes a download."""
        entry = files.get(path)
        if entry is None:
            raise ApiError("not_found", f"{path!r} is not a file of this bundle; GET /v1/bundle lists them")
        etag = f'"{entry.sha256}"'
        if not_modified(request, etag):
            return Response(status_code=304, headers={"etag": etag})
        check_range(request, entry.bytes)
        return FileResponse(bundle.root / path, media_type=OCTET, headers={"etag": etag})

    @app.get("/v1/tasks/{task_id}/round", response_model=RoundBody, tags=["rounds"])
    async def current_round(
        task_id: str,
        client: Client,
        newer_than: Annotated[int, Query(ge=0, le=SQLITE_INT_MAX, description="the last round you sent")] = 0,
        wait_s: Annotated[
            float,
            Query(
                ge=0, le=MAX_WAIT_S, description="long poll: hold the answer this long (the server caps it)"
            ),
        ] = 0,
    ) -> Response:
        """The task's current round and the training settings for it.

        With `wait_s`, the answer waits (at most that long) until a round newer than `newer_than` is
        open or the task is finished: clients wait for the others without polling.
        """
        return await api.current_round(task_id, newer_than, wait_s)

    @app.get(
        "/v1/tasks/{task_id}/modules/{version}",
        tags=["rounds"],
        response_class=Response,
        responses={200: {"content": {OCTET: {}}}, 304: {"description": "not modified"}},
    )
    async def module(
        task_id: str, version: Annotated[int, Path(ge=0, le=SQLITE_INT_MAX)], request: Request, client: Client
    ) -> Response:
        """A committed module version as safetensors; immutable, ETag is its quoted sha256.

        Async: the versions clients ask for are in memory; only a miss reads one blob.
        """
        return api.module(task_id, version, request)

    @app.post(
        "/v1/tasks/{task_id}/rounds/{round_id}/updates",
        status_code=201,
        response_model=UpdateAccepted,
        tags=["rounds"],
        openapi_extra=UPLOAD_BODY,
    )
    async def upload(
        task_id: str,
        round_id: Annotated[int, Path(ge=1, le=SQLITE_INT_MAX)],
        request: Request,
        client: Client,
        idempotency_key: Annotated[
            str, Header(alias="Idempotency-Key", min_length=IDEMPOTENCY_KEY[0], max_length=IDEMPOTENCY_KEY[1])
        ],
        examples: Annotated[
            int,
            Header(alias="Fedyolo-Examples", ge=1, le=SQLITE_INT_MAX, description="examples trained on"),
        ],
        metrics: Annotated[str, Header(alias="Fedyolo-Metrics", max_length=MAX_METRICS_HEADER)] = "{}",
    ) -> Response:
        """Upload this client's module weights for an open round; retry with the same Idempotency-Key."""
        return await api.upload(request, client, task_id, round_id, idempotency_key, examples, metrics)

    @app.get("/v1/tasks/{task_id}/history", response_model=History, tags=["rounds"])
    def history(task_id: str, client: Client) -> dict[str, Any]:
        """Committed rounds, oldest first, with the example-weighted mean of the clients' metrics."""
        return {"task_id": task_id, "rounds": round_history(rounds, task_id)}

    return app


CONFIG_ENV = "FEDYOLO_FEDSERVER_CONFIG"


def app_from_environment() -> FastAPI:
    """The app of one server worker process: uvicorn's factory, the config in `FEDYOLO_FEDSERVER_CONFIG`."""
    return create_app(ServerConfig.from_json(os.environ[CONFIG_ENV]), recover=False)
