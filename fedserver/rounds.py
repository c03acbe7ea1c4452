"""The round state machine, per task: open → enough updates or deadline → aggregating → committed → next.

Every transition is one SQLite transaction, so a restart finds each round in exactly one state:

- open: accepts one update per client (checked and recorded by `uploads`); the update that reaches
  `min_clients` (or the deadline, with at least one update) moves it to aggregating, in the same
  transaction that records the update;
- aggregating: the set of updates is frozen; aggregation reads them one blob at a time and commits
  the new module version, closes the round and opens the next one in ONE transaction. A round found
  aggregating at start-up is aggregated again from its blobs: same updates, same order, same result.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from fedyolo.fedserver.blob_log import Span
from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.errors import ApiError
from fedyolo.fedserver.store import UPDATE_COLUMNS, Store, sha256_hex
from fedyolo.fedserver.uploads import (
    Answer,
    Update,
    check_examples,
    check_metrics,
    check_round,
    record,
    replay,
)
from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.errors import ModuleWeightsError
from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.plan import RoundPlan
from fedyolo.runtime.wire import ModuleWeights, decode_module

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundInfo:
    """What a client needs to take part in the current round of a task: where the round stands, and the
    `RoundPlan` it trains by (sent flat beside the status, in the plan's own JSON form)."""

    task_id: str
    status: str  # open | aggregating | finished
    module_version: int
    plan: RoundPlan
    deadline_at: float
    updates: int
    min_clients: int
    rounds_total: int

    @property
    def round(self) -> int:
        return self.plan.round

    def to_json(self) -> dict[str, Any]:
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "plan"}
        return body | self.plan.to_json()


def check_magnitude(weights: ModuleWeights, max_abs: float) -> None:
    """Refuse weights beyond `max_abs` (0: no check): they could only be an attack or a broken client."""
    if max_abs <= 0:
        return
    for name, w in weights.items():
        peak = max(-float(w.min(initial=0.0)), float(w.max(initial=0.0)))  # |w|'s max, with no temporary
        if peak > max_abs:
            raise ApiError(
                "invalid_update",
                f"tensor {name!r} holds a value of magnitude {peak:.3g}; this server accepts at most "
                f"{max_abs:g} (the operator sets it with --max-abs-weight)",
            )


STORAGE_RETRY_AFTER_S = 60


@contextmanager
def storage_errors() -> Iterator[None]:
    """A disk that refuses an update (full, read-only, failing) is ApiError(storage_unavailable), 503 with
    Retry-After, naming the cause: nothing of the update was kept (the log's end and the transaction are
    undone), and both clients retry a 503 later."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as e:
        cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        log.error("an update could not be stored: %s", cause)
        raise ApiError(
            "storage_unavailable",
            f"the server could not store the update ({cause}); nothing of it was kept, send it again "
            "later (the operator must free space on, or repair, the server's disk)",
            headers={"retry-after": str(STORAGE_RETRY_AFTER_S)},
        ) from e


def spec_sha256(task: TaskSpec) -> str:
    """Hash of what an update must look like: a task whose module changed cannot reuse old state."""
    spec = [[t.name, list(t.shape), t.dtype] for t in task.trainable] + [task.wire_dtype]
    return sha256_hex(json.dumps(spec).encode())


class Rounds:
    """Rounds of every task of the bundle over one store; thread-safe.

    `recovery.recover(rounds)` brings the state up to date with the bundle and drops garbage. The
    aggregation of closed rounds (`aggregator.Aggregator`) hears of every change through `listeners`, the
    long polls of rounds that open or finish through `round_listeners`.
    """

    def __init__(
        self, config: ServerConfig, bundle: Bundle, store: Store, clock: Callable[[], float] = time.time
    ):
        self.config = config
        self.bundle = bundle
        self.store = store
        self.clock = clock
        self.listeners: list[Callable[[], None]] = []  # every change (the aggregator)
        # A round opened (or reopened) or a task finished: what long polls wait for. Accepted updates do not
        # call these: waking every waiting poll for each upload cost 32 x 32 wake-ups a round at 32 clients.
        self.round_listeners: list[Callable[[], None]] = []
        self.peer_listeners: list[Callable[[], None]] = []  # changes made here: other workers hear of them
        self.on_accepted: Callable[[str, int, ModuleWeights], None] = lambda task_id, update_id, weights: None
        self._module_cache: dict[tuple[str, int], tuple[str, bytes]] = {}
        self._cache_lock = threading.Lock()
        # Bumped by every state change made in this process: long polls wake on it without touching the disk.
        self.generation = 0
        self._seen_data_version = threading.local()  # PRAGMA data_version is per connection

    # -- life cycle ------------------------------------------------------------------------------

    def refresh(self, every_s: float = 0.005) -> int:
        """`generation`, bumped also when another process changed the database (cheap: no table read);
        such a change also calls `listeners`, so the aggregator folds another worker's uploads at once.

        Looks at the database at most every `every_s` per thread, however many long polls ask.
        """
        now = time.monotonic()
        if now - getattr(self._seen_data_version, "at", 0.0) < every_s:
            return self.generation
        self._seen_data_version.at = now
        with self.store.read() as db:
            version = db.execute("PRAGMA data_version").fetchone()[0]
        changed = version != getattr(self._seen_data_version, "value", version)
        self._seen_data_version.value = version
        if changed:  # maybe another process's upload or commit: the aggregator may have work
            self.generation += 1
            for listener in self.listeners:
                listener()
        return self.generation

    def _changed(self, round_moved: bool = True, tell_peers: bool = True) -> None:
        self.generation += 1
        peers = self.peer_listeners if tell_peers else []
        for listener in peers + self.listeners + (self.round_listeners if round_moved else []):
            listener()

    def round_marks(self) -> list[tuple[str, int, str]]:
        """(task, latest round, its status) for every task: what a long poll's answer depends on."""
        with self.store.read() as db:
            rows = db.execute(
                "SELECT task_id, MAX(round), status FROM rounds GROUP BY task_id ORDER BY task_id"
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]  # SQLite: a bare column beside MAX() is from that row

    def open_round(self, db: Any, task_id: str, round_id: int, base_version: int, now: float) -> None:
        db.execute(
            "INSERT INTO rounds (task_id, round, status, base_version, opened_at, deadline_at) "
            "VALUES (?, ?, 'open', ?, ?, ?)",
            (task_id, round_id, base_version, now, now + self.config.deadline_s),
        )

    # -- reads -----------------------------------------------------------------------------------

    def task(self, task_id: str) -> TaskSpec:
        task = self.bundle.manifest.tasks.get(task_id)
        if task is None:
            raise ApiError("unknown_task", f"task {task_id!r} is not served here (tasks: {self.task_ids()})")
        return task

    def task_ids(self) -> list[str]:
        return sorted(self.bundle.manifest.tasks)

    def current(self, task_id: str) -> RoundInfo:
        """The task's latest round: open, aggregating, or finished when every round is committed."""
        self.task(task_id)
        with self.store.read() as db:
            row = db.execute(
                "SELECT * FROM rounds WHERE task_id = ? ORDER BY round DESC LIMIT 1", (task_id,)
            ).fetchone()
            count = db.execute(
                "SELECT COUNT(*) FROM updates WHERE task_id = ? AND round = ?", (task_id, row["round"])
            ).fetchone()[0]
        finished = row["status"] == "committed"
        c = self.config
        return RoundInfo(
            task_id=task_id,
            status="finished" if finished else row["status"],
            module_version=row["round"] if finished else row["base_version"],
            plan=c.plan.for_round(row["round"]),
            deadline_at=row["deadline_at"],
            updates=count,
            min_clients=c.min_clients,
            rounds_total=c.rounds,
        )

    def module(self, task_id: str, version: int) -> tuple[str, bytes]:
        """(sha256, safetensors bytes) of a committed module version."""
        self.task(task_id)
        key = (task_id, version)
        with self._cache_lock:
            hit = self._module_cache.get(key)
        if hit is not None:
            return hit
        with self.store.read() as db:
            row = db.execute(
                "SELECT blob FROM module_versions WHERE task_id = ? AND version = ?", key
            ).fetchone()
        if row is None:
            raise ApiError("unknown_version", f"task {task_id!r} has no module version {version} (yet)")
        entry = (row[0], self.store.blobs.get(row[0]))
        self._cache_module(key, entry)
        return entry

    def _cache_module(self, key: tuple[str, int], entry: tuple[str, bytes]) -> None:
        with self._cache_lock:
            if len(self._module_cache) >= 4 * max(1, len(self.bundle.manifest.tasks)):
                self._module_cache.pop(next(iter(self._module_cache)))
            self._module_cache[key] = entry

    # -- uploads ---------------------------------------------------------------------------------

    def submit(self, update: Update) -> Answer:
        """Check an update completely, store it durably, and count it in its round.

        Nothing changes unless every check passes. A repeated idempotency key gets the first answer.
        """
        task = self.task(update.task_id)
        sha = sha256_hex(update.body)
        with self.store.read() as db:
            prior = replay(db, update, sha)
            if prior is not None:
                return prior
            check_round(db, update)
        check_examples(update, self.config.max_examples)
        metrics = check_metrics(update.metrics)
        try:
            weights = decode_module(update.body, task)
        except ModuleWeightsError as e:
            raise ApiError("invalid_update", str(e)) from e
        check_magnitude(weights, self.config.max_abs_weight)
        with storage_errors():  # the body is durable before the row that names it, both in one group

            def record_with_span(db: Any, spans: list[Span]) -> Answer:
                self.store.name_spans(db, [(sha, spans[0])])
                return record(db, update, sha, metrics, self.config.min_clients, self.clock)

            answer = self.store.grouped(record_with_span, [update.body])
        if not answer.replayed:
            self.on_accepted(update.task_id, int(answer.body["update_id"]), weights)
            # The aggregator folds it in while the round is still open; the one that closes the round wakes
            # the other workers at once (the aggregating one may be among them), the rest wait for their polls.
            self._changed(round_moved=False, tell_peers=bool(answer.body["round_closed"]))
        return answer

    # -- closing and aggregating -----------------------------------------------------------------

    def close_due(self) -> list[tuple[str, int]]:
        """Close open rounds past their deadline that have an update; extend the empty ones."""
        now = self.clock()
        closed = []
        with self.store.transaction() as db:
            due = db.execute(
                "SELECT r.task_id, r.round, (SELECT COUNT(*) FROM updates u WHERE u.task_id = r.task_id "
                "AND u.round = r.round) AS n FROM rounds r WHERE r.status = 'open' AND r.deadline_at <= ?",
                (now,),
            ).fetchall()
            for task_id, round_id, n in due:
                if n > 0:
                    db.execute(
                        "UPDATE rounds SET status = 'aggregating', closed_at = ? "
                        "WHERE task_id = ? AND round = ?",
                        (now, task_id, round_id),
                    )
                    closed.append((task_id, round_id))
                else:
                    db.execute(
                        "UPDATE rounds SET deadline_at = ? WHERE task_id = ? AND round = ?",
                        (now + self.config.deadline_s, task_id, round_id),
                    )
        for key in closed:
            log.info("round %d of task %r reached its deadline", key[1], key[0])
        if closed:
            self._changed()
        return closed

    def commit(
        self,
        task_id: str,
        round_id: int,
        module_blob: str,
        state_blob: str | None,
        metrics: dict[str, float],
        spans: list[tuple[str, Span]] | None = None,
        module: bytes | None = None,
    ) -> int | None:
        """In ONE transaction: the new module version (and the `spans` of its blobs, appended to the blob
        log), the round committed, the next round open. `module`, the version's bytes, is served from memory.

        Returns the new version, or None when the round was not waiting for this (already committed).
        """
        now = self.clock()
        with self.store.transaction() as db:
            row = db.execute(
                "SELECT status, base_version FROM rounds WHERE task_id = ? AND round = ?", (task_id, round_id)
            ).fetchone()
            if row is None or row["status"] != "aggregating":
                return None
            version = int(row["base_version"]) + 1
            self.store.name_spans(db, spans or [])
            db.execute(
                "INSERT INTO module_versions VALUES (?, ?, ?, ?, ?, ?)",
                (task_id, version, module_blob, state_blob, round_id, now),
            )
            db.execute(
                "UPDATE rounds SET status = 'committed', committed_at = ?, metrics = ? "
                "WHERE task_id = ? AND round = ?",
                (now, json.dumps(metrics), task_id, round_id),
            )
            if round_id < self.config.rounds:
                self.open_round(db, task_id, round_id + 1, version, now)
        if module is not None:  # every client asks for it next: no read back from disk
            self._cache_module((task_id, version), (module_blob, module))
        self._changed()
        return version

    def quarantine(self, task_id: str, round_id: int, update_id: int, reason: str) -> None:
        """Set an accepted update aside (kept, with its blob, for inspection) so its round can fold the rest.

        A round left with no update goes back to open, with a new deadline, instead of waiting forever.
        """
        now = self.clock()
        with self.store.transaction() as db:
            moved = db.execute(
                f"INSERT INTO quarantine ({UPDATE_COLUMNS}, reason, quarantined_at) "
                f"SELECT {UPDATE_COLUMNS}, ?, ? FROM updates WHERE id = ? AND task_id = ? AND round = ?",
                (reason, now, update_id, task_id, round_id),
            ).rowcount
            db.execute("DELETE FROM updates WHERE id = ?", (update_id,))
            left = db.execute(
                "SELECT COUNT(*) FROM updates WHERE task_id = ? AND round = ?", (task_id, round_id)
            ).fetchone()[0]
            if moved and left == 0:
                db.execute(
                    "UPDATE rounds SET status = 'open', closed_at = NULL, deadline_at = ? "
                    "WHERE task_id = ? AND round = ? AND status = 'aggregating'",
                    (now + self.config.deadline_s, task_id, round_id),
                )
        if moved:
            log.warning(
                "task %r round %d: update %d set aside (%s)%s",
                task_id, round_id, update_id, reason, "; the round is open again" if left == 0 else "",
            )  # fmt: skip
            self._changed()

    def updates(self, task_id: str, round_id: int, after_id: int = 0, page: int = 256) -> Iterator[Any]:
        """A round's updates with id > `after_id`, in acceptance order, a page at a time (memory O(page))."""
        last = after_id
        while True:
            with self.store.read() as db:
                rows = db.execute(
                    "SELECT id, blob, examples, metrics FROM updates "
                    "WHERE task_id = ? AND round = ? AND id > ? ORDER BY id LIMIT ?",
                    (task_id, round_id, last, page),
                ).fetchall()
            if not rows:
                return
            yield from rows
            last = rows[-1]["id"]
