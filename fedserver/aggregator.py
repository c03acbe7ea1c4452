"""Streaming aggregation: each accepted update is folded (`fold.RoundFold`, the one aggregation path) into
a running float64 sum while its round is still open, in acceptance order, one update in memory at a time. When the round closes only the
strategy step and the commit remain, so clients are not kept waiting for a sum over every update.

The running sum lives in memory only. After a restart it is rebuilt from the stored blobs in the same
order, so the committed module is bitwise the one an uninterrupted server would have made.

No task can be wedged by one update: an update that cannot be folded (its blob lost or damaged, its
weights unreadable, its change not finite) is set aside (`Rounds.quarantine`, kept for inspection) and
the rest are folded; a fold whose result is not finite never commits: the update with the largest
change is set aside and the round folded again without it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fedyolo.fedserver.fold import RoundFold, is_finite
from fedyolo.fedserver.reports import MetricsMean
from fedyolo.fedserver.rounds import Rounds
from fedyolo.fedserver.store import BlobError, decode_state, encode_state
from fedyolo.fedserver.strategies import StrategyState
from fedyolo.runtime.errors import ModuleWeightsError
from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.wire import ModuleWeights, decode_module, encode_module, module_views

log = logging.getLogger(__name__)

DEADLINE_CHECK_S = 0.25
# Decoded updates held for folding (the oldest go first past this); the others are read back from their blobs.
MAX_FRESH = 256
RETRY_S = 1.0


@dataclass
class Fold:
    """The running aggregate of one round: everything up to update `last_id` is in `updates`."""

    round: int
    updates: RoundFold
    metrics: MetricsMean
    last_id: int = 0
    ids: list[int] = field(default_factory=list)  # the folded updates, in `updates.folded` order


class Aggregator:
    """Folds updates as they arrive, commits closed rounds, closes rounds past their deadline."""

    def __init__(self, rounds: Rounds) -> None:
        self.rounds = rounds
        self._folds: dict[str, Fold] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Updates this process just accepted, already checked and decoded: folding them skips a blob read.
        self._fresh: dict[tuple[str, int], ModuleWeights] = {}
        self._fresh_lock = threading.Lock()
        self._leading = False  # this process holds the aggregator lock; only then is `_fresh` ever read
        rounds.listeners.append(self._wake.set)
        rounds.on_accepted = self._accepted

    def _accepted(self, task_id: str, update_id: int, weights: ModuleWeights) -> None:
        # A worker that does not aggregate would only fill `_fresh` (MAX_FRESH updates, ~80 MB at 320 KB).
        # The fold may already have read this update from its blob (its row commits before this call):
        # then holding it would only leak it. Measured before: such entries filled MAX_FRESH within half a
        # minute at 64 clients (+80 MB), after which no update was handed over in memory at all.
        fold = self._folds.get(task_id)
        if self._leading and (fold is None or update_id > fold.last_id):
            with self._fresh_lock:
                self._fresh[(task_id, update_id)] = weights
                while len(self._fresh) > MAX_FRESH:  # a stray one (folded meanwhile) goes in time
                    self._fresh.pop(next(iter(self._fresh)))
        self._wake.set()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fedserver-aggregator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def advance(self, task_id: str) -> int | None:
        """Fold the task's new updates; commit its round if it is closed. Returns a committed version."""
        with self.rounds.store.read() as db:
            row = db.execute(
                "SELECT round, status FROM rounds WHERE task_id = ? ORDER BY round DESC LIMIT 1", (task_id,)
            ).fetchone()
        if row is None or row["status"] == "committed":
            self._folds.pop(task_id, None)
            with self._fresh_lock:
                for key in [k for k in self._fresh if k[0] == task_id]:
                    self._fresh.pop(key, None)
            return None
        return self._fold_and_commit(task_id, row["round"], commit=row["status"] == "aggregating")

    def aggregate(self, task_id: str, round_id: int) -> int | None:
        """Aggregate a closed round and commit it; None when it is not closed (or already committed)."""
        with self.rounds.store.read() as db:
            row = db.execute(
                "SELECT status FROM rounds WHERE task_id = ? AND round = ?", (task_id, round_id)
            ).fetchone()
        if row is None or row["status"] != "aggregating":
            return None
        return self._fold_and_commit(task_id, round_id, commit=True)

    def _fold_and_commit(self, task_id: str, round_id: int, commit: bool) -> int | None:
        task = self.rounds.task(task_id)
        with self._lock:
            try:
                fold = self._folds.get(task_id)
                if fold is None or fold.round != round_id:
                    fold = self._folds[task_id] = self._new_fold(task_id, round_id)
                blobs = self.rounds.store.blobs
                for row in self.rounds.updates(task_id, round_id, after_id=fold.last_id):
                    fold.last_id = row["id"]
                    problem = self._fold_one(fold, task, row)
                    if problem is not None:  # nothing of it entered the fold: the rest go on without it
                        self.rounds.quarantine(task_id, round_id, row["id"], problem)
                if not commit or fold.updates.count == 0:  # none left: quarantine opened the round again
                    return None
                new_weights, new_state = fold.updates.result()
                if not is_finite(new_weights, new_state):
                    worst = max(range(fold.updates.count), key=lambda i: fold.updates.folded[i].norm)
                    reason = (
                        f"the round's aggregate was not finite with it (its change has L2 norm "
                        f"{fold.updates.folded[worst].norm:.3g}, the largest of the round)"
                    )
                    del self._folds[task_id]  # fold the rest again from their blobs
                    self.rounds.quarantine(task_id, round_id, fold.ids[worst], reason)
                    return None
                module, state = (
                    encode_module(new_weights, task),
                    encode_state(new_state),
                )  # state: moments, bounds
                spans = blobs.append([module, state])
                version = self.rounds.commit(
                    task_id, round_id, spans[0][0], spans[1][0], fold.metrics.mean(), spans, module
                )
            except BaseException:
                self._folds.pop(task_id, None)  # start again from the blobs: never add an update twice
                with self._fresh_lock:
                    self._fresh.clear()
                raise
            del self._folds[task_id]
        if version is not None:
            log.info(
                "task %r round %d: %d updates, %.0f examples -> module version %d",
                task_id, round_id, fold.updates.count, fold.updates.examples, version,
            )  # fmt: skip
        return version

    def _fold_one(self, fold: Fold, task: TaskSpec, row: Any) -> str | None:
        """Fold one stored update in; why it could not be, or None."""
        with self._fresh_lock:
            weights = self._fresh.pop((task.task_id, row["id"]), None)
        try:
            if weights is None:  # not handed over in memory (another process, or a restart): its bytes,
                # hash checked, are those `Rounds.submit` decoded and checked; a non-finite change is
                # still refused by the fold
                weights = module_views(self.rounds.store.blobs.get(row["blob"]), task)
            fold.updates.add(weights, row["examples"])
        except (BlobError, ModuleWeightsError, ValueError) as e:
            return str(e)
        fold.metrics.add(row["examples"], json.loads(row["metrics"]))
        fold.ids.append(row["id"])
        return None

    def _new_fold(self, task_id: str, round_id: int) -> Fold:
        task = self.rounds.task(task_id)
        with self.rounds.store.read() as db:
            base = db.execute(
                "SELECT m.blob, m.state_blob FROM rounds r JOIN module_versions m "
                "ON m.task_id = r.task_id AND m.version = r.base_version WHERE r.task_id = ? AND r.round = ?",
                (task_id, round_id),
            ).fetchone()
        blobs = self.rounds.store.blobs
        state = decode_state(blobs.get(base["state_blob"])) if base["state_blob"] else StrategyState()
        updates = RoundFold(decode_module(blobs.get(base["blob"]), task), self.rounds.config.plan, state)
        return Fold(round=round_id, updates=updates, metrics=MetricsMean())

    def _run(self) -> None:
        # Server worker processes share the state: only the one holding this lock aggregates. If it dies,
        # the kernel frees the lock and another worker takes over within a second.
        with open(self.rounds.config.state_dir / "aggregator.lock", "w") as lock:
            while not self._stop.is_set():
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._leading = True
                    break
                except BlockingIOError:
                    self._stop.wait(1.0)
            self._lead()

    def _lead(self) -> None:
        last_deadline_check = 0.0
        while not self._stop.is_set():
            self._wake.wait(timeout=0.05)
            self._wake.clear()
            try:
                for task_id in self.rounds.task_ids():
                    self.advance(task_id)
                if time.monotonic() - last_deadline_check > DEADLINE_CHECK_S:
                    last_deadline_check = time.monotonic()
                    self.rounds.close_due()
            except Exception:
                # A broken blob or a full disk must not kill the worker: the round stays closed, retried.
                log.exception("aggregation failed; retrying in %.0f s", RETRY_S)
                self._stop.wait(RETRY_S)
