"""The federation's plan: one typed, frozen statement of every per-round setting.

`FederationPlan` is what a federation runs by — rounds, the clients' local training and its learning-rate
schedule, FedProx's term, and how the server folds updates (clipping, strategy and its parameters).
The server (`fedyolo serve`), the in-process simulation, the CLI and a Flower ServerApp all take this one
object. `plan.for_round(r)` is what a client needs in round `r`: a `RoundPlan`, whose JSON form is what
the server sends in `GET /v1/tasks/{t}/round` and what the client parses back, checked, before it trains.

Plain Python: the device side reads it, so it imports nothing beyond the standard library.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fedyolo.runtime.errors import FedyoloError

LR_SCHEDULES = ("constant", "cosine")
# The server's optimisers over the mean client delta (fedserver/strategies.py implements each).
STRATEGY_NAMES = ("fedavg", "fedavgm", "fedadam")
# How a round's (clipped) deltas become the one delta the strategy steps by (fedserver/fold.py).
AGGREGATES = ("mean", "median", "trimmed_mean")


class PlanError(FedyoloError):
    """A plan, or a round's plan sent by a server, that cannot be run."""


@dataclass(frozen=True)
class StrategyParams:
    """Server-side hyper-parameters; `server_lr` None takes the strategy's default."""

    server_lr: float | None = None
    momentum: float = 0.9  # FedAvgM
    beta1: float = 0.9  # FedAdam
    beta2: float = 0.99  # FedAdam
    tau: float = 1e-3  # FedAdam: adaptivity, keeps the step finite where v is ~0


def round_lr(base: float, schedule: str, round_id: int, rounds: int) -> float:
    """The clients' learning rate in round `round_id` (1-based) of `rounds`.

    "constant": `base` every round. "cosine": `base * (1 + cos(pi * (round_id - 1) / rounds)) / 2`, from
    `base` in the first round down towards zero in the last; later rounds take smaller steps, so the
    clients' drift on skewed data shrinks as the global module settles (benchmarks/README.md measures it).
    A round past `rounds` (a server restarted with fewer) takes the last round's rate.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if rounds < 1 or round_id < 1:
        raise ValueError(f"round {round_id} of {rounds}: both must be at least 1")
    if schedule == "constant":
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * (min(round_id, rounds) - 1) / rounds))


@dataclass(frozen=True)
class RoundPlan:
    """What one client trains by in one round: sent by the server, read by `train_round`."""

    round: int
    local_epochs: int
    lr: float
    batch_size: int
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.round < 1 or self.local_epochs < 1 or self.batch_size < 1:
            problems.append(
                f"round ({self.round}), local_epochs ({self.local_epochs}) and batch_size "
                f"({self.batch_size}) must be at least 1"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be positive and finite, got {self.lr}")
        if not (math.isfinite(self.proximal_mu) and self.proximal_mu >= 0):
            problems.append(f"proximal_mu must be finite and not negative, got {self.proximal_mu}")
        if problems:
            raise PlanError("round plan: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RoundPlan:
        """Read a round's plan from a server's answer (other keys are ignored); a bad one is a PlanError.

        A server is not trusted: every value is type-checked here, before the device trains by it.
        """
        kinds: dict[str, type] = {"round": int, "local_epochs": int, "batch_size": int}
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in body:
                if f.name == "proximal_mu":
                    continue
                raise PlanError(f"the server's round plan has no {f.name!r}; is it a fedyolo server?")
            value = body[f.name]
            want = kinds.get(f.name, float)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PlanError(f"the server's round plan has {f.name}={value!r}; expected a number")
            if want is int and value != int(value):
                raise PlanError(f"the server's round plan has {f.name}={value!r}; expected an integer")
            values[f.name] = want(value)
        return cls(**values)


@dataclass(frozen=True)
class FederationPlan:
    """Every per-round setting of a federation, for clients and server alike.

    Attributes
    ----------
    rounds
        Rounds per task; after the last one the task is finished.
    local_epochs, lr, batch_size
        The clients' local training each round (AdamW or the bundle's optimiser).
    lr_schedule
        How the clients' learning rate moves over the rounds: "constant", or "cosine" from `lr` down
        towards 0 by the last round (`round_lr`).
    proximal_mu
        FedProx's term, applied by the clients; 0 is FedAvg's local objective.
    clip_norm
        When > 0, each update's change to the global module is scaled down to this L2 norm.
    adaptive_clip
        When > 0 (the default, 3), each update's change is also scaled down to this multiple of the
        median change of the task's recent updates (before there are any: of the global module's own
        norm), so one client cannot move the module much further than an honest one does.
    example_cap
        When > 0 (the default, 4), an update weighs at most this multiple of the median example count
        claimed by the task's recent updates: a client cannot buy influence by claiming more data.
    aggregate, trim
        "mean" (example-weighted, streaming: memory O(module)), or the robust "median" or
        "trimmed_mean" (coordinate-wise over the round's clipped deltas, unweighted; `trim` is the
        share cut from each end; memory O(clients x module)).
    strategy, strategy_params
        The server's step over the round's aggregated delta: fedavg, fedavgm or fedadam.
    """

    rounds: int = 20
    local_epochs: int = 1
    lr: float = 1e-3
    lr_schedule: str = "constant"
    batch_size: int = 8
    proximal_mu: float = 0.0
    clip_norm: float = 0.0
    adaptive_clip: float = 3.0
    example_cap: float = 4.0
    aggregate: str = "mean"
    trim: float = 0.1
    strategy: str = "fedavg"
    strategy_params: StrategyParams = field(default_factory=StrategyParams)

    def __post_init__(self) -> None:
        problems = []
        if not (self.adaptive_clip >= 0 and self.example_cap >= 0):
            problems.append("adaptive_clip and example_cap must not be negative (0 turns each off)")
        if self.example_cap and self.example_cap < 1:
            problems.append(
                f"example_cap {self.example_cap} would weigh a typical client below its data; use 0 or >= 1"
            )
        if self.aggregate not in AGGREGATES:
            problems.append(f"unknown aggregate {self.aggregate!r}; choose one of {', '.join(AGGREGATES)}")
        if not 0 <= self.trim < 0.5:
            problems.append(f"trim {self.trim} must be in [0, 0.5): the share cut from each end")
        if self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            problems.append("rounds, local epochs and batch size must be at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be positive, got {self.lr}")
        if not self.proximal_mu >= 0 or not self.clip_norm >= 0:
            problems.append("proximal_mu and clip_norm must not be negative")
        if self.strategy not in STRATEGY_NAMES:
            problems.append(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGY_NAMES)}")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(
                f"unknown lr schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}"
            )
        if problems:
            raise PlanError("; ".join(problems))

    def for_round(self, round_id: int) -> RoundPlan:
        """What a client trains by in round `round_id` (1-based): the scheduled lr, epochs, batch, mu."""
        return RoundPlan(
            round=round_id,
            local_epochs=self.local_epochs,
            lr=round_lr(self.lr, self.lr_schedule, max(round_id, 1), self.rounds),
            batch_size=self.batch_size,
            proximal_mu=self.proximal_mu,
        )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> FederationPlan:
        """The plan from command-line options named after its fields (`rounds`, `lr`, `clip_norm`, ...)
        plus `server_lr` and `server_momentum`; other options are ignored."""
        names = [f.name for f in fields(cls) if f.name != "strategy_params"]
        params = StrategyParams(server_lr=options["server_lr"], momentum=options["server_momentum"])
        return cls(**{name: options[name] for name in names}, strategy_params=params)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FederationPlan:
        raw = json.loads(text)
        raw["strategy_params"] = StrategyParams(**raw.get("strategy_params", {}))
        return cls(**raw)
