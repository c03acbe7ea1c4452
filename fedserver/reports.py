"""What the server tells people: per-round history and a per-task status, read from the database."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedyolo.fedserver.rounds import Rounds


class MetricsMean:
    """Example-weighted mean of each metric over the updates that report it, fed one update at a time."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._weights: dict[str, float] = {}

    def add(self, examples: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + examples * value
            self._weights[key] = self._weights.get(key, 0.0) + examples

    def mean(self) -> dict[str, float]:
        return {key: self._sums[key] / self._weights[key] for key in sorted(self._sums)}


def round_history(rounds: Rounds, task_id: str) -> list[dict[str, Any]]:
    """Committed rounds of a task, oldest first."""
    rounds.task(task_id)
    with rounds.store.read() as db:
        rows = db.execute(
            "SELECT r.round, r.opened_at, r.closed_at, r.committed_at, r.metrics, COUNT(u.id) AS updates, "
            "COALESCE(SUM(u.examples), 0) AS examples, COALESCE(SUM(u.body_bytes), 0) AS bytes "
            "FROM rounds r LEFT JOIN updates u ON u.task_id = r.task_id AND u.round = r.round "
            "WHERE r.task_id = ? AND r.status = 'committed' GROUP BY r.round ORDER BY r.round",
            (task_id,),
        ).fetchall()
    return [
        {
            "round": row["round"],
            "module_version": row["round"],
            "updates": row["updates"],
            "examples": row["examples"],
            "bytes_received": row["bytes"],
            "metrics": json.loads(row["metrics"] or "{}"),
            "opened_at": row["opened_at"],
            "closed_at": row["closed_at"],
            "committed_at": row["committed_at"],
        }
        for row in rows
    ]


def server_status(rounds: Rounds) -> dict[str, Any]:
    """Per task: the current round, rounds committed, clients, last accuracy and loss, bytes received."""
    tasks = []
    with rounds.store.read() as db:
        registered = db.execute("SELECT COUNT(*) FROM clients").fetchone()[0]
        for task_id in rounds.task_ids():
            clients, updates, received = db.execute(
                "SELECT COUNT(DISTINCT client_id), COUNT(*), COALESCE(SUM(body_bytes), 0) FROM updates "
                "WHERE task_id = ?",
                (task_id,),
            ).fetchone()
            last = db.execute(
                "SELECT metrics FROM rounds WHERE task_id = ? AND status = 'committed' "
                "ORDER BY round DESC LIMIT 1",
                (task_id,),
            ).fetchone()
            metrics = json.loads(last[0] or "{}") if last else {}
            (quarantined,) = db.execute(
                "SELECT COUNT(*) FROM quarantine WHERE task_id = ?", (task_id,)
            ).fetchone()
            info = rounds.current(task_id)
            tasks.append(
                {
                    **info.to_json(),
                    "rounds_committed": info.round if info.status == "finished" else info.round - 1,
                    "clients": clients,
                    "updates_total": updates,
                    "quarantined": quarantined,
                    "bytes_received": received,
                    "module_bytes": rounds.task(task_id).module_bytes,
                    "accuracy": metrics.get("accuracy"),
                    "loss": metrics.get("loss"),
                }
            )
    return {"clients_registered": registered, "tasks": tasks}
