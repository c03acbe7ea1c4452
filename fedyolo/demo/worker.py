"""What the demo's own worker processes (the observer, the baseline workers) are given, and how they
answer: a JSON plan file in, JSON-line events out.

Workers are processes, not threads, because ONNX Runtime training holds the GIL during a step: in the
orchestrator it would freeze the progress display and the watch over the clients.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedyolo.runtime.events import JsonLinesWriter

OBSERVER_EVENTS = "observer.jsonl"


def baseline_events(worker: int) -> str:
    return f"baseline-{worker}.jsonl"


@dataclass(frozen=True)
class WorkerPlan:
    """The run as the workers need it (written once by the orchestrator, read by every worker)."""

    url: str
    bundle: str
    data_dir: str
    tasks: list[str]
    clients: int
    baseline_epochs: int
    lr: float
    batch_size: int
    seed: int
    events_dir: str
    state_dir: str

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, path: Path) -> WorkerPlan:
        return cls(**json.loads(path.read_text()))

    def baseline_runs(self) -> list[tuple[str, int]]:
        """Every (task, client) the fully-local baseline trains, in a fixed order."""
        return [(task, c) for task in self.tasks for c in range(self.clients)]


class Events(JsonLinesWriter):
    """A worker's events: JSON lines with the event's kind and time."""

    def emit(self, event: str, **fields: Any) -> None:
        self.write({"event": event, "time": time.time(), **fields})
