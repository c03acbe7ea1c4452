"""What a federation client tells whoever supervises it, as JSON lines (`fedyolo client --events FILE`).

One JSON object a line, appended and flushed whole, so a reader never sees half an event:

    {"stage": "train", "task": "topics", "round": 2, "detail": "loss 0.8123",
     "done": 12, "total": 48, "time": 1764423101.25}
    {"stage": "round", "task": "topics", "round": 2, "detail": "update accepted; ...",
     "done": 0, "total": 0, "time": 1764423109.5, "outcome": "accepted",
     "metrics": {"accuracy": 0.61, "loss": 1.2, "train_loss": 0.95}}

- stage: register | download | train | upload | round (a round finished) | wait | done (every round
  of the task is done) | failed (the client stops on an error; `detail` says why).
- task, round: the task id and the round the event is about ("" and 0 before the client knows them).
- done, total: bytes of a download, steps of a round's training; 0 otherwise.
- time: seconds since the epoch. outcome and metrics: on a finished round only; outcome is
  accepted, stale (the round closed before the update arrived), or set_aside (the server's fold set the
  update aside: `fedyolo status` counts it).

Plain Python: no rich, no server, so any supervisor (the demo, a phone's service, a script) reads it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


@dataclass(frozen=True)
class ClientEvent:
    """One thing the client did or waits for; `done`/`total` count bytes (download) or steps (train)."""

    stage: str
    task_id: str
    round: int
    detail: str
    done: float = 0.0
    total: float = 0.0
    outcome: str | None = None  # a finished round: accepted | stale | set_aside
    metrics: dict[str, float] | None = None  # a finished round: what the client reported
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        """The event as one line of the events file (the schema above)."""
        out: dict[str, Any] = {
            "stage": self.stage,
            "task": self.task_id,
            "round": self.round,
            "detail": self.detail,
            "done": self.done,
            "total": self.total,
            "time": self.time,
        }
        if self.outcome is not None:
            out["outcome"] = self.outcome
            out["metrics"] = dict(self.metrics or {})
        return out


class JsonLinesWriter:
    """Append-only JSON lines; each line is written and flushed whole."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[str] = p.open("a", encoding="utf-8")

    def write(self, obj: dict[str, Any]) -> None:
        self._f.write(json.dumps(obj) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class JsonLinesTail:
    """The complete JSON lines appended to a file since the last call; a partial line waits."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._offset = 0
        self._rest = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        *complete, self._rest = (self._rest + chunk).split(b"\n")
        return [json.loads(line) for line in complete if line.strip()]
