"""Server settings: one frozen dataclass, checked once at start-up."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fedyolo.fedserver.errors import ServerConfigError
from fedyolo.runtime.manifest import TaskSpec
from fedyolo.runtime.plan import FederationPlan

# Room for the safetensors header on top of the raw tensor bytes: 8-byte length + JSON per tensor.
HEADER_ALLOWANCE = 16 * 1024
HEADER_PER_TENSOR = 256


@dataclass(frozen=True)
class ServerConfig:
    """Everything `fedyolo serve` decides; the same for every task of the bundle.

    Attributes
    ----------
    bundle_dir
        The exported bundle the server hands out; the initial module of task `t` is
        `tasks/<t>/module.safetensors`.
    state_dir
        SQLite database and blob store; survives restarts.
    plan
        Every per-round setting (rounds, the clients' training, clipping, strategy): the same
        `FederationPlan` that `fedyolo simulate` and the Flower apps run by.
    min_clients
        Updates (one per client) that close a round.
    deadline_s
        A round open this long closes with the updates it has (at least one).
    max_update_bytes
        Byte cap of an upload; 0 means the task's fp32 module size plus header room.
    max_examples
        The largest example count one update may claim; the fold also caps what a claim weighs at a
        multiple of the recent median claim (the plan's `example_cap`).
    max_abs_weight
        An update holding a value beyond this magnitude is refused (0: no check). 65504, the largest
        float16, by default: no sane module weight is larger, and fp16 wires could not carry it.
    max_clients
        Devices the enrollment key registers at most; then registration answers 403 enrollment_full.
    max_long_poll_s
        The longest a `GET .../round?wait_s=` is held before it answers anyway.
    max_header_bytes
        Cap of a request's line and headers; over it: 431 and the connection closes.
    read_timeout_s
        A request (head and body) must arrive whole this soon after its first byte, else 408. 60 s lets a
        320 KB update through a 50 kbit/s link; slowloris connections still go within a minute.
    max_connections
        Open connections per server process; a request beyond gets 503 `server_busy`.
    """

    bundle_dir: Path
    state_dir: Path
    plan: FederationPlan = field(default_factory=FederationPlan)
    min_clients: int = 3
    deadline_s: float = 600.0
    max_update_bytes: int = 0
    max_examples: int = 1_000_000
    max_abs_weight: float = 65504.0
    max_clients: int = 10_000
    enroll_key: str = ""
    max_long_poll_s: float = 30.0
    max_header_bytes: int = 32 * 1024
    read_timeout_s: float = 60.0
    max_connections: int = 1000

    def __post_init__(self) -> None:
        problems = []
        if self.min_clients < 1:
            problems.append("min_clients must be at least 1")
        if self.deadline_s <= 0:
            problems.append("deadline_s must be positive")
        if self.max_update_bytes < 0 or self.max_examples < 1:
            problems.append("max_update_bytes must not be negative and max_examples must be at least 1")
        if not self.max_abs_weight >= 0 or self.max_clients < 1:
            problems.append("max_abs_weight must not be negative and max_clients must be at least 1")
        if self.max_header_bytes < 1024 or self.read_timeout_s <= 0 or self.max_connections < 1:
            problems.append(
                "max_header_bytes must be at least 1024, read_timeout_s positive, max_connections at least 1"
            )
        if len(self.enroll_key) < 16:
            problems.append(
                "the enrollment key must have at least 16 characters (leave it out to generate one)"
            )
        if problems:
            raise ServerConfigError("; ".join(problems))

    def with_plan(self, **changes: Any) -> ServerConfig:
        """This config with some of the plan's settings changed (`rounds=5, clip_norm=1.0`)."""
        return replace(self, plan=replace(self.plan, **changes))

    @property
    def rounds(self) -> int:
        return self.plan.rounds

    def to_json(self) -> str:
        """The config as JSON, to hand it to server worker processes."""
        raw = {f.name: getattr(self, f.name) for f in fields(self)}
        raw |= {"bundle_dir": str(self.bundle_dir), "state_dir": str(self.state_dir)}
        raw["plan"] = self.plan.to_json()
        return json.dumps(raw)

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        raw = json.loads(text)
        raw["bundle_dir"], raw["state_dir"] = Path(raw["bundle_dir"]), Path(raw["state_dir"])
        raw["plan"] = FederationPlan.from_json(raw["plan"])
        return cls(**raw)

    def update_cap(self, task: TaskSpec) -> int:
        """Byte cap of one uploaded update for `task`."""
        if self.max_update_bytes:
            return self.max_update_bytes
        return task.module_bytes + HEADER_ALLOWANCE + HEADER_PER_TENSOR * len(task.trainable)
