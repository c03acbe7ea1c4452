"""What the demo's children are doing, read from what they write: each client's log (the lines
`fedyolo client` prints) and the observer's JSON-line events. Files are read incrementally; a line is
used only once it is complete."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRAIN = re.compile(r"\btrain loss (\S+): (\d+) %")
UPLOAD = re.compile(r"\bupload (\S+) round (\d+):")
ACCEPTED = re.compile(r"\bround (\S+) round (\d+): update (\w+)")
WAIT = re.compile(r"\bwait (\S+) round (\d+):")
DONE = re.compile(r"\bdone (\S+) round (\d+):")
DOWNLOAD = re.compile(r"\bdownload (\S+): (\d+) %")
REGISTERED = re.compile(r"\bregistered as client (\d+)")


class LineTail:
    """The complete lines appended to a file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._rest = b""

    def lines(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._rest + chunk
        *complete, self._rest = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]


@dataclass
class ClientView:
    """One client process as its log shows it."""

    name: str
    task: str
    log: LineTail
    stage: str = "starting"  # starting | syncing | training | uploading | waiting | done | killed | failed
    round: int = 0  # the round it works on (or last sent)
    percent: int = 0
    loss: float | None = None
    accepted: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)

    def update(self) -> None:
        for line in self.log.lines():
            self.read(line)

    def read(self, line: str) -> None:
        if m := TRAIN.search(line):
            if self.stage != "training":
                self.round = (self.accepted[-1] if self.accepted else 0) + 1
            self.stage, self.loss, self.percent = "training", _float(m[1]), int(m[2])
        elif m := UPLOAD.search(line):
            self.stage, self.round, self.percent = "uploading", int(m[2]), 100
        elif m := ACCEPTED.search(line):
            (self.accepted if m[3] == "accepted" else self.stale).append(int(m[2]))
            self.stage, self.round = "waiting", int(m[2])
        elif WAIT.search(line):
            self.stage = "waiting"
        elif DONE.search(line):
            self.stage = "done"
        elif DOWNLOAD.search(line) or REGISTERED.search(line):
            self.stage = "syncing"

    def describe(self) -> str:
        if self.stage == "training":
            return f"training round {self.round}: {self.percent:3d} %" + (
                f", loss {self.loss:.3f}" if self.loss is not None else ""
            )
        if self.stage in ("uploading", "waiting") and self.round:
            return f"{self.stage} (round {self.round} sent)" if self.stage == "waiting" else "uploading"
        return self.stage


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class EventTail:
    """The observer's events (JSON lines) as dicts."""

    def __init__(self, path: Path) -> None:
        self._tail = LineTail(path)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self._tail.lines():
            if line.strip():
                out.append(json.loads(line))
        return out
