"""Long polls: a client asks for the round and the answer waits until a newer one opens.

`RoundSignal` wakes the waiting polls of one server process when a round moves; `PollReads` lets the
polls share one read of the round, and one encoding of the answer, per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.responses import JSONResponse

from fedyolo.fedserver.peer_wake import PeerWake
from fedyolo.fedserver.rounds import RoundInfo, Rounds
from fedyolo.fedserver.schemas import RoundBody

log = logging.getLogger(__name__)


class RoundSignal:
    """Wakes the long polls of this process when a round opens or a task finishes: at once for a change
    made here or announced by another worker (`PeerWake`), else within `poll_s` (seen through SQLite's
    `PRAGMA data_version`, then confirmed by reading the rounds: other processes' uploads wake nobody)."""

    poll_s = 0.01  # how often the database is asked whether another worker changed it

    def __init__(self, rounds: Rounds, peers: PeerWake | None = None) -> None:
        self.rounds = rounds
        self.peers = peers
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seen = 0
        self._marks: list[tuple[str, int, str]] = []

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def fire_threadsafe(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.fire)

    async def watch(self) -> None:
        """Run for the app's life: hook the rounds' listeners, hear other workers' changes (`peers`, at
        once) and poll for them (every `poll_s`, in case a wake-up was lost)."""
        self._loop = asyncio.get_running_loop()
        self.rounds.round_listeners.append(self.fire_threadsafe)
        self._seen, self._marks = self.rounds.refresh(), self.rounds.round_marks()
        if self.peers is not None:
            try:
                self.peers.listen(self._loop, lambda: self._check(every_s=0.0))
                self.rounds.peer_listeners.append(self.peers.notify)
            except OSError as e:  # no abstract sockets here: the polling alone still works
                log.warning(
                    "workers cannot wake each other (%s); they poll every %.0f ms", e, 1000 * self.poll_s
                )
        try:
            while True:
                await asyncio.sleep(self.poll_s)
                self._check()
        finally:
            if self.peers is not None:
                self.peers.close(self._loop)

    def _check(self, every_s: float = 0.005) -> None:
        """Wake the polls if another process moved a round (its uploads alone wake nobody)."""
        if self.rounds.refresh(every_s) == self._seen:
            return
        self._seen = self.rounds.generation
        now = self.rounds.round_marks()
        if now != self._marks:
            self._marks = now
            self.fire()

    async def wait(self, timeout_s: float) -> None:
        """Until the next change, or `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout_s)


class PollReads:
    """The round as the woken long polls re-read it: one database read per change, not one per poll.

    A round that opens wakes every waiting long poll (up to one per client) at once, and each would
    re-read the round on the event loop. A read is reused while `rounds.generation` (bumped by every
    change this process makes or sees another process make) stays the same.
    """

    def __init__(self, rounds: Rounds) -> None:
        self.rounds = rounds
        self._latest: dict[str, tuple[int, RoundInfo, bytes]] = {}

    def answer(self, task_id: str) -> tuple[RoundInfo, bytes]:
        """The round and its JSON answer (as `RoundBody`), encoded once per change for every poll."""
        generation = self.rounds.generation  # read first: a change during the read only costs a re-read
        hit = self._latest.get(task_id)
        if hit is not None and hit[0] == generation:
            return hit[1], hit[2]
        info = self.rounds.current(task_id)
        body = JSONResponse(RoundBody.model_validate(info.to_json()).model_dump(mode="json")).body
        self._latest[task_id] = (generation, info, bytes(body))
        return info, bytes(body)
