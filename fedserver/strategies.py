"""Aggregation strategies: pure functions over numpy arrays, tested alone.

The server turns each round into one call::

    acc = WeightedSum(shapes)
    for update, examples in round:               # one update in memory at a time
        acc.add(clip_delta(module_delta(update, global_weights), clip_norm), examples)
    new_weights, new_state = STRATEGIES[name](global_weights, acc.mean(), state, params)

Deltas are `client weights - global weights` (the negative pseudo-gradient of Reddi et al., 2021,
"Adaptive Federated Optimization"). Sums run in float64; weights and state come back as float32, so a
state stored to disk and read back gives the same next round as one kept in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedyolo.runtime.wire import ModuleWeights

Deltas = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class StrategyParams:
    """Server-side hyper-parameters; `server_lr` None takes the strategy's default."""

    server_lr: float | None = None
    momentum: float = 0.9  # FedAvgM
    beta1: float = 0.9  # FedAdam
    beta2: float = 0.99  # FedAdam
    tau: float = 1e-3  # FedAdam: adaptivity, keeps the step finite where v is ~0


@dataclass(frozen=True)
class StrategyState:
    """What a strategy carries from round to round: FedAvgM's velocity, FedAdam's moments."""

    step: int = 0
    first: Mapping[str, np.ndarray] = field(default_factory=dict)
    second: Mapping[str, np.ndarray] = field(default_factory=dict)


class WeightedSum:
    """A running sum of weighted deltas in float64: memory O(module), whatever the number of updates."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self._sum = {name: np.zeros(shape, dtype=np.float64) for name, shape in shapes.items()}
        self._buffers: dict[str, np.ndarray] = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, delta: Deltas, weight: float) -> None:
        """Add `weight * delta`; `delta` must have exactly the accumulator's names and shapes."""
        if not weight > 0 or not math.isfinite(weight):
            raise ValueError(f"an update's weight must be positive and finite, got {weight}")
        if set(delta) != set(self._sum):
            raise ValueError("the update's tensor names differ from the accumulator's")
        for name, acc in self._sum.items():
            # In place, one float64 temporary: the peak stays at a few module sizes.
            acc += np.multiply(delta[name], weight, dtype=np.float64)
        self.total_weight += weight
        self.count += 1

    def add_update(
        self,
        update: Mapping[str, np.ndarray],
        global_weights: Mapping[str, np.ndarray],
        weight: float,
        clip_norm: float,
    ) -> None:
        """Add `weight * clip(update - global_weights)`: bitwise what `add(clip_delta(module_delta(...)))` gives,
        with one reused float64 buffer per tensor instead of three fresh ones when clipping is off."""
        if clip_norm > 0:
            self.add(clip_delta(module_delta(update, global_weights), clip_norm), weight)
            return
        if not weight > 0 or not math.isfinite(weight):
            raise ValueError(f"an update's weight must be positive and finite, got {weight}")
        if set(update) != set(self._sum):
            raise ValueError("the update's tensor names differ from the accumulator's")
        for name, acc in self._sum.items():
            buffer = self._buffers.get(name)
            if buffer is None:
                buffer = self._buffers[name] = np.empty_like(acc)
            np.subtract(update[name], global_weights[name], out=buffer, dtype=np.float64)
            buffer *= weight
            acc += buffer
        self.total_weight += weight
        self.count += 1

    def mean(self) -> dict[str, np.ndarray]:
        """The weighted mean delta (float64); raises when nothing was added."""
        if self.count == 0:
            raise ValueError("no update was added; a round needs at least one")
        return {name: acc / self.total_weight for name, acc in self._sum.items()}


def module_delta(update: Mapping[str, np.ndarray], global_weights: Mapping[str, np.ndarray]) -> ModuleWeights:
    """`update - global_weights` per tensor, in float64."""
    return {name: np.subtract(update[name], g, dtype=np.float64) for name, g in global_weights.items()}


def delta_norm(delta: Deltas) -> float:
    """L2 norm over every tensor of the module, as one vector."""
    return math.sqrt(sum(float(np.dot(d.ravel(), d.ravel())) for d in delta.values()))


def clip_delta(delta: Deltas, clip_norm: float) -> Deltas:
    """Scale `delta` down to L2 norm `clip_norm` when it is longer; `clip_norm` 0 turns clipping off."""
    if clip_norm <= 0:
        return delta
    norm = delta_norm(delta)
    if norm <= clip_norm:
        return delta
    scale = clip_norm / norm
    return {name: d * scale for name, d in delta.items()}


def _f32(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.asarray(a, dtype=np.float32) for name, a in arrays.items()}


def fedavg(
    global_weights: Mapping[str, np.ndarray], mean_delta: Deltas, state: StrategyState, params: StrategyParams
) -> tuple[ModuleWeights, StrategyState]:
    """FedAvg (McMahan et al., 2017): w + lr * mean delta; lr 1 is the example-weighted client mean."""
    lr = 1.0 if params.server_lr is None else params.server_lr
    new = {name: g.astype(np.float64) + lr * mean_delta[name] for name, g in global_weights.items()}
    return _f32(new), StrategyState(step=state.step + 1)


def fedavgm(
    global_weights: Mapping[str, np.ndarray], mean_delta: Deltas, state: StrategyState, params: StrategyParams
) -> tuple[ModuleWeights, StrategyState]:
    """FedAvgM (Hsu et al., 2019): v = momentum * v + mean delta; w = w + lr * v."""
    lr = 1.0 if params.server_lr is None else params.server_lr
    velocity = {}
    new = {}
    for name, g in global_weights.items():
        v = params.momentum * state.first[name].astype(np.float64) if state.first else 0.0
        velocity[name] = v + mean_delta[name]
        new[name] = g.astype(np.float64) + lr * velocity[name]
    return _f32(new), StrategyState(step=state.step + 1, first=_f32(velocity))


def fedadam(
    global_weights: Mapping[str, np.ndarray], mean_delta: Deltas, state: StrategyState, params: StrategyParams
) -> tuple[ModuleWeights, StrategyState]:
    """FedAdam (Reddi et al., 2021): Adam moments of the mean delta; w = w + lr * m / (sqrt(v) + tau)."""
    lr = 0.01 if params.server_lr is None else params.server_lr
    first, second, new = {}, {}, {}
    for name, g in global_weights.items():
        d = mean_delta[name]
        m = params.beta1 * state.first[name].astype(np.float64) if state.first else 0.0
        v = params.beta2 * state.second[name].astype(np.float64) if state.second else 0.0
        first[name] = m + (1.0 - params.beta1) * d
        second[name] = v + (1.0 - params.beta2) * d * d
        new[name] = g.astype(np.float64) + lr * first[name] / (np.sqrt(second[name]) + params.tau)
    return _f32(new), StrategyState(step=state.step + 1, first=_f32(first), second=_f32(second))


LR_SCHEDULES = ("constant", "cosine")


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


Strategy = Callable[
    [Mapping[str, np.ndarray], Deltas, StrategyState, StrategyParams], tuple[ModuleWeights, StrategyState]
]
STRATEGIES: dict[str, Strategy] = {"fedavg": fedavg, "fedavgm": fedavgm, "fedadam": fedadam}
