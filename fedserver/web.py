"""The phone's page (android_demo/web, built into fedserver/web/): served at /app/ by `fedyolo serve`.

Every answer carries COOP/COEP, so the page is cross-origin isolated and onnxruntime-web may use
wasm threads (SharedArrayBuffer) where the phone's browser allows them.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedyolo.fedserver.errors import ApiError

WEB_DIR = Path(__file__).parent / "web"
ISOLATION = [
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-embedder-policy", b"require-corp"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class CrossOriginIsolation:
    """Plain ASGI (no per-request task, unlike BaseHTTPMiddleware): adds the headers as a response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_isolated(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *ISOLATION]
            await send(message)

        await self.app(scope, receive, send_isolated)


DEMO_DIR = "web_demo"  # in the state dir, written by `fedyolo serve --web-demo N` (fedyolo/tasks/web_demo.py)


def mount_web(app: FastAPI, client: Callable[..., Any], state_dir: Path, web_dir: Path = WEB_DIR) -> bool:
    """Serve the page at /app/ (and redirect / there), when the package holds its built files, and the
    demo shards; `client` is the app's dependency that authenticates a client and gives its id.

    Returns whether the page is served (then every answer carries the `ISOLATION` headers)."""

    @app.get("/v1/web/demo/{task_id}", tags=["web"])
    def demo_shard(task_id: str, client_id: int = Depends(client)) -> dict[str, Any]:
        """This client's demo shard of a built-in task: train and held-out items as [label, text]."""
        path = state_dir / DEMO_DIR / f"{task_id}.json"
        if "/" in task_id or not path.is_file():
            raise ApiError("not_found", f"no demo shards for {task_id!r}; start the server with --web-demo N")
        shards = json.loads(path.read_text())["shards"]
        return dict(shards[int(client_id) % len(shards)])

    if not (web_dir / "index.html").is_file():
        return False  # a source tree where `make web` has not run: the API alone
    app.add_middleware(CrossOriginIsolation)
    app.mount("/app", StaticFiles(directory=web_dir, html=True), name="app")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/app/")

    return True


def lan_address() -> str:
    """This machine's address on its network, as a phone there would reach it (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def page_url(scheme: str, host: str, port: int, enroll_key: str) -> str:
    """The page's address, with the enrollment key in the fragment (never sent to the server)."""
    shown = lan_address() if host in ("0.0.0.0", "::", "") else host
    return f"{scheme}://{shown}:{port}/app/#enroll={enroll_key}"


def page_qr(url: str) -> str:
    """`url` as a QR code drawn with block characters, for a phone's camera to read off the terminal."""
    import io

    import segno

    out = io.StringIO()
    segno.make(url, error="l").terminal(out, compact=True, border=2)
    return out.getvalue()
