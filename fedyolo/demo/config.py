"""What `fedyolo demo` decides, checked before anything starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedyolo.runtime.errors import FedyoloError


@dataclass(frozen=True)
class DemoConfig:
    """Everything `fedyolo demo` decides. Defaults fit 2 CPU cores in well under 10 minutes (README)."""

    clients: int = 4
    alpha: float = 1.0
    rounds: int = 4
    local_epochs: int = 1
    module: str = "lora"
    tasks: tuple[str, ...] = ("topics", "language")
    backbone: str = "minilm"
    out: Path = Path("demo_out")
    chaos: bool = False
    seed: int = 0
    port: int = 0
    lr: float = 2e-3
    batch_size: int = 16
    max_length: int = 24
    train_per_task: int = 1500
    test_per_task: int = 600
    round_deadline_s: float = 300.0
    timeout_s: float = 1500.0

    def __post_init__(self) -> None:
        problems = []
        if self.clients < 1 or self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            problems.append("--clients, --rounds, --local-epochs and --batch-size must be at least 1")
        if self.chaos and self.clients < 2:
            problems.append("--chaos kills one client mid-round: use --clients 2 or more")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            problems.append("--tasks must name one task or more, each once (e.g. topics,language)")
        if not (self.alpha > 0 and self.lr > 0):
            problems.append("--alpha and --lr must be positive")
        if not 0 <= self.port < 65536:
            problems.append("--port must be 0 (any free port) or a port number")
        if problems:
            raise FedyoloError("; ".join(problems))
