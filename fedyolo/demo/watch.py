"""What the demo's clients are doing, read from the JSON-line events each `fedyolo client --events FILE`
writes (schema: `fedyolo.runtime.events`). Nothing here parses a log line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedyolo.runtime.events import JsonLinesTail

SYNCING = ("register", "download")


@dataclass
class ClientView:
    """One client process as its events show it."""

    name: str
    task: str
    events: JsonLinesTail
    stage: str = "starting"  # an event's stage, or starting | killed (by --chaos) | failed (exited)
    round: int = 0  # the round it works on (or last sent)
    percent: int = 0
    detail: str = ""
    accepted: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)

    def update(self) -> None:
        for event in self.events.read():
            self.read(event)

    def read(self, e: dict[str, Any]) -> None:
        self.stage, self.detail = e["stage"], e["detail"]
        if e["round"]:
            self.round = int(e["round"])
        self.percent = int(100 * e["done"] / e["total"]) if e["total"] else self.percent
        if e.get("outcome") is not None:
            (self.accepted if e["outcome"] == "accepted" else self.stale).append(int(e["round"]))

    def describe(self) -> str:
        if self.stage == "train":
            return f"training round {self.round}: {self.percent:3d} %, {self.detail}"
        if self.stage in SYNCING:
            return "fetching the bundle" if self.stage == "download" else "registered"
        if self.stage in ("round", "wait"):
            sent = self.accepted + self.stale
            return f"waiting (round {max(sent)} sent)" if sent else "waiting for a round"
        return self.stage
