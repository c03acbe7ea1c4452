"""An update as it arrives: checked against its round, then recorded in it, or answered again on a retry.

The checks read the database; `record` re-runs them inside the (group) transaction that writes the rows,
so two uploads racing for the same key or the last place in a round cannot both pass. `Rounds.submit`
does the rest: decoding the weights and storing the blob before the row that names it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedyolo.fedserver.errors import ApiError

MAX_METRICS = 16


@dataclass(frozen=True)
class Update:
    """One upload, as the HTTP layer read it; nothing in it is trusted yet."""

    client_id: int
    task_id: str
    round: int
    idempotency_key: str
    body: bytes
    examples: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Answer:
    """The answer to an upload; a replay carries the first answer's status and body unchanged."""

    status_code: int
    body: dict[str, Any]
    replayed: bool = False


def check_examples(update: Update, max_examples: int) -> None:
    """The example count is 1 to `max_examples`, or ApiError(bad_examples)."""
    if not 0 < update.examples <= max_examples:
        raise ApiError(
            "bad_examples",
            f"example count must be between 1 and {max_examples}, got {update.examples}",
        )


def check_metrics(metrics: object) -> dict[str, float]:
    """A small JSON object of finite numbers, or ApiError(bad_metrics)."""
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
        raise ApiError("bad_metrics", f"metrics must be a JSON object of at most {MAX_METRICS} numbers")
    checked = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not 0 < len(key) <= 64:
            raise ApiError("bad_metrics", "metric names must be strings of 1 to 64 characters")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ApiError("bad_metrics", f"metric {key!r} must be a finite number")
        checked[key] = float(value)
    return checked


def replay(db: Any, update: Update, sha: str) -> Answer | None:
    """The first answer to this client's idempotency key, or None when the key is new.

    The same key for a different update is ApiError(idempotency_conflict).
    """
    prior = db.execute(
        "SELECT id, task_id, round, blob, status_code, response FROM updates "
        "WHERE client_id = ? AND idempotency_key = ? UNION ALL "
        "SELECT id, task_id, round, blob, status_code, response FROM quarantine "
        "WHERE client_id = ? AND idempotency_key = ?",
        (update.client_id, update.idempotency_key) * 2,
    ).fetchone()
    if prior is None:
        return None
    if (prior["task_id"], prior["round"], prior["blob"]) != (update.task_id, update.round, sha):
        raise ApiError(
            "idempotency_conflict",
            "this idempotency key was already used for a different update; use a new key per update",
        )
    # The stored answer is the first one without its update_id, which is the row's own id (rows written
    # before 2026-11-30 hold it too, equal).
    return Answer(
        prior["status_code"], {"update_id": prior["id"]} | json.loads(prior["response"]), replayed=True
    )


def check_round(db: Any, update: Update, count: bool = False) -> int:
    """The update's round is the task's open one and has nothing from this client yet, or ApiError;
    returns how many updates the round holds when `count` (else 0). One statement: it runs twice per upload."""
    held = (
        "(SELECT COUNT(*) FROM updates u WHERE u.task_id = r.task_id AND u.round = r.round)" if count else "0"
    )
    row = db.execute(
        f"SELECT r.round, r.status, {held} AS held, "
        "EXISTS (SELECT 1 FROM updates u WHERE u.task_id = r.task_id AND u.round = r.round "
        "AND u.client_id = ?) AS seen, "
        "(SELECT reason FROM quarantine q WHERE q.task_id = r.task_id AND q.round = r.round "
        "AND q.client_id = ?) AS set_aside "
        "FROM rounds r WHERE r.task_id = ? ORDER BY r.round DESC LIMIT 1",
        (update.client_id, update.client_id, update.task_id),
    ).fetchone()
    if row["status"] == "committed":
        raise ApiError("task_finished", f"every round of task {update.task_id!r} is done")
    if row["round"] != update.round or row["status"] != "open":
        raise ApiError(
            "stale_round",
            f"round {update.round} of task {update.task_id!r} is not open (round {row['round']} is "
            f"{row['status']}); get the current round and train again",
        )
    if row["seen"]:
        raise ApiError("already_submitted", f"this client already sent an update for round {update.round}")
    if row["set_aside"] is not None:
        raise ApiError(
            "update_quarantined",
            f"this client's update for round {update.round} was set aside ({row['set_aside']}); "
            "take part again from the next round",
        )
    return int(row["held"])


def record(
    db: Any,
    update: Update,
    sha: str,
    metrics: dict[str, float],
    min_clients: int,
    clock: Callable[[], float],
) -> Answer:
    """The upload's rows, inside a (group) transaction: re-checked there, so concurrent ones are safe.

    The update that brings its round to `min_clients` moves the round to aggregating, in the same
    transaction.
    """
    prior = replay(db, update, sha)  # a retry of the same key may have raced this one
    if prior is not None:
        return prior
    count = 1 + check_round(db, update, count=True)
    closes = count >= min_clients
    now = clock()
    answer = {
        "task": update.task_id,
        "round": update.round,
        "examples": update.examples,
        "sha256": sha,
        "round_updates": count,
        "round_closed": closes,
    }
    cursor = db.execute(
        "INSERT INTO updates (task_id, round, client_id, idempotency_key, blob, body_bytes, "
        "examples, metrics, status_code, response, received_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 201, ?, ?)",
        (
            update.task_id, update.round, update.client_id, update.idempotency_key, sha,
            len(update.body), update.examples, json.dumps(metrics), json.dumps(answer), now,
        ),
    )  # fmt: skip
    body = {"update_id": cursor.lastrowid} | answer
    if closes:
        db.execute(
            "UPDATE rounds SET status = 'aggregating', closed_at = ? WHERE task_id = ? AND round = ?",
            (now, update.task_id, update.round),
        )
    return Answer(201, body)
