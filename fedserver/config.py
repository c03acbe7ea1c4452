"""Server settings: one frozen dataclass, checked once at start-up."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedyolo.fedserver.errors import ServerConfigError
from fedyolo.fedserver.strategies import LR_SCHEDULES, STRATEGIES, StrategyParams
from fedyolo.runtime.manifest import TaskSpec

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
    rounds
        Rounds per task; after the last one the task is finished.
    min_clients
        Updates (one per client) that close a round.
    deadline_s
        A round open this long closes with the updates it has (at least one).
    lr_schedule
        How the clients' learning rate moves over the rounds: "constant" (`lr` every round) or
        "cosine" (from `lr` down towards 0 by the last round); see `strategies.round_lr`.
    max_update_bytes
        Byte cap of an upload; 0 means the task's fp32 module size plus header room.
    max_examples
        The largest example count one update may claim (it weights the average).
    clip_norm
        When > 0, each update's change to the global module is scaled down to this L2 norm.
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
    rounds: int = 20
    min_clients: int = 3
    deadline_s: float = 600.0
    strategy: str = "fedavg"
    strategy_params: StrategyParams = field(default_factory=StrategyParams)
    local_epochs: int = 1
    lr: float = 1e-3
    lr_schedule: str = "constant"
    batch_size: int = 8
    proximal_mu: float = 0.0
    max_update_bytes: int = 0
    max_examples: int = 1_000_000
    clip_norm: float = 0.0
    enroll_key: str = ""
    max_long_poll_s: float = 30.0
    max_header_bytes: int = 32 * 1024
    read_timeout_s: float = 60.0
    max_connections: int = 1000

    def __post_init__(self) -> None:
        problems = []
        if self.rounds < 1:
            problems.append("rounds must be at least 1")
        if self.min_clients < 1:
            problems.append("min_clients must be at least 1")
        if self.deadline_s <= 0:
            problems.append("deadline_s must be positive")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy {self.strategy!r} is unknown (known: {', '.join(sorted(STRATEGIES))})")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule {self.lr_schedule!r} is unknown (known: {', '.join(LR_SCHEDULES)})")
        if self.local_epochs < 1 or self.batch_size < 1:
            problems.append("local_epochs and batch_size must be at least 1")
        if self.lr <= 0 or self.proximal_mu < 0 or self.clip_norm < 0:
            problems.append("lr must be positive; proximal_mu and clip_norm must not be negative")
        if self.max_update_bytes < 0 or self.max_examples < 1:
            problems.append("max_update_bytes must not be negative and max_examples must be at least 1")
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

    def to_json(self) -> str:
        """The config as JSON, to hand it to server worker processes."""
        raw = asdict(self) | {"bundle_dir": str(self.bundle_dir), "state_dir": str(self.state_dir)}
        return json.dumps(raw)

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        raw = json.loads(text)
        raw["bundle_dir"], raw["state_dir"] = Path(raw["bundle_dir"]), Path(raw["state_dir"])
        raw["strategy_params"] = StrategyParams(**raw["strategy_params"])
        return cls(**raw)

    def update_cap(self, task: TaskSpec) -> int:
        """Byte cap of one uploaded update for `task`."""
        if self.max_update_bytes:
            return self.max_update_bytes
        return task.module_bytes + HEADER_ALLOWANCE + HEADER_PER_TENSOR * len(task.trainable)
