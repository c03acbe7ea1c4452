"""Server worker processes tell each other at once that the shared state changed.

Without this a worker sees another's change only when it next polls SQLite's `PRAGMA data_version`
(every 10 ms): the aggregating worker learned of the round's last upload, and the other worker's long
polls of the new round, up to 10 ms late, twice per round, during which no client can upload (at 32 clients
a round took ~170 ms). Each worker binds a Linux abstract-namespace datagram socket (no file, no path
length limit, gone when the process dies) and leaves a marker file of the same name in the state's
`workers/` folder; a change sends one byte to every other worker. The polling stays as the fallback: a
lost datagram only costs the old delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

PEERS_TTL_S = 1.0  # how long a listing of the other workers is reused


class PeerWake:
    """One worker's socket and its view of the others; `notify()` is safe from any thread."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / "workers"
        self._prefix = (
            b"\0fedyolo-" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16].encode()
        )
        self._name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # several apps may share a process (tests)
        self._sock: socket.socket | None = None
        self._out: socket.socket | None = None  # opened by `listen`: an app never started holds no socket
        self._peers: list[str] = []
        self._listed_at = -PEERS_TTL_S

    def _address(self, name: str) -> bytes:
        return self._prefix + b"-" + name.encode()

    def listen(self, loop: asyncio.AbstractEventLoop, on_wake: Callable[[], None]) -> None:
        """Bind this worker's socket and call `on_wake` on the loop whenever another worker notifies."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self._address(self._name))
        sock.setblocking(False)
        self._sock = sock
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._out.setblocking(False)
        self.folder.mkdir(exist_ok=True)
        (self.folder / self._name).touch()

        def drain() -> None:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while sock.recv(64):
                    pass
            on_wake()

        loop.add_reader(sock.fileno(), drain)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            (self.folder / self._name).unlink(missing_ok=True)
        if self._out is not None:
            self._out.close()

    def notify(self) -> None:
        """Wake every other worker (one datagram each); a worker that is gone loses its marker."""
        out = self._out
        if out is None:
            return
        now = time.monotonic()
        if now - self._listed_at > PEERS_TTL_S:
            self._listed_at = now
            try:
                names = os.listdir(self.folder)
            except FileNotFoundError:
                names = []
            self._peers = [n for n in names if n != self._name]
        for name in self._peers:
            try:
                out.sendto(b"!", self._address(name))
            except (ConnectionRefusedError, FileNotFoundError):
                (self.folder / name).unlink(missing_ok=True)  # that worker is gone
                self._listed_at = -PEERS_TTL_S
            except (BlockingIOError, OSError):
                pass  # its queue is full: it has wake-ups pending anyway
