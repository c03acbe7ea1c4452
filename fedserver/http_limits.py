"""Limits uvicorn's httptools protocol does not set: request-head size, a deadline to read each request,
and a JSON answer (with Retry-After) when too many connections are open.

Measured on uvicorn 0.54 + httptools 0.9 before this: a 64 MB header was buffered whole (no cap:
`h11_max_incomplete_event_size` is h11's alone), and a connection that stalls before or inside its
request was held for ever (300 stalled bodies held 324 descriptors): uvicorn's keep-alive timer runs
only between requests. So the server runs this subclass (`http=protocol(limits)` in uvicorn's options):

- a request head (request line + headers) over `max_header_bytes` gets 431 and the connection closes,
  counted as it arrives, so an endless header costs at most one read's worth of memory;
- every request must arrive whole (head and body) within `read_timeout_s` of its first byte (a new
  connection: of being accepted), else 408 and close: slowloris heads and trickled bodies alike;
- over `max_connections` open connections, a new request gets 503 `server_busy` with Retry-After.

It also sends each response's head with its body (`HeadWithBody`): uvicorn writes the status line and
headers, then the body, as two sends, so every answer cost two TCP segments and woke the client twice.
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may cost the server."""

    max_header_bytes: int = 32 * 1024
    read_timeout_s: float = 60.0
    max_connections: int = 1000


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `HttpLimits` enforced."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        limits: HttpLimits = HttpLimits(),
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._head_bytes = 0  # of the request head being read, as parsed
        self._head_read = 0  # bytes read while the head was incomplete (httptools buffers them)
        self._head_done = False
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if not self._head_done and not self._refused and self._deadline is not None:
            # the head is still incomplete, so httptools holds this read: cap what it may hold
            self._head_read += len(data)
            if self._head_read > self.limits.max_header_bytes:
                self._refuse(431, "headers_too_large", self._too_large(), cycle=None)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes, self._head_read, self._head_done = 0, 0, False
        if self._deadline is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_bytes += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self._head_done = True
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431, "headers_too_large", self._too_large(), cycle=None)
            return
        if len(self.connections) > self.limits.max_connections:
            busy = f"the server has {self.limits.max_connections} connections open; try again shortly"
            self._refuse(503, "server_busy", busy, cycle=None, retry_after=1)
            return
        super().on_headers_complete()
        if self.cycle is not None:
            HeadWithBody.install(self.cycle)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        super().on_message_complete()

    # -- deadlines and refusals ------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.limits.read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _read_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        detail = f"the request did not arrive whole within {self.limits.read_timeout_s:g} s"
        self._refuse(408, "request_timeout", detail, cycle=self.cycle if self._head_done else None)

    def _too_large(self) -> str:
        return f"the request line and headers are over {self.limits.max_header_bytes} bytes"

    def _refuse(
        self, status: int, code: str, detail: str, cycle: Any, retry_after: int | None = None
    ) -> None:
        """Answer `status` with a JSON error (unless `cycle`, the request's, has answered) and close."""
        self._refused = True
        self._disarm()
        if cycle is None or not cycle.response_started:
            body = json.dumps({"code": code, "detail": detail}).encode()
            head = [STATUS_LINE[status], b"content-type: application/json\r\n", b"connection: close\r\n"]
            head.append(b"content-length: %d\r\n" % len(body))
            if retry_after is not None:
                head.append(b"retry-after: %d\r\n" % retry_after)
            self.transport.write(b"".join(head) + b"\r\n" + body)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app, if it reads the body, sees the client gone
            cycle.message_event.set()
        self.transport.close()


class HeadWithBody:
    """A response cycle's view of the transport: the head (status line and headers) is held back and goes
    out in one write with the first body bytes, or when the response ends without any (HEAD, 304).

    Measured on the load benchmark (2-core EPYC): every answer was two `write` calls, 254 bytes of head
    then the body, each a TCP segment that woke the client. A 100 Continue goes out at once (the client
    waits for it before it sends the body).
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._head_seen = False

    @classmethod
    def install(cls, cycle: Any) -> None:
        """Put the holder between `cycle` (uvicorn's RequestResponseCycle) and its transport."""
        holder = cls(cycle.transport)
        cycle.transport = holder
        finished = cycle.on_response

        def on_response() -> None:
            holder.flush()
            finished()

        cycle.on_response = on_response

    def write(self, data: bytes) -> None:
        if not self._head_seen and not data.startswith(b"HTTP/1.1 1"):  # the head, not an interim 1xx
            self._head_seen = True
            self._head = data
            return
        if self._head is None:
            self._transport.write(data)
            return
        head, self._head = self._head, None
        self._transport.writelines([head, data])

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, …: the transport's own
        return getattr(self._transport, name)


def protocol(limits: HttpLimits) -> Any:
    """uvicorn's `http=` option: the limited protocol bound to `limits` (picklable, for worker processes)."""
    return functools.partial(LimitedHttpToolsProtocol, limits=limits)
