"""What a client keeps on disk, per client: its credentials, and per task the update waiting to be sent
and the last round sent. Every write is atomic, so a client killed at any moment restarts from a whole
file: it re-sends the same update under the same idempotency key and the server counts it once."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedyolo.runtime.durable import write_atomic
from fedyolo.runtime.manifest import sha256_file


@dataclass(frozen=True)
class PendingUpdate:
    """A trained update not yet acknowledged; its key stays the same across retries and restarts."""

    task_id: str
    round: int
    idempotency_key: str
    examples: int
    metrics: dict[str, float]
    sha256: str


def _write_atomic(path: Path, data: bytes) -> None:
    """A private file (0600) in a private folder (0700), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data)


class ClientState:
    """Files of one client: `credentials.json`, and per task `pending.*` and `submitted.json`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def credentials(self) -> dict[str, Any] | None:
        path = self.root / "credentials.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save_credentials(self, url: str, client_id: int, token: str) -> None:
        _write_atomic(
            self.root / "credentials.json",
            json.dumps({"url": url, "client_id": client_id, "token": token}).encode(),
        )

    def _task(self, task_id: str) -> Path:
        return self.root / "tasks" / task_id

    def pending(self, task_id: str) -> tuple[PendingUpdate, bytes] | None:
        """The update waiting to be sent, if its body is intact."""
        meta, body = self._task(task_id) / "pending.json", self._task(task_id) / "pending.safetensors"
        if not meta.is_file() or not body.is_file():
            return None
        pending = PendingUpdate(**json.loads(meta.read_text()))
        if sha256_file(body) != pending.sha256:
            self.drop_pending(task_id)
            return None
        return pending, body.read_bytes()

    def save_pending(self, pending: PendingUpdate, body: bytes) -> None:
        # Body first: pending.json names a body that is already on disk.
        _write_atomic(self._task(pending.task_id) / "pending.safetensors", body)
        _write_atomic(self._task(pending.task_id) / "pending.json", json.dumps(asdict(pending)).encode())

    def drop_pending(self, task_id: str) -> None:
        for name in ("pending.json", "pending.safetensors"):
            (self._task(task_id) / name).unlink(missing_ok=True)

    def last_submitted(self, task_id: str) -> int:
        path = self._task(task_id) / "submitted.json"
        return int(json.loads(path.read_text())["round"]) if path.is_file() else 0

    def mark_submitted(self, task_id: str, round_id: int) -> None:
        _write_atomic(self._task(task_id) / "submitted.json", json.dumps({"round": round_id}).encode())
